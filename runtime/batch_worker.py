"""Builds the batch / retention worker, its Schedule and its search attributes."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import (
    AddSearchAttributesRequest,
    ListSearchAttributesRequest,
)
from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
)
from temporalio.service import RPCError
from temporalio.worker import Worker

from activities.batch import BatchActivities
from activities.retention import RetentionActivities
from missive.broadcast import Emitter
from missive.config import Settings
from missive.constants import (
    RETENTION_SCHEDULE_ID,
    RETENTION_WORKFLOW_PREFIX,
    SEARCH_ATTRIBUTE_PROGRESS,
    SEARCH_ATTRIBUTE_STATUS,
    TASK_QUEUE_BATCH,
)
from missive.metrics import Metrics
from missive.notify.options import notify_options
from missive.schemas import RetentionInput
from missive.services.batch import BatchService, StoredMessagesSink
from missive.services.retention import MessageIndexRemover, PurgeSink, RetentionService
from runtime.notify import AnnouncementNotifier
from runtime.process import release_freed_memory
from runtime.search_attributes import MISSIVE_SEARCH_ATTRIBUTES
from runtime.wiring import Core, workflow_runner
from workflows.batch import BatchWorkflow
from workflows.retention import RetentionWorkflow

log = logging.getLogger("missive.jobs")

JOB_WORKFLOWS = [BatchWorkflow, RetentionWorkflow]

RETENTION_CATCHUP_WINDOW = timedelta(hours=6)
"""A run missed while Temporal or the workers were down is still made up to 6
hours late; older ones are skipped (the next run cleans up the same rows)."""

MAX_CONCURRENT_JOB_ACTIVITIES = 8
"""Chunk and retention activities one worker runs at once: each holds a
database connection for seconds, so this stays well under the pool (10 + 10)."""

BATCH_SEARCH_ATTRIBUTES = {
    SEARCH_ATTRIBUTE_PROGRESS: IndexedValueType.INDEXED_VALUE_TYPE_INT,
    SEARCH_ATTRIBUTE_STATUS: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
    # MissiveKind and MissiveConversationId, set on lifecycle, receipt and batch starts.
    **MISSIVE_SEARCH_ATTRIBUTES,
}


def batch_service(
    core: Core, emitter: Emitter | None, *, sinks: Sequence[StoredMessagesSink] = ()
) -> BatchService:
    """The batch service over this process's engine, cipher and emitter.

    ``sinks`` hear of stored messages: runtime.notify.AnnouncementNotifier starts
    the notifications of announcements; indexing needs nothing: batch-inserted
    messages are pending for the search indexer.
    """
    return BatchService(
        core.engine,
        core.cipher,
        emitter,
        sinks=sinks,
        max_body_bytes=core.max_body_bytes,
        staging=core.staging,
    )


def retention_service(
    core: Core,
    settings: Settings,
    *,
    index: MessageIndexRemover | None = None,
    purge_sinks: Sequence[PurgeSink] = (),
) -> RetentionService:
    """The retention service with this process's settings.

    ``index`` is the search seam: with the search capability's triggers a
    deleted message is tombstoned for the indexer in the same transaction, so
    it stays None; another index backend plugs its delete-by-ids in here.
    The purge deletes the ``notifications`` rows of purged messages itself;
    ``purge_sinks`` is for anything else that refers to them.
    """
    return RetentionService(
        core.engine,
        default_days=settings.retention_default_days,
        restore_window_days=settings.retention_restore_window_days,
        chunk_size=settings.retention_chunk_size,
        index=index,
        purge_sinks=purge_sinks,
    )


def job_activity_methods(
    batch: BatchActivities, retention: RetentionActivities
) -> list[Callable[..., Any]]:
    """The bound activity methods a batch worker registers."""
    return [
        batch.check_staged_batch,
        batch.process_batch_chunk,
        retention.archive_expired,
        retention.purge_archived,
    ]


def batch_worker(
    settings: Settings,
    client: Client,
    core: Core,
    emitter: Emitter | None,
    *,
    task_queue: str = TASK_QUEUE_BATCH,
    metrics: Metrics | None = None,
) -> Worker:
    """The worker for batches and retention runs (``metrics`` counts items and rows)."""
    return Worker(
        client,
        task_queue=task_queue,
        workflows=JOB_WORKFLOWS,
        activities=job_activity_methods(
            BatchActivities(
                batch_service(
                    core,
                    emitter,
                    sinks=[AnnouncementNotifier(client, notify_options(settings))]
                    if settings.notify_enabled
                    else [],
                ),
                metrics=metrics,
                release_memory=release_freed_memory,
            ),
            RetentionActivities(retention_service(core, settings), metrics=metrics),
        ),
        workflow_runner=workflow_runner(settings),
        max_concurrent_activities=MAX_CONCURRENT_JOB_ACTIVITIES,
        graceful_shutdown_timeout=timedelta(seconds=settings.graceful_shutdown_seconds),
    )


def retention_schedule(settings: Settings, *, task_queue: str = TASK_QUEUE_BATCH) -> Schedule:
    """The Schedule that runs RetentionWorkflow: cron from settings, overlap SKIP."""
    return Schedule(
        action=ScheduleActionStartWorkflow(
            RetentionWorkflow.run,
            RetentionInput(),
            id=f"{RETENTION_WORKFLOW_PREFIX}-scheduled",
            task_queue=task_queue,
        ),
        spec=ScheduleSpec(cron_expressions=[settings.retention_schedule_cron]),
        policy=SchedulePolicy(
            overlap=ScheduleOverlapPolicy.SKIP, catchup_window=RETENTION_CATCHUP_WINDOW
        ),
    )


async def ensure_retention_schedule(
    client: Client,
    settings: Settings,
    *,
    schedule_id: str = RETENTION_SCHEDULE_ID,
    task_queue: str = TASK_QUEUE_BATCH,
) -> bool:
    """Creates the retention Schedule unless it exists (an existing one is left as is).

    Returns:
        True when it was created now.
    """
    try:
        await client.create_schedule(
            schedule_id, retention_schedule(settings, task_queue=task_queue)
        )
    except ScheduleAlreadyRunningError:
        return False
    return True


async def ensure_search_attributes(client: Client) -> bool:
    """Registers MissiveBatchProgress (Int), MissiveBatchStatus, MissiveKind and
    MissiveConversationId (Keyword) if missing.

    Returns:
        True when both exist afterwards; False when the server refused to add
        them (no operator rights): batches then run without them.
    """
    namespace = client.namespace
    try:
        listed = await client.operator_service.list_search_attributes(
            ListSearchAttributesRequest(namespace=namespace)
        )
        missing = {
            name: kind
            for name, kind in BATCH_SEARCH_ATTRIBUTES.items()
            if name not in listed.custom_attributes
        }
        if missing:
            await client.operator_service.add_search_attributes(
                AddSearchAttributesRequest(search_attributes=missing, namespace=namespace)
            )
    except RPCError as err:
        log.warning("cannot register the batch search attributes: %s", err.message)
        return False
    return True
