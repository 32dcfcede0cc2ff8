"""ReceiptWorkflow: apply a delivered/read watermark, tell senders, tell lifecycles."""

from __future__ import annotations

import asyncio

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.messages import MessageActivities
    from activities.notify import ChannelActivities, NotifyActivities
    from missive.constants import EVENT_MESSAGE_RECEIPT, message_workflow_id
    from missive.schemas import (
        ApplyReceiptResult,
        ReceiptChange,
        ReceiptInput,
        ReceiptResult,
        ReceiptsChanged,
        SendNotificationsInput,
        SettleNotificationsInput,
        SettleNotificationsResult,
    )
    from workflows import policies
    from workflows.message_lifecycle import MessageLifecycleWorkflow
    from workflows.steps import announce_locally, write_locally


@workflow.defn
class ReceiptWorkflow:
    """One receipt from one reader: "delivered/read up to seq N in conversation C".

    The database holds every recipient's state; lifecycle workflows are told
    only what they react to, so a 1,000-member group does not flood them.
    """

    @workflow.run
    async def run(self, input: ReceiptInput) -> ReceiptResult:
        """Applies the receipt; fails only with a non-retryable ApplicationError."""
        applied: ApplyReceiptResult = await write_locally(MessageActivities.apply_receipt, input)
        if applied.changes:
            await announce_locally(
                MessageActivities.broadcast_receipts, applied, event=EVENT_MESSAGE_RECEIPT
            )
        to_tell = [
            c for c in applied.changes if c.lifecycle_reacts(input.receipt_detail_max_recipients)
        ]
        told, _ = await asyncio.gather(
            asyncio.gather(*(self._tell(applied, c, input) for c in to_tell)),
            self._settle(applied, input),
        )
        return ReceiptResult(
            changed=applied.changed, up_to_seq=applied.up_to_seq, notified_lifecycles=sum(told)
        )

    async def _settle(self, applied: ApplyReceiptResult, input: ReceiptInput) -> None:
        """Settles the reader's notifications up to the watermark (beside telling lifecycles).

        Cancels what the receipt made unnecessary, reads the in-app ones, and clears
        pushes already shown on the reader's devices. The receipt does not depend on
        it: a failure is logged and the receipt goes on (sends re-check anyway).
        """
        if input.notify is None or not workflow.patched("settle-notifications"):
            return
        try:
            settled: SettleNotificationsResult = await workflow.execute_local_activity_method(
                NotifyActivities.settle_notifications,
                SettleNotificationsInput(
                    user_id=applied.user_id,
                    conversation_id=applied.conversation_id,
                    up_to_seq=applied.up_to_seq,
                    status=applied.status,
                    now=workflow.now(),
                ),
                start_to_close_timeout=policies.DB_WRITE_TIMEOUT,
                retry_policy=policies.SETTLE_RETRY,
                local_retry_threshold=policies.LOCAL_RETRY_THRESHOLD,
            )
        except (ActivityError, ApplicationError) as err:
            # A local activity's refusal arrives as the ApplicationError itself.
            workflow.logger.warning("settle_notifications gave up: %s", err)
            return
        if settled.clear_push_ids:
            try:
                await workflow.execute_activity_method(
                    ChannelActivities.clear_pushes,
                    SendNotificationsInput(notification_ids=settled.clear_push_ids),
                    task_queue=input.notify.push_task_queue,
                    start_to_close_timeout=policies.CLEAR_PUSH_TIMEOUT,
                    schedule_to_close_timeout=policies.CLEAR_PUSH_DEADLINE,
                    retry_policy=policies.PROVIDER_RETRY,
                )
            except ActivityError as err:
                workflow.logger.warning("clear_pushes gave up: %s", err.cause or err)

    async def _tell(
        self, applied: ApplyReceiptResult, change: ReceiptChange, input: ReceiptInput
    ) -> int:
        detailed = change.recipient_count <= input.receipt_detail_max_recipients
        handle = workflow.get_external_workflow_handle(
            message_workflow_id(change.sender_id, change.client_message_id)
        )
        try:
            await handle.signal(
                MessageLifecycleWorkflow.receipts_changed,
                ReceiptsChanged(
                    recipient_count=change.recipient_count,
                    delivered_count=change.delivered_count,
                    read_count=change.read_count,
                    recipient_id=applied.user_id if detailed else None,
                    status=change.status if detailed else None,
                    at=change.at if detailed else None,
                ),
            )
        except ApplicationError:
            # The lifecycle already ended (all read, or its window elapsed): the
            # database has the receipt, which is all that matters then.
            return 0
        return 1
