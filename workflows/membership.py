"""MembershipWorkflow: create a conversation, add, remove, leave, change a role."""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.conversations import ConversationActivities
    from missive.schemas import (
        MembershipInput,
        MembershipNotice,
        MembershipResult,
        WithdrawInput,
        WithdrawResult,
    )
    from workflows import policies
    from workflows.steps import write_locally


@workflow.defn
class MembershipWorkflow:
    """One membership change, from the database to every gateway's rooms.

    The change is one transaction (apply_membership); then every gateway moves
    the members' sockets into or out of the conversation's room and the members
    hear of it (announce_membership); a removed member's pending notifications of
    the conversation are cancelled (withdraw_notifications). All three are local
    activities: started eagerly from the gateway, the whole change is one
    workflow task. The requester's ack comes when the workflow completes, so a
    removed member's sockets have left the room before it.
    """

    @workflow.run
    async def run(self, input: MembershipInput) -> MembershipResult:
        """Applies the change, moves the rooms, withdraws the removed member's notifications."""
        result = await write_locally(ConversationActivities.apply_membership, input)
        if not result.changed:
            return result
        await workflow.execute_local_activity_method(
            ConversationActivities.announce_membership,
            MembershipNotice(result=result),
            start_to_close_timeout=policies.BROADCAST_TIMEOUT,
            retry_policy=policies.MEMBERSHIP_ANNOUNCE_RETRY,
            local_retry_threshold=policies.LOCAL_RETRY_THRESHOLD,
        )
        for user_id in result.removed:
            withdrawn: WithdrawResult = await workflow.execute_local_activity_method(
                ConversationActivities.withdraw_notifications,
                WithdrawInput(
                    user_id=user_id,
                    conversation_id=result.conversation.conversation_id,
                    now=workflow.now(),
                ),
                start_to_close_timeout=policies.NOTIFY_DB_TIMEOUT,
                retry_policy=policies.NOTIFY_DB_RETRY,
                local_retry_threshold=policies.LOCAL_RETRY_THRESHOLD,
            )
            workflow.logger.debug("withdrew %d notifications", withdrawn.cancelled)
        return result
