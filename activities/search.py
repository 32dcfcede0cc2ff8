"""Search activities: run the indexer, rebuild the index, check it, issue user search keys."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict

from temporalio import activity

from activities.errors import translate_errors
from missive.metrics import Metrics
from missive.schemas import (
    IndexerRunResult,
    RebuildBeginInput,
    RebuildBegun,
    RebuildFillInput,
    RebuildFillResult,
    RebuildFinishInput,
    RebuildFinishResult,
    SearchCheckInput,
    SearchCheckResult,
    SearchKeyGrant,
    SearchKeyInput,
)
from missive.search import SearchService

REBUILD_STEP_SECONDS = 20.0
"""How long one fill_rebuild activity imports before it reports progress."""


class SearchActivities:
    """Thin activities over SearchService. Each one is idempotent."""

    def __init__(
        self,
        search: SearchService,
        *,
        indexer_run_seconds: float = 300.0,
        rebuild_step_seconds: float = REBUILD_STEP_SECONDS,
        metrics: Metrics | None = None,
        lag_every_seconds: float = 5.0,
    ) -> None:
        self._search = search
        self._run_seconds = indexer_run_seconds
        self._step_seconds = rebuild_step_seconds
        self._metrics = metrics
        self._lag_every = lag_every_seconds

    @activity.defn
    @translate_errors
    async def run_indexer(self) -> IndexerRunResult:
        """Ensures the index, then indexes pending messages as they come, for a while.

        Returns early when the worker shuts down; heartbeats after every batch.
        """

        def beat(progress: IndexerRunResult) -> None:
            activity.heartbeat(asdict(progress))

        async with self._observing_lag():
            return await self._search.run_indexer(
                heartbeat=beat,
                stopping=activity.wait_for_worker_shutdown,
                max_seconds=self._run_seconds,
                # A retry follows a failure (often Typesense down): check nothing was lost.
                reconcile=activity.info().attempt > 1,
            )

    @asynccontextmanager
    async def _observing_lag(self) -> AsyncIterator[None]:
        """Feeds the index-lag gauges every few seconds while the indexer runs."""
        metrics = self._metrics
        if metrics is None:
            yield
            return

        async def observe() -> None:
            while True:
                try:
                    pending, age = await self._search.backlog()
                    metrics.observe_index_lag(pending=pending, oldest_age_seconds=age)
                except Exception as err:  # a gauge must never stop the indexer
                    activity.logger.warning("index lag not observed: %s", type(err).__name__)
                await asyncio.sleep(self._lag_every)

        task = asyncio.create_task(observe())
        try:
            yield
        finally:
            task.cancel()

    @activity.defn
    @translate_errors
    async def begin_rebuild(self, input: RebuildBeginInput) -> RebuildBegun:
        """Creates the new collection (an existing one is kept) and notes the start time."""
        return await self._search.begin_rebuild(input.version)

    @activity.defn
    @translate_errors
    async def fill_rebuild(self, input: RebuildFillInput) -> RebuildFillResult:
        """Imports the next messages into the new collection, resuming from the
        heartbeated cursor after a crash."""
        after = input.after_id
        details = activity.info().heartbeat_details
        if details and isinstance(details[0], dict) and details[0].get("after_id"):
            after = max(after, str(details[0]["after_id"]))

        def beat(progress: RebuildFillResult) -> None:
            activity.heartbeat(asdict(progress))

        return await self._search.fill_rebuild(
            input.collection,
            after_id=after,
            batch_size=input.batch_size,
            max_seconds=self._step_seconds,
            heartbeat=beat,
        )

    @activity.defn
    @translate_errors
    async def finish_rebuild(self, input: RebuildFinishInput) -> RebuildFinishResult:
        """Swaps the alias, replays writes made during the rebuild, drops old collections."""
        return await self._search.finish_rebuild(input.collection, input.started_at)

    @activity.defn
    @translate_errors
    async def check_index(self, input: SearchCheckInput) -> SearchCheckResult:
        """Compares PostgreSQL with the index per conversation; can queue repairs."""
        async with _heartbeating():
            return await self._search.check(repair=input.repair, report_limit=input.report_limit)

    @activity.defn
    @translate_errors
    async def issue_search_key(self, input: SearchKeyInput) -> SearchKeyGrant:
        """A short-lived scoped key over the user's conversations (read-only)."""
        return await self._search.issue_key(input.user_id, input.conversation_id)


@asynccontextmanager
async def _heartbeating(every: float = 10.0) -> AsyncIterator[None]:
    """Heartbeats in the background while a long single call runs."""

    async def beat() -> None:
        while True:
            activity.heartbeat()
            await asyncio.sleep(every)

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()
