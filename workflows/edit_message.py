"""EditMessageWorkflow: a message's sender changes its text."""

from __future__ import annotations

from temporalio import workflow
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from activities.conversations import ConversationActivities
    from missive.schemas import EditMessageInput, EditMessageResult, EditNotice
    from workflows import policies
    from workflows.failures import reraise_refusal


@workflow.defn
class EditMessageWorkflow:
    """One edit: store the new text (re-encrypted; the indexer re-indexes it), then
    tell the conversation (``message:edited``).

    Its id names the message and the new text (``message-edit-<id>-<digest>``), so
    a resend joins it. Notifications still pending load the message when they are
    sent, so they show the current text. An edit that adds a mention notifies
    nobody new (as in Mattermost): the README says why.
    """

    @workflow.run
    async def run(self, input: EditMessageInput) -> EditMessageResult:
        """Stores the edit and announces it; the same text again only re-announces."""
        try:
            result = await workflow.execute_local_activity_method(
                ConversationActivities.edit_message,
                input,
                start_to_close_timeout=policies.DB_WRITE_TIMEOUT,
                retry_policy=policies.DB_RETRY,
                local_retry_threshold=policies.LOCAL_RETRY_THRESHOLD,
            )
        except ActivityError as err:
            reraise_refusal(err)
        try:
            await workflow.execute_local_activity_method(
                ConversationActivities.announce_edit,
                EditNotice(edit=input, result=result),
                start_to_close_timeout=policies.BROADCAST_TIMEOUT,
                schedule_to_close_timeout=policies.BROADCAST_DEADLINE,
                retry_policy=policies.BROADCAST_RETRY,
                local_retry_threshold=policies.LOCAL_RETRY_THRESHOLD,
            )
        except ActivityError:
            # Stored: clients that missed the event see the edit in message:sync.
            workflow.logger.warning("message:edited broadcast gave up")
        return result
