"""ClearPushesWorkflow: clear pushes already shown once their reader has read them."""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.notify import ChannelActivities
    from missive.schemas import ClearPushesInput, SendNotificationsInput, SendNotificationsResult
    from workflows import policies


@workflow.defn
class ClearPushesWorkflow:
    """The push half of a receipt the gateway's batcher applied.

    The batcher writes receipts outside any workflow (see the README's receipts
    section), but clearing a shown push is a call to the push provider, rate
    capped on its own task queue: that stays a Temporal activity with the
    provider's retry policy. Started only when a read found pushes already shown,
    so most receipts start nothing.
    """

    @workflow.run
    async def run(self, input: ClearPushesInput) -> SendNotificationsResult:
        """Sends the clearing data messages; rows already cleared are skipped."""
        return await workflow.execute_activity_method(
            ChannelActivities.clear_pushes,
            SendNotificationsInput(notification_ids=list(input.notification_ids)),
            task_queue=input.push_task_queue,
            start_to_close_timeout=policies.CLEAR_PUSH_TIMEOUT,
            schedule_to_close_timeout=policies.CLEAR_PUSH_DEADLINE,
            retry_policy=policies.PROVIDER_RETRY,
        )
