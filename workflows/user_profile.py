"""UserProfileWorkflow: a back-end service creates or updates a user."""

from __future__ import annotations

from temporalio import workflow
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from activities.conversations import ConversationActivities
    from missive.schemas import UserProfile, UserProfileInput
    from workflows import policies
    from workflows.failures import reraise_refusal


@workflow.defn
class UserProfileWorkflow:
    """One create or update of a user (handle, name, email, phone, timezone, locale).

    One write; a workflow so that services in any language provision users the
    way they send messages, with the same codec, retries and visibility.
    """

    @workflow.run
    async def run(self, input: UserProfileInput) -> UserProfile:
        """Creates or updates the user and returns it as stored."""
        try:
            return await workflow.execute_local_activity_method(
                ConversationActivities.apply_user_profile,
                input,
                start_to_close_timeout=policies.DB_WRITE_TIMEOUT,
                retry_policy=policies.DB_RETRY,
                local_retry_threshold=policies.LOCAL_RETRY_THRESHOLD,
            )
        except ActivityError as err:
            reraise_refusal(err)
