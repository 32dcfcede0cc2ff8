"""The gateway's receipt batcher: chat-scale receipts without a workflow per receipt.

A real client acks ``message:delivered`` for every message it receives and
``message:read`` for every one it sees: two receipts per message per recipient.
A workflow start per receipt made them cost more than the messages themselves
(2.6 messages/s instead of 27.6 in a two-member chat). Receipts are monotonic
watermarks, idempotent and commutative, so this process gathers them instead:

1. **Gather.** ``submit`` queues a checked receipt; the flush loop writes the
   batch ``RECEIPT_BATCH_WINDOW_MS`` after the oldest one waiting, and while a
   batch is being written the next one gathers anyway (group commit): what came in
   meanwhile is written as soon as its oldest has waited the window.
2. **Apply.** ``ReceiptService.apply_many`` writes the whole batch in two
   statements (a check, then one write, each atomic on its own), coalesced to one
   watermark per reader and conversation. A refused receipt gets its own error; the others apply. A
   failure retries the whole batch with backoff (it is idempotent: forward-only
   watermarks), like a local activity's retry policy, until its deadline; then
   every receipt in it is answered ProviderUnavailable.
3. **Ack** every receipt of the batch once the write committed.
4. **Tell**, after the acks: the senders' ``message:receipt`` events as batched
   emits; the readers' notifications settled by the ReceiptWorkflow's own
   activity code (cancel what is no longer needed, read in-app rows), with one
   ClearPushesWorkflow for pushes already shown; and the lifecycles, each told at
   most once per ``RECEIPT_SIGNAL_WINDOW_MS`` in one signal that carries every
   change of that window (per recipient in small conversations, milestones in
   large ones).

The database stays the source of truth. What step 4 loses in a crash (an event,
a signal) is a convenience: clients re-read receipts with the conversation, a
lifecycle that missed a signal ends at its window, and a notification falling
due re-checks read state before it is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.service import RPCError, RPCStatusCode

from activities.notify import NotifyActivities
from missive.broadcast import Broadcaster
from missive.constants import (
    EVENT_MESSAGE_RECEIPT,
    TASK_QUEUE_MESSAGES,
    clear_pushes_workflow_id,
    message_workflow_id,
)
from missive.errors import MessagingError, ProviderUnavailable
from missive.metrics import Metrics
from missive.notify.log import ReaderWatermark
from missive.schemas import (
    ClearPushesInput,
    NotifyOptions,
    ReceiptChange,
    ReceiptsChanged,
    ReceiptStatus,
    RecipientReceipt,
)
from missive.services.receipts import (
    BatchApplied,
    ReaderChanges,
    ReceiptApplied,
    ReceiptService,
    Watermark,
)
from workflows.clear_pushes import ClearPushesWorkflow
from workflows.message_lifecycle import MessageLifecycleWorkflow

log = logging.getLogger("missive.receipts")

FLUSH_RETRY_DELAYS = (0.05, 0.1, 0.2, 0.4, 0.8, 1.6)
"""Backoff between attempts at writing one batch (about 3 s in all): a database
restart or failover is answered ProviderUnavailable after that, not held."""

SIGNAL_ATTEMPTS = 5
"""Tries at signalling one lifecycle (Temporal briefly unavailable) before giving
up; the lifecycle then ends at its window, the database has the receipts."""

TELL_CONCURRENCY = 32
"""Signals and settle statements in flight at once."""


@dataclass
class _Pending:
    receipt: Watermark
    future: asyncio.Future[ReceiptApplied]
    at: float
    """When it was queued (the loop's clock): its batch is written a window later."""


@dataclass
class _LifecycleNews:
    """What one lifecycle will be told in its next signal."""

    due: float
    recipient_count: int = 0
    delivered_count: int = 0
    read_count: int = 0
    recipients: dict[str, RecipientReceipt] = field(default_factory=dict)
    attempts: int = 0


class ReceiptBatcher:
    """Gathers this process's receipts into batches; see the module docstring."""

    def __init__(
        self,
        *,
        receipts: ReceiptService,
        broadcaster: Broadcaster,
        client: Client,
        notify_activities: NotifyActivities | None,
        notify: NotifyOptions | None,
        lifecycle_window_seconds: int,
        detail_max_recipients: int,
        window_seconds: float,
        max_batch: int,
        max_queued: int,
        signal_window_seconds: float,
        metrics: Metrics | None = None,
    ) -> None:
        self._receipts = receipts
        self._broadcaster = broadcaster
        self._client = client
        self._notify_activities = notify_activities if notify is not None else None
        self._notify = notify
        self._lifecycle_window = lifecycle_window_seconds
        self._detail_limit = detail_max_recipients
        self._window = window_seconds
        self._max_batch = max_batch
        self._max_queued = max_queued
        self._signal_window = signal_window_seconds
        self._metrics = metrics
        self._queue: list[_Pending] = []
        self._wake = asyncio.Event()
        self._news: dict[str, _LifecycleNews] = {}
        self._news_wake = asyncio.Event()
        self._limit = asyncio.Semaphore(TELL_CONCURRENCY)
        self._tasks: set[asyncio.Task[None]] = set()
        self._loops: list[asyncio.Task[None]] = []

    def start(self) -> None:
        """Starts the flush and signal loops (in the running event loop)."""
        self._loops = [
            asyncio.create_task(self._flush_loop(), name="receipt-batcher"),
            asyncio.create_task(self._signal_loop(), name="receipt-signals"),
        ]

    async def close(self) -> None:
        """Writes what is queued, tells what it can, then stops the loops."""
        while self._queue:
            await self._flush(self._take_batch())
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        for wid in list(self._news):
            self._news[wid].due = 0
        await self._send_due_signals(final=True)
        for loop in self._loops:
            loop.cancel()
        for loop in self._loops:
            with contextlib.suppress(asyncio.CancelledError):
                await loop

    @property
    def queued(self) -> int:
        """Receipts waiting for a batch."""
        return len(self._queue)

    async def submit(self, receipt: Watermark) -> ReceiptApplied:
        """Queues a receipt and returns what it did once its batch committed.

        Raises:
            MessagingError: the receipt was refused (NotAMember, MessageNotVisible,
                ConversationNotFound), or ProviderUnavailable: the queue is full or
                the database did not answer (sending it again is safe).
        """
        if len(self._queue) >= self._max_queued:
            raise ProviderUnavailable(
                "too many receipts waiting on this gateway; send it again shortly",
                retry_after=0.5,
            )
        loop = asyncio.get_running_loop()
        future: asyncio.Future[ReceiptApplied] = loop.create_future()
        self._queue.append(_Pending(receipt, future, loop.time()))
        self._wake.set()
        # Not shielded: a handler that gives up cancels its future, and the batch, which
        # applies it anyway (the ack said Timeout: maybe stored), then skips its answer.
        return await future

    # -- gather and apply ---------------------------------------------------

    def _take_batch(self) -> list[_Pending]:
        batch, self._queue = self._queue[: self._max_batch], self._queue[self._max_batch :]
        if not self._queue:
            self._wake.clear()
        return batch

    async def _flush_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            # A window after the oldest waiting receipt, not after the last write: the
            # receipts that came in while a batch was written have waited already.
            wait = self._queue[0].at + self._window - loop.time() if self._queue else 0.0
            if wait > 0:
                await asyncio.sleep(wait)
            batch = self._take_batch()
            if batch:
                await self._flush(batch)

    async def _flush(self, batch: list[_Pending]) -> None:
        started = time.perf_counter()
        applied = await self._apply(batch)
        if applied is None:
            return
        for pending, outcome in zip(batch, applied.outcomes, strict=True):
            if pending.future.done():
                continue
            if isinstance(outcome, MessagingError):
                pending.future.set_exception(outcome)
            else:
                pending.future.set_result(outcome)
        if self._metrics is not None:
            read = sum(r.became_read for r in applied.readers)
            self._metrics.receipt_batch(
                applied=dict(
                    Counter(
                        str(p.receipt.status)
                        for p, o in zip(batch, applied.outcomes, strict=True)
                        if isinstance(o, ReceiptApplied)
                    )
                ),
                moved={"read": read, "delivered": sum(r.changed for r in applied.readers) - read},
                receipts=len(batch),
                seconds=time.perf_counter() - started,
            )
            for outcome in applied.outcomes:
                if isinstance(outcome, MessagingError):
                    self._metrics.refused("apply_receipt", outcome)
        moved = [reader for reader in applied.readers if reader.changed]
        if moved:
            self._spawn(self._tell(moved))

    async def _apply(self, batch: list[_Pending]) -> BatchApplied | None:
        receipts = [pending.receipt for pending in batch]
        for attempt, delay in enumerate((*FLUSH_RETRY_DELAYS, None), start=1):
            try:
                return await self._receipts.apply_many(
                    receipts, lifecycle_window_seconds=self._lifecycle_window, counted=False
                )
            except Exception as err:
                if delay is None:
                    log.error(
                        "a batch of %d receipts failed %d times, answered unavailable: %s",
                        len(batch),
                        attempt,
                        _reason(err),
                    )
                    break
                log.warning(
                    "writing %d receipts failed (attempt %d, retrying in %.2f s): %s",
                    len(batch),
                    attempt,
                    delay,
                    _reason(err),
                )
                await asyncio.sleep(delay)
        for pending in batch:
            if not pending.future.done():
                pending.future.set_exception(
                    ProviderUnavailable(
                        "the database did not take the receipt; send it again shortly",
                        retry_after=1.0,
                    )
                )
        return None

    # -- tell senders, notifications and lifecycles ---------------------------

    def _spawn(self, work: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _tell(self, readers: list[ReaderChanges]) -> None:
        await asyncio.gather(self._announce(readers), self._settle(readers))

    async def _announce(self, readers: list[ReaderChanges]) -> None:
        """message:receipt to the senders, then the lifecycles' news (counts first)."""
        try:
            readers = await self._receipts.counted(readers)
        except Exception as err:
            # Stored; without counts nobody can be told well, and clients re-read them.
            log.warning("counting a receipt batch's messages failed: %s", _reason(err))
            return
        await self._emit_receipts(readers)
        now = time.monotonic()
        for reader in readers:
            for change in reader.changes:
                if change.lifecycle_reacts(self._detail_limit):
                    self._queue_news(reader.user_id, change, now)

    async def _emit_receipts(self, readers: list[ReaderChanges]) -> None:
        try:
            emitted = await self._broadcaster.receipts_of(
                [(r.conversation_id, r.user_id, r.changes) for r in readers if r.changes],
                detail_max_recipients=self._detail_limit,
            )
        except Exception as err:
            # The receipts are stored; a sender's client sees them on its next read.
            log.warning("message:receipt events of a batch were not published: %s", _reason(err))
            return
        if self._metrics is not None:
            self._metrics.broadcast(EVENT_MESSAGE_RECEIPT, emitted)

    async def _settle(self, readers: list[ReaderChanges]) -> None:
        """Settles the readers' notifications: the receipt's rules, one statement per batch."""
        activities = self._notify_activities
        if activities is None or self._notify is None:
            return
        watermarks = [
            ReaderWatermark(r.user_id, r.conversation_id, r.delivered_seq, r.read_seq)
            for r in readers
        ]
        now = datetime.now(UTC)  # one time for every retry: a rerun returns the same
        for attempt, delay in enumerate((*FLUSH_RETRY_DELAYS, None)):
            try:
                cleared = await activities.settle_watermarks(watermarks, now=now, rerun=attempt > 0)
                break
            except Exception as err:
                if delay is None:
                    # Sends re-check read state when due: nothing is sent in vain.
                    log.warning("settling notifications gave up: %s", _reason(err))
                    return
                await asyncio.sleep(delay)
        if cleared:
            await self._clear_pushes(cleared)

    async def _clear_pushes(self, notification_ids: list[str]) -> None:
        assert self._notify is not None
        try:
            await self._client.start_workflow(
                ClearPushesWorkflow.run,
                ClearPushesInput(
                    notification_ids=notification_ids,
                    push_task_queue=self._notify.push_task_queue,
                ),
                id=clear_pushes_workflow_id(notification_ids),
                task_queue=TASK_QUEUE_MESSAGES,
                id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
            )
        except Exception as err:
            # The rows are marked cleared; the pushes stay on screen until dismissed.
            log.warning(
                "clearing %d shown pushes could not start: %s", len(notification_ids), _reason(err)
            )

    def _queue_news(self, recipient_id: str, change: ReceiptChange, now: float) -> None:
        wid = message_workflow_id(change.sender_id, change.client_message_id)
        news = self._news.get(wid)
        if news is None:
            news = self._news[wid] = _LifecycleNews(due=now + self._signal_window)
        _merge(
            news,
            _LifecycleNews(
                due=news.due,
                recipient_count=change.recipient_count,
                delivered_count=change.delivered_count,
                read_count=change.read_count,
                recipients=(
                    {recipient_id: RecipientReceipt(recipient_id, change.status, change.at)}
                    if change.recipient_count <= self._detail_limit
                    else {}
                ),
            ),
        )
        if news.read_count >= news.recipient_count:
            news.due = now  # everyone has read: nothing more to wait for
        self._news_wake.set()

    async def _signal_loop(self) -> None:
        while True:
            if not self._news:
                self._news_wake.clear()
                await self._news_wake.wait()
            wait = min(news.due for news in self._news.values()) - time.monotonic()
            if wait > 0:
                self._news_wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._news_wake.wait(), wait)
                continue
            await self._send_due_signals(final=False)

    async def _send_due_signals(self, *, final: bool) -> None:
        now = time.monotonic()
        due = [(wid, news) for wid, news in self._news.items() if news.due <= now]
        for wid, _ in due:
            del self._news[wid]
        if due:
            await asyncio.gather(*(self._signal(wid, news, final) for wid, news in due))

    async def _signal(self, wid: str, news: _LifecycleNews, final: bool) -> None:
        signal = ReceiptsChanged(
            recipient_count=news.recipient_count,
            delivered_count=news.delivered_count,
            read_count=news.read_count,
            recipients=sorted(news.recipients.values(), key=lambda r: r.recipient_id),
        )
        async with self._limit:
            try:
                await self._client.get_workflow_handle(wid).signal(
                    MessageLifecycleWorkflow.receipts_changed, signal
                )
                outcome = "sent"
            except RPCError as err:
                if err.status is RPCStatusCode.NOT_FOUND:
                    outcome = "ended"  # all read or its window elapsed: nothing to tell
                else:
                    outcome = self._retry_later(wid, news, final, err)
            except Exception as err:
                outcome = self._retry_later(wid, news, final, err)
        if self._metrics is not None:
            self._metrics.lifecycle_signal(outcome)

    def _retry_later(self, wid: str, news: _LifecycleNews, final: bool, err: Exception) -> str:
        news.attempts += 1
        if final or news.attempts >= SIGNAL_ATTEMPTS:
            log.warning("gave up telling lifecycle %s of its receipts: %s", wid, _reason(err))
            return "dropped"
        later = self._news.get(wid)
        if later is not None:  # newer news arrived meanwhile: it goes with that signal
            _merge(later, news)
            return "retried"
        news.due = time.monotonic() + min(2.0**news.attempts, 10.0)
        self._news[wid] = news
        self._news_wake.set()
        return "retried"


def _reason(err: BaseException) -> str:
    text = str(getattr(err, "orig", None) or err).splitlines()
    return f"{type(err).__name__}: {text[0][:200] if text else ''}"


def _merge(into: _LifecycleNews, news: _LifecycleNews) -> None:
    """Counts only grow; a recipient's read wins over their delivered."""
    into.recipient_count = max(into.recipient_count, news.recipient_count)
    into.delivered_count = max(into.delivered_count, news.delivered_count)
    into.read_count = max(into.read_count, news.read_count)
    for rid, receipt in news.recipients.items():
        known = into.recipients.get(rid)
        if known is None or (
            known.status is not ReceiptStatus.READ and receipt.status is ReceiptStatus.READ
        ):
            into.recipients[rid] = receipt
