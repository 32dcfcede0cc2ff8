"""NotificationDigestWorkflow: a recipient's email or SMS notifications, sent as one digest."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.notify import NotifyActivities
    from missive.constants import NOTIFY_DIGEST_SIGNAL, NOTIFY_DIGEST_WORKFLOW
    from missive.schemas import (
        DigestItems,
        NotificationDigestInput,
        NotificationDigestResult,
        PrepareDigestInput,
        PrepareDigestResult,
    )
    from workflows import policies
    from workflows.notify_message import SendCounts, send_with_fallback


@workflow.defn(name=NOTIFY_DIGEST_WORKFLOW)
class NotificationDigestWorkflow:
    """The digest of one recipient on one channel (id ``notify-digest-<channel>-<user>``).

    queue_digests signal-with-starts it with ``add_items``. It waits the digest
    window from the first item, then prepare_digest folds the gathered rows into
    one digest row (dropping those read meanwhile; in quiet hours it says until
    when to wait, and the workflow prepares again then with whatever arrived
    too), and the digest is sent on the channel's queue within its deadline,
    falling back like any send. Items that arrived meanwhile start the next
    window; when none did, the workflow ends (the next item starts a new one).
    """

    @workflow.init
    def __init__(self, input: NotificationDigestInput) -> None:
        self._pending: list[str] = []
        self._seen: set[str] = set()
        self._first_at: datetime | None = None
        self._add(input.pending)

    @workflow.signal(name=NOTIFY_DIGEST_SIGNAL)
    def add_items(self, items: DigestItems) -> None:
        """More due rows for this digest (a repeated id is ignored)."""
        self._add(items.notification_ids)

    @workflow.query
    def pending(self) -> list[str]:
        """Rows gathered for the next digest."""
        return list(self._pending)

    def _add(self, ids: list[str]) -> None:
        for notification_id in ids:
            if notification_id in self._seen:
                continue
            self._seen.add(notification_id)
            self._pending.append(notification_id)
            if self._first_at is None:
                self._first_at = workflow.now()

    @workflow.run
    async def run(self, input: NotificationDigestInput) -> NotificationDigestResult:
        """Sends digests while items keep arriving; ends when idle after a send."""
        window = timedelta(seconds=input.options.digest_window_seconds)
        digests = items = cancelled = 0
        sends = SendCounts.empty()
        if not self._pending:
            # Started without items (only a bare start does that): wait one window.
            try:
                await workflow.wait_condition(lambda: bool(self._pending), timeout=window)
            except TimeoutError:
                return NotificationDigestResult()
        while self._pending:
            assert self._first_at is not None
            wait = self._first_at + window - workflow.now()
            if wait > timedelta(0):
                await workflow.sleep(wait)
            batch = self._take()
            while True:
                prepared: PrepareDigestResult = await workflow.execute_local_activity_method(
                    NotifyActivities.prepare_digest,
                    PrepareDigestInput(
                        recipient_id=input.recipient_id,
                        channel=input.channel,
                        notification_ids=batch,
                        now=workflow.now(),
                    ),
                    start_to_close_timeout=policies.NOTIFY_DB_TIMEOUT,
                    retry_policy=policies.NOTIFY_DB_RETRY,
                    local_retry_threshold=policies.LOCAL_RETRY_THRESHOLD,
                )
                if prepared.defer_until is None:
                    break
                # Quiet hours: the same rows (and any newer) are prepared again then.
                await workflow.sleep(max(prepared.defer_until - workflow.now(), timedelta(0)))
                batch = batch + self._take()
            cancelled += prepared.cancelled
            if prepared.notification_id is not None:
                before = sum(sends.sent.values())
                await send_with_fallback(
                    input.channel, [prepared.notification_id], input.options, sends
                )
                if sum(sends.sent.values()) > before:  # on its channel or a fallback
                    digests += 1
                    items += prepared.items
            if self._pending and workflow.info().is_continue_as_new_suggested():
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(dataclasses.replace(input, pending=self._take()))
        # An item signalled after the loop's last check is not lost: the check and the
        # return run in one activation, and a signal reaching the server while that
        # task is in flight makes it refuse the completion (UnhandledCommand); the task
        # runs again with the signal applied before the send's result, so the loop goes
        # on. Awaiting anything that takes a workflow task between the check and the
        # return would open the gap (tests/integration/test_notify_digest_gap.py).
        await workflow.wait_condition(workflow.all_handlers_finished)
        return NotificationDigestResult(
            digests=digests, items=items, cancelled=cancelled + sends.cancelled
        )

    def _take(self) -> list[str]:
        """The gathered rows; the next item starts a new window."""
        taken, self._pending, self._first_at = self._pending, [], None
        return taken
