"""UserProfileWorkflow: a back-end service creates or updates a user."""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.conversations import ConversationActivities
    from missive.schemas import UserProfile, UserProfileInput
    from workflows.steps import write_locally


@workflow.defn
class UserProfileWorkflow:
    """One create or update of a user (handle, name, email, phone, timezone, locale).

    One write; a workflow so that services in any language provision users the
    way they send messages, with the same codec, retries and visibility.
    """

    @workflow.run
    async def run(self, input: UserProfileInput) -> UserProfile:
        """Creates or updates the user and returns it as stored."""
        return await write_locally(ConversationActivities.apply_user_profile, input)
