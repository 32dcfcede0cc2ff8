"""SearchIndexerWorkflow: one long-running indexer per index alias, forever."""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.search import SearchActivities
    from missive.schemas import IndexerRunResult, SearchIndexerInput, SearchIndexerStatus
    from workflows import policies

MAX_RUNS_PER_HISTORY = 200
"""Continue-as-new after this many activity runs even if not suggested (~17 h)."""


@workflow.defn
class SearchIndexerWorkflow:
    """Keeps the search index in step with PostgreSQL.

    Runs the ``run_indexer`` activity again and again: each run ensures the index
    exists, then indexes pending messages as their NOTIFYs arrive, for a few
    minutes. When Typesense is down the activity fails and is retried with backoff
    (SEARCH_INDEX_RETRY); the backlog waits in PostgreSQL meanwhile.
    """

    def __init__(self) -> None:
        self._status = SearchIndexerStatus()

    @workflow.run
    async def run(self, input: SearchIndexerInput) -> None:
        """Never returns; continues as new to keep its history short."""
        self._status = SearchIndexerStatus(
            indexed=input.indexed, deleted=input.deleted, skipped=input.skipped
        )
        while True:
            done: IndexerRunResult = await workflow.execute_activity_method(
                SearchActivities.run_indexer,
                start_to_close_timeout=policies.SEARCH_INDEXER_TIMEOUT,
                heartbeat_timeout=policies.SEARCH_HEARTBEAT_TIMEOUT,
                retry_policy=policies.SEARCH_INDEX_RETRY,
            )
            self._status.indexed += done.indexed
            self._status.deleted += done.deleted
            self._status.skipped += done.skipped
            self._status.runs += 1
            if (
                workflow.info().is_continue_as_new_suggested()
                or self._status.runs >= MAX_RUNS_PER_HISTORY
            ):
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(
                    SearchIndexerInput(
                        indexed=self._status.indexed,
                        deleted=self._status.deleted,
                        skipped=self._status.skipped,
                    )
                )

    @workflow.query
    def progress(self) -> SearchIndexerStatus:
        """Totals since the indexer first started."""
        return self._status
