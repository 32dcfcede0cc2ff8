"""SearchCheckWorkflow: compare PostgreSQL with the index per conversation, optionally repair."""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.search import SearchActivities
    from missive.schemas import SearchCheckInput, SearchCheckResult
    from workflows import policies


@workflow.defn
class SearchCheckWorkflow:
    """One check; with ``repair`` the gaps are queued for the indexer."""

    @workflow.run
    async def run(self, input: SearchCheckInput) -> SearchCheckResult:
        """Returns counts and the conversations with gaps (ids only, no text)."""
        result: SearchCheckResult = await workflow.execute_activity_method(
            SearchActivities.check_index,
            input,
            start_to_close_timeout=policies.SEARCH_CHECK_TIMEOUT,
            heartbeat_timeout=policies.SEARCH_HEARTBEAT_TIMEOUT,
            retry_policy=policies.SEARCH_CHECK_RETRY,
        )
        return result
