"""DeleteMessageWorkflow: a message's sender (or an admin) deletes it."""

from __future__ import annotations

from temporalio import workflow
from temporalio.workflow import ParentClosePolicy

with workflow.unsafe.imports_passed_through():
    from activities.conversations import ConversationActivities
    from missive.constants import EVENT_MESSAGE_DELETED, clear_pushes_workflow_id
    from missive.schemas import (
        ClearPushesInput,
        DeleteMessageInput,
        DeleteMessageResult,
        WithdrawInput,
        WithdrawResult,
    )
    from workflows import policies
    from workflows.clear_pushes import ClearPushesWorkflow
    from workflows.steps import announce_locally, write_locally


@workflow.defn
class DeleteMessageWorkflow:
    """One delete: destroy the body (a tombstone stays; the indexer removes it from
    search), tell the conversation (``message:deleted``), withdraw its
    notifications (pending ones cancelled, in-app ones out of the bell, shown
    pushes cleared by a ClearPushesWorkflow of their own).

    Its id is ``message-delete-<message id>``: a message is deleted once, and a
    second delete answers with the first one's ``deleted_at``.
    """

    @workflow.run
    async def run(self, input: DeleteMessageInput) -> DeleteMessageResult:
        """Deletes, announces, withdraws the notifications."""
        result = await write_locally(ConversationActivities.delete_message, input)
        await announce_locally(
            ConversationActivities.announce_delete, result, event=EVENT_MESSAGE_DELETED
        )
        withdrawn: WithdrawResult = await workflow.execute_local_activity_method(
            ConversationActivities.withdraw_notifications,
            WithdrawInput(
                message_id=result.message_id,
                conversation_id=result.conversation_id,
                now=workflow.now(),
            ),
            start_to_close_timeout=policies.NOTIFY_DB_TIMEOUT,
            retry_policy=policies.NOTIFY_DB_RETRY,
            local_retry_threshold=policies.LOCAL_RETRY_THRESHOLD,
        )
        if withdrawn.clear_push_ids:
            # The provider's queue and retries are the clearing workflow's; the
            # delete is acknowledged without waiting on the push provider.
            await workflow.start_child_workflow(
                ClearPushesWorkflow.run,
                ClearPushesInput(
                    notification_ids=withdrawn.clear_push_ids,
                    push_task_queue=input.push_task_queue,
                ),
                id=clear_pushes_workflow_id(withdrawn.clear_push_ids),
                parent_close_policy=ParentClosePolicy.ABANDON,
            )
        return result
