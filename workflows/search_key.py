"""SearchKeyWorkflow: issue a user's short-lived scoped search key (for the starter)."""

from __future__ import annotations

from temporalio import workflow
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from activities.search import SearchActivities
    from missive.schemas import SearchKeyGrant, SearchKeyInput
    from workflows import policies
    from workflows.failures import reraise_refusal


@workflow.defn
class SearchKeyWorkflow:
    """Looks up the user's conversations and returns a scoped key limited to them.

    The starter talks only to Temporal: it gets the key here and queries Typesense
    with it, so no message text ever enters a workflow history.
    """

    @workflow.run
    async def run(self, input: SearchKeyInput) -> SearchKeyGrant:
        """Fails with a non-retryable ApplicationError (InvalidInput, NotAMember)."""
        try:
            grant: SearchKeyGrant = await workflow.execute_local_activity_method(
                SearchActivities.issue_search_key,
                input,
                start_to_close_timeout=policies.SEARCH_KEY_TIMEOUT,
                retry_policy=policies.SEARCH_KEY_RETRY,
            )
        except ActivityError as err:
            reraise_refusal(err)
        return grant
