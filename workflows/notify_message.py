"""NotifyMessageWorkflow: plan a message's notifications, then send each when it falls due."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError

with workflow.unsafe.imports_passed_through():
    from activities.notify import ChannelActivities, NotifyActivities
    from missive.errors import InvalidInput
    from missive.schemas import (
        Channel,
        DigestItem,
        DispatchDueInput,
        DispatchDueResult,
        FallBackInput,
        FallBackResult,
        NotifyMessageInput,
        NotifyMessageResult,
        NotifyOptions,
        PlanNotificationsInput,
        PlanNotificationsResult,
        QueueDigestsInput,
        SendNotificationsInput,
        SendNotificationsResult,
    )
    from missive.validation import require_mentions
    from workflows import policies

MIN_PAUSE = timedelta(seconds=1)
"""Shortest wait between two dispatches, so a row that stays due cannot spin the loop."""


@dataclass
class SendCounts:
    """Outcomes of sends (and their fallbacks) added up."""

    sent: dict[Channel, int]
    """Rows the provider accepted, per channel."""
    cancelled: int = 0
    """Found read / received just before sending."""
    skipped: int = 0
    """Nothing to send to, recorded."""
    failed: int = 0
    """Permanent failures, and rows left with no channel after a fallback."""
    fell_back: int = 0
    """Rows moved to the next channel."""

    @classmethod
    def empty(cls) -> SendCounts:
        """No outcome yet."""
        return cls(sent={})

    def add(self, channel: Channel, result: SendNotificationsResult) -> None:
        """Adds one send activity's outcomes."""
        self.sent[channel] = self.sent.get(channel, 0) + result.sent
        self.cancelled += result.cancelled
        self.skipped += result.skipped
        self.failed += result.failed


_SEND_METHODS: dict[Channel, Callable[..., Awaitable[SendNotificationsResult]]] = {
    Channel.PUSH: ChannelActivities.send_push,
    Channel.EMAIL: ChannelActivities.send_email,
    Channel.SMS: ChannelActivities.send_sms,
}


def _queue_and_deadline(channel: Channel, options: NotifyOptions) -> tuple[str, timedelta]:
    if channel is Channel.PUSH:
        return options.push_task_queue, timedelta(seconds=options.push_deadline_seconds)
    if channel is Channel.EMAIL:
        return options.email_task_queue, timedelta(seconds=options.email_deadline_seconds)
    return options.sms_task_queue, timedelta(seconds=options.sms_deadline_seconds)


def _last_error(err: BaseException) -> str:
    """The innermost message of an activity failure (the provider's last answer)."""
    message = str(err)
    cause = err.__cause__
    while cause is not None:
        message = str(cause) or message
        cause = cause.__cause__
    return message[:300]


async def send_with_fallback(
    channel: Channel, ids: list[str], options: NotifyOptions, counts: SendCounts
) -> None:
    """Sends rows on ``channel`` within its deadline; past it, down the fallback order.

    A send retries a provider outage until the channel's deadline (the activity's
    schedule_to_close). Then fall_back records the rows fell_back and returns the
    next allowed channel's new rows, which are sent at once (no digest window),
    and so on until a channel takes them or none is left (recorded failed). When
    a push falls back to email, recipients who take SMS but no email get SMS rows
    beside it, sent (and falling back) on their own.
    A non-retryable error is not an outage: nothing falls back, the rows are
    counted failed and the error is logged.
    """
    if not ids:
        return
    if channel not in _SEND_METHODS:
        raise ApplicationError(
            f"no send activity for channel {channel}", type="InvalidInput", non_retryable=True
        )
    queue, deadline = _queue_and_deadline(channel, options)
    try:
        result: SendNotificationsResult = await workflow.execute_activity_method(
            _SEND_METHODS[channel],
            SendNotificationsInput(notification_ids=ids),
            task_queue=queue,
            start_to_close_timeout=policies.PROVIDER_CALL_TIMEOUT,
            schedule_to_close_timeout=deadline,
            retry_policy=policies.PROVIDER_RETRY,
        )
    except ActivityError as err:
        cause = err.cause
        if isinstance(cause, CancelledError):
            raise
        if isinstance(cause, ApplicationError) and cause.non_retryable:
            workflow.logger.warning(
                "%s send refused, not retried: %s: %s", channel, cause.type, cause.message
            )
            counts.failed += len(ids)
            return
        reason = (
            f"{channel} still failing after {int(deadline.total_seconds())} s: {_last_error(err)}"
        )
        moved: FallBackResult = await workflow.execute_local_activity_method(
            NotifyActivities.fall_back,
            FallBackInput(notification_ids=ids, channel=channel, reason=reason, now=workflow.now()),
            start_to_close_timeout=policies.NOTIFY_DB_TIMEOUT,
            retry_policy=policies.NOTIFY_DB_RETRY,
            local_retry_threshold=policies.LOCAL_RETRY_THRESHOLD,
        )
        counts.fell_back += moved.fell_back
        counts.failed += moved.failed
        onward = []
        if moved.channel is not None:
            onward.append(
                send_with_fallback(moved.channel, moved.notification_ids, options, counts)
            )
        if moved.sms_notification_ids:
            onward.append(
                send_with_fallback(Channel.SMS, moved.sms_notification_ids, options, counts)
            )
        await asyncio.gather(*onward)
        return
    counts.add(channel, result)


class NotificationAgenda:
    """Every notification of one message, run inside a workflow.

    The notification log is the agenda: plan_notifications writes a row per
    recipient and channel with its due time, then the agenda sleeps until the
    next due time and lets dispatch_due decide each due row (cancel, defer to
    the end of quiet hours, emit in-app, queue a push or a digest item). Pushes
    go out in chunks on the push queue; email / SMS rows go to each recipient's
    NotificationDigestWorkflow. It holds ids and due times only.

    The message's lifecycle runs it beside following receipts, so notifying
    costs no workflow of its own; plan and dispatch are local activities on the
    lifecycle's own task queue (the first ones run in the same workflow task as
    the persist and the broadcast).

    What it hands out depends on the log alone, never on which workflow task or
    attempt wrote the rows: each dispatch is told when the agenda's earlier
    dispatches ran, and also hands out the rows queued at any other time (by a
    dispatch whose workflow task was lost: no send was ever started for them).
    """

    def __init__(self) -> None:
        self._planned = 0
        self._in_app = 0
        self._digested = 0
        self._cancelled = 0
        self._skipped = 0
        self._sends = SendCounts.empty()
        self._tasks: list[asyncio.Task[None]] = []
        self._handed_out_at: list[datetime] = []

    async def run(
        self,
        input: NotifyMessageInput,
        planned: PlanNotificationsResult | None = None,
        planned_at: datetime | None = None,
    ) -> NotifyMessageResult:
        """Plans (unless ``planned`` says it was, with the broadcast, at ``planned_at``),
        then dispatches until no row is pending; returns the counts."""
        plan = planned
        if plan is None:
            planned_at = workflow.now()
            plan = await workflow.execute_local_activity_method(
                NotifyActivities.plan_notifications,
                PlanNotificationsInput(message=input, now=planned_at),
                start_to_close_timeout=policies.NOTIFY_DB_TIMEOUT,
                retry_policy=policies.NOTIFY_DB_RETRY,
                local_retry_threshold=policies.LOCAL_RETRY_THRESHOLD,
            )
        self._planned += plan.planned
        self._skipped += plan.skipped
        next_due = plan.next_due
        if planned_at is not None:
            self._handed_out_at.append(planned_at)
        if plan.dispatched is not None:
            self._took(plan.dispatched, input.options)
        dispatched = plan.dispatched is not None
        while next_due is not None:
            wait = next_due - workflow.now()
            if dispatched and wait < MIN_PAUSE:
                wait = MIN_PAUSE
            if wait > timedelta(0):
                await workflow.sleep(wait)
            now = workflow.now()
            due: DispatchDueResult = await workflow.execute_local_activity_method(
                NotifyActivities.dispatch_due,
                DispatchDueInput(
                    message_id=input.message_id,
                    options=input.options,
                    now=now,
                    handed_out_at=list(self._handed_out_at),
                ),
                start_to_close_timeout=policies.NOTIFY_DB_TIMEOUT,
                retry_policy=policies.NOTIFY_DB_RETRY,
                local_retry_threshold=policies.LOCAL_RETRY_THRESHOLD,
            )
            self._handed_out_at.append(now)
            dispatched = True
            self._took(due, input.options)
            next_due = due.next_due
        # Sends run beside the agenda (a push retrying for its deadline must not hold
        # back an email due meanwhile); the agenda ends once all of them did.
        await asyncio.gather(*self._tasks)
        return self._result()

    def _took(self, due: DispatchDueResult, options: NotifyOptions) -> None:
        """Counts one dispatch and starts its sends."""
        if due.recovered:
            workflow.logger.warning(
                "%d notification rows queued by a lost dispatch handed out again", due.recovered
            )
        self._in_app += due.in_app
        self._cancelled += due.cancelled
        self._skipped += due.skipped
        self._start_sends(due, options)

    def _start_sends(self, due: DispatchDueResult, options: NotifyOptions) -> None:
        size = max(options.push_batch_size, 1)
        for start in range(0, len(due.push), size):
            chunk = due.push[start : start + size]
            self._tasks.append(
                asyncio.create_task(send_with_fallback(Channel.PUSH, chunk, options, self._sends))
            )
        if due.digests:
            self._tasks.append(asyncio.create_task(self._queue_digests(due.digests, options)))

    async def _queue_digests(self, items: list[DigestItem], options: NotifyOptions) -> None:
        try:
            await workflow.execute_activity_method(
                NotifyActivities.queue_digests,
                QueueDigestsInput(items=items, options=options),
                task_queue=options.task_queue,
                start_to_close_timeout=policies.QUEUE_DIGESTS_TIMEOUT,
                retry_policy=policies.QUEUE_DIGESTS_RETRY,
            )
        except ActivityError as err:
            if isinstance(err.cause, CancelledError):
                raise
            # Retried until it works unless refused: the rows stay queued in the log.
            workflow.logger.warning("queue_digests refused: %s", _last_error(err))
            self._sends.failed += len(items)
            return
        self._digested += len(items)

    def _result(self) -> NotifyMessageResult:
        sent = self._sends.sent
        return NotifyMessageResult(
            planned=self._planned,
            in_app=self._in_app,
            pushed=sent.get(Channel.PUSH, 0),
            digested=self._digested,
            cancelled=self._cancelled + self._sends.cancelled,
            skipped=self._skipped + self._sends.skipped,
            failed=self._sends.failed,
            fell_back=self._sends.fell_back,
            fallback_sent=sent.get(Channel.EMAIL, 0) + sent.get(Channel.SMS, 0),
        )


@workflow.defn
class NotifyMessageWorkflow:
    """A message's notifications as a workflow of their own (``notify-message-<id>``).

    For starts outside a lifecycle (an operator re-running a message's
    notifications, an announcement); a lifecycle with notifications on runs the
    same NotificationAgenda itself.
    """

    @workflow.run
    async def run(self, input: NotifyMessageInput) -> NotifyMessageResult:
        """Runs the agenda to its end; returns the counts.

        Raises:
            ApplicationError: InvalidInput (non-retryable) for mentions the gateway
                would refuse (over MAX_MENTIONS, or not user ids): the same rule as
                the lifecycle's, before anything is planned.
        """
        try:
            require_mentions(input.mentions)
        except InvalidInput as err:
            raise ApplicationError(str(err), type=err.type, non_retryable=True) from None
        return await NotificationAgenda().run(input)
