"""Wiring of search: the service, its worker on the search task queue, the indexer's start."""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack
from datetime import timedelta

from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.worker import Worker

from activities.search import SearchActivities
from missive.config import Settings
from missive.constants import search_indexer_workflow_id
from missive.db import session_factory
from missive.errors import InvalidInput
from missive.metrics import Metrics
from missive.schemas import SearchIndexerInput
from missive.search import SearchService, TypesenseClient
from runtime.wiring import Core, workflow_runner
from workflows import policies
from workflows.search_check import SearchCheckWorkflow
from workflows.search_indexer import SearchIndexerWorkflow
from workflows.search_key import SearchKeyWorkflow
from workflows.search_rebuild import SearchRebuildWorkflow

log = logging.getLogger("missive.search")

SEARCH_WORKFLOWS = [
    SearchIndexerWorkflow,
    SearchRebuildWorkflow,
    SearchKeyWorkflow,
    SearchCheckWorkflow,
]


def open_search(settings: Settings, core: Core, stack: AsyncExitStack) -> SearchService | None:
    """The search service, or None when TYPESENSE_URL is unset (search is off).

    Contacts nothing: a Typesense that is down delays indexing and fails searches,
    never a process start or a delivery.

    Raises:
        InvalidInput: TYPESENSE_URL is set but TYPESENSE_API_KEY is not.
    """
    if not settings.typesense_url:
        return None
    if not settings.typesense_api_key:
        raise InvalidInput("TYPESENSE_API_KEY is required when TYPESENSE_URL is set")
    typesense = TypesenseClient(settings.typesense_url, settings.typesense_api_key)
    stack.push_async_callback(typesense.close)
    return SearchService(
        settings, core.engine, session_factory(core.engine), core.cipher, typesense
    )


def search_activities(search: SearchService, *, metrics: Metrics | None = None) -> SearchActivities:
    """The search activities with the run lengths from workflows/policies.py."""
    return SearchActivities(
        search,
        indexer_run_seconds=policies.SEARCH_INDEXER_RUN_SECONDS,
        rebuild_step_seconds=policies.SEARCH_REBUILD_STEP_SECONDS,
        metrics=metrics,
    )


def search_worker(
    settings: Settings, client: Client, search: SearchService, *, metrics: Metrics | None = None
) -> Worker:
    """The worker of the search task queue (indexer, rebuild, check, keys)."""
    acts = search_activities(search, metrics=metrics)
    return Worker(
        client,
        task_queue=settings.search_task_queue,
        workflows=SEARCH_WORKFLOWS,
        activities=[
            acts.run_indexer,
            acts.begin_rebuild,
            acts.fill_rebuild,
            acts.finish_rebuild,
            acts.check_index,
            acts.issue_search_key,
        ],
        workflow_runner=workflow_runner(settings),
        graceful_shutdown_timeout=timedelta(seconds=settings.graceful_shutdown_seconds),
    )


async def start_indexer(client: Client, settings: Settings) -> str:
    """Starts the alias's indexer workflow unless it runs already; returns its id."""
    workflow_id = search_indexer_workflow_id(settings.typesense_collection)
    await client.start_workflow(
        SearchIndexerWorkflow.run,
        SearchIndexerInput(),
        id=workflow_id,
        task_queue=settings.search_task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
    )
    log.info("search indexer %s running on %s", workflow_id, settings.search_task_queue)
    return workflow_id
