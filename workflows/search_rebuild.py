"""SearchRebuildWorkflow: rebuild the index from PostgreSQL into a new collection, then swap."""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.search import SearchActivities
    from missive.schemas import (
        RebuildBeginInput,
        RebuildBegun,
        RebuildFillInput,
        RebuildFillResult,
        RebuildFinishInput,
        RebuildFinishResult,
        RebuildInput,
        RebuildProgress,
    )
    from workflows import policies


@workflow.defn
class SearchRebuildWorkflow:
    """Fills ``<alias>_v<start time>`` from PostgreSQL in chunks, swaps the alias to it
    and drops the older collections; searches keep working on the old one meanwhile.

    The cursor lives in the workflow (one step per ~20 s of importing) and in the
    step's heartbeat, so a crash resumes where it stopped. ``progress`` shows it.
    """

    def __init__(self) -> None:
        self._progress = RebuildProgress()

    @workflow.run
    async def run(self, input: RebuildInput) -> RebuildProgress:
        """Rebuilds; returns the final progress (phase ``done``)."""
        begun: RebuildBegun = await workflow.execute_activity_method(
            SearchActivities.begin_rebuild,
            RebuildBeginInput(version=int(workflow.info().start_time.timestamp())),
            start_to_close_timeout=policies.SEARCH_REBUILD_TIMEOUT,
            retry_policy=policies.SEARCH_INDEX_RETRY,
        )
        name = begun.collection
        self._progress = RebuildProgress(
            phase="filling", collection=name, previous=begun.previous, total=begun.total
        )
        done = False
        while not done:
            step: RebuildFillResult = await workflow.execute_activity_method(
                SearchActivities.fill_rebuild,
                RebuildFillInput(
                    collection=name, after_id=self._progress.cursor, batch_size=input.batch_size
                ),
                start_to_close_timeout=policies.SEARCH_REBUILD_TIMEOUT,
                heartbeat_timeout=policies.SEARCH_HEARTBEAT_TIMEOUT,
                retry_policy=policies.SEARCH_INDEX_RETRY,
            )
            self._progress.indexed += step.indexed
            self._progress.cursor = step.after_id
            done = step.done
        self._progress.phase = "swapping"
        finished: RebuildFinishResult = await workflow.execute_activity_method(
            SearchActivities.finish_rebuild,
            RebuildFinishInput(collection=name, started_at=begun.started_at),
            start_to_close_timeout=policies.SEARCH_REBUILD_TIMEOUT,
            retry_policy=policies.SEARCH_INDEX_RETRY,
        )
        self._progress.dropped = finished.dropped
        self._progress.phase = "done"
        return self._progress

    @workflow.query
    def progress(self) -> RebuildProgress:
        """Where the rebuild is."""
        return self._progress
