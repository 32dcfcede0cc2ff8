"""Notification activities: the log's steps for the workflows, and one send activity per channel."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from temporalio import activity
from temporalio.client import Client

from activities.errors import translate_errors
from missive.broadcast import (
    Emitter,
    emit_many,
    notification_new_event,
    notification_unread_event,
)
from missive.constants import (
    EVENT_NOTIFICATION_NEW,
    EVENT_NOTIFICATION_UNREAD,
    NOTIFY_DIGEST_SIGNAL,
    NOTIFY_DIGEST_WORKFLOW,
    notify_digest_workflow_id,
    user_room,
)
from missive.errors import InvalidInput, PermanentError
from missive.metrics import Metrics
from missive.notify.content import in_app_title
from missive.pubsub import Emit
from missive.schemas import (
    DIGEST_CHANNELS,
    Channel,
    DigestItems,
    DispatchDueInput,
    DispatchDueResult,
    FallBackInput,
    FallBackResult,
    NotificationDigestInput,
    PlanNotificationsInput,
    PlanNotificationsResult,
    PrepareDigestInput,
    PrepareDigestResult,
    QueueDigestsInput,
    QueueDigestsResult,
    SendNotificationsInput,
    SendNotificationsResult,
    SettleNotificationsInput,
    SettleNotificationsResult,
)

if TYPE_CHECKING:  # kept light: workflows import this module for the activity signatures
    from missive.notify.dispatch import ChannelSenders
    from missive.notify.log import InAppNotice, NotificationLog, ReaderWatermark

log = logging.getLogger("missive.notify")


class NotifyActivities:
    """The notification log's steps, run by NotifyMessageWorkflow, the digests and receipts."""

    def __init__(
        self,
        log: NotificationLog,
        *,
        client: Client | None = None,
        emitter: Emitter | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        """Keeps the log and what the activities talk to.

        Args:
            log: The notification log.
            client: Temporal client for queue_digests; None: the running activity's own.
            emitter: Emits in-app events to user rooms; None: no real-time events.
            metrics: Counts in-app notifications and emitted events, if given.
        """
        self._log = log
        self._client = client
        self._emitter = emitter
        self._metrics = metrics

    @activity.defn
    @translate_errors
    async def plan_notifications(self, input: PlanNotificationsInput) -> PlanNotificationsResult:
        """Writes a message's agenda: one row per recipient and channel (rerun: same rows).

        What is due at once (the in-app step) is dispatched here too, so a send
        costs its lifecycle one local activity for notifications, not two.
        """
        return await self.plan(input)

    async def plan(self, input: PlanNotificationsInput) -> PlanNotificationsResult:
        """plan_notifications' work, for the broadcast to run in the same activity."""
        planned, notices = await self._log.plan(input)
        await self._announce(notices)
        if planned.next_due is None or planned.next_due > input.now:
            return planned
        # The agenda's first dispatch: every queued row nobody claimed is a lost one's.
        dispatched = await self._dispatch(
            DispatchDueInput(
                message_id=input.message.message_id,
                options=input.message.options,
                now=input.now,
                handed_out_at=[],
            )
        )
        return dataclasses.replace(planned, next_due=dispatched.next_due, dispatched=dispatched)

    @activity.defn
    @translate_errors
    async def dispatch_due(self, input: DispatchDueInput) -> DispatchDueResult:
        """Moves a message's due rows on and emits ``notification:new`` for in-app rows."""
        return await self._dispatch(input)

    async def _dispatch(self, input: DispatchDueInput) -> DispatchDueResult:
        result, notices = await self._log.dispatch_due(input)
        await self._announce(notices)
        return result

    async def _announce(self, notices: list[InAppNotice]) -> None:
        """Emits the in-app notifications just created and counts them."""
        await self._emit_notices(notices)
        if self._metrics is not None:
            self._metrics.notification(str(Channel.IN_APP), "sent", len(notices))

    @activity.defn
    @translate_errors
    async def fall_back(self, input: FallBackInput) -> FallBackResult:
        """Moves rows whose channel stayed down to the recipient's next allowed channel."""
        result = await self._log.fall_back(input)
        if self._metrics is not None:
            self._metrics.notification(str(input.channel), "fell_back", result.fell_back)
        return result

    @activity.defn
    @translate_errors
    async def prepare_digest(self, input: PrepareDigestInput) -> PrepareDigestResult:
        """Folds a recipient's gathered rows into one digest row (or says why not now)."""
        return await self._log.prepare_digest(input)

    @activity.defn
    @translate_errors
    async def queue_digests(self, input: QueueDigestsInput) -> QueueDigestsResult:
        """Signal-with-starts one digest workflow per (channel, recipient) with its rows.

        A running digest gets the rows as a signal; otherwise one starts with them.
        A retry signals the same rows again: the digest ignores rows it holds.

        Raises:
            InvalidInput: an item's channel has no digest (only email and SMS do).
        """
        groups: dict[tuple[Channel, str], list[str]] = {}
        for item in input.items:
            channel = Channel(item.channel)
            if channel not in DIGEST_CHANNELS:
                raise InvalidInput(
                    f"channel {channel} has no digest (notification {item.notification_id})"
                )
            ids = groups.setdefault((channel, item.recipient_id), [])
            if item.notification_id not in ids:
                ids.append(item.notification_id)
        if not groups:
            return QueueDigestsResult(signalled=0)
        client = self._client if self._client is not None else activity.client()
        await asyncio.gather(
            *(
                client.start_workflow(
                    NOTIFY_DIGEST_WORKFLOW,
                    NotificationDigestInput(
                        recipient_id=recipient, channel=channel, options=input.options
                    ),
                    id=notify_digest_workflow_id(str(channel), recipient),
                    task_queue=input.options.task_queue,
                    start_signal=NOTIFY_DIGEST_SIGNAL,
                    start_signal_args=[DigestItems(notification_ids=ids)],
                )
                for (channel, recipient), ids in groups.items()
            )
        )
        return QueueDigestsResult(signalled=len(groups))

    @activity.defn
    @translate_errors
    async def settle_notifications(
        self, input: SettleNotificationsInput
    ) -> SettleNotificationsResult:
        """A receipt moved the reader's watermark: cancel, mark read, find pushes to clear.

        Emits ``notification:unread`` with the reader's new count when in-app
        rows were marked read (its event_id names the watermark, so a retry repeats it).
        """
        # A retry may follow an attempt that committed: it counts that attempt's rows.
        result, unread = await self._log.settle(input, rerun=activity.info().attempt > 1)
        if unread is not None and self._emitter is not None:
            await self._emit(
                EVENT_NOTIFICATION_UNREAD,
                notification_unread_event(
                    user_id=input.user_id,
                    conversation_id=input.conversation_id,
                    up_to_seq=input.up_to_seq,
                    unread_count=unread,
                ),
                room=user_room(input.user_id),
            )
        return result

    async def settle_watermarks(
        self, watermarks: Sequence[ReaderWatermark], *, now: datetime, rerun: bool = False
    ) -> list[str]:
        """settle_notifications for a whole receipt batch (the gateway's batcher).

        Not an activity: the batcher applies receipts outside any workflow and
        retries this as a whole with the same ``now`` and ``rerun`` set (idempotent
        for the same ``now``). One statement for every reader, one
        ``notification:unread`` per reader and conversation whose in-app rows were
        read.

        Returns:
            The ids of pushes already shown that should now be cleared.
        """
        settled = await self._log.settle_many(watermarks, now=now, rerun=rerun)
        read_up_to = {(w.user_id, w.conversation_id): w.read_seq for w in watermarks}
        emits = [
            Emit(
                EVENT_NOTIFICATION_UNREAD,
                notification_unread_event(
                    user_id=uid,
                    conversation_id=cid,
                    up_to_seq=read_up_to[(uid, cid)],
                    unread_count=settled.unread_counts.get(uid, 0),
                ),
                user_room(uid),
            )
            for uid, cid in settled.in_app_read
        ]
        if emits and self._emitter is not None:
            try:
                await emit_many(self._emitter, emits)
            except Exception as err:
                log.warning(
                    "%d %s events not emitted: %s", len(emits), EVENT_NOTIFICATION_UNREAD, err
                )
        return settled.clear_push_ids

    async def _emit_notices(self, notices: list[InAppNotice]) -> None:
        """One ``notification:new`` per recipient, published as batches (a 2,000-member
        group is 2,000 rooms: a few publishes, not 2,000); a failure is logged, not raised
        (see _emit)."""
        if self._emitter is None or not notices:
            return
        emits = [
            Emit(
                EVENT_NOTIFICATION_NEW,
                notification_new_event(
                    notification_id=notice.notification_id,
                    conversation_id=notice.message.conversation_id,
                    message_id=notice.message.message_id,
                    title=in_app_title(notice.message),
                    unread_count=notice.unread_count,
                ),
                user_room(notice.recipient_id),
            )
            for notice in notices
        ]
        try:
            await emit_many(self._emitter, emits)
        except Exception as err:
            log.warning(
                "%d %s events not emitted: %s: %s",
                len(emits),
                EVENT_NOTIFICATION_NEW,
                type(err).__name__,
                err,
            )
            return
        if self._metrics is not None:
            self._metrics.broadcast(EVENT_NOTIFICATION_NEW, len(emits))

    async def _emit(self, event: str, data: dict[str, object], *, room: str) -> None:
        """Emits one event; a failure is logged, not raised.

        The rows it announces are committed already, so a retry of the activity
        would find nothing to announce: the client reads its unread count on
        (re)connect instead.
        """
        assert self._emitter is not None
        try:
            await self._emitter.emit(event, data, room=room)
        except Exception as err:
            log.warning("%s to %s not emitted: %s: %s", event, room, type(err).__name__, err)
            return
        if self._metrics is not None:
            self._metrics.broadcast(event)


class ChannelActivities:
    """The provider calls, each registered on its own rate-limited task queue."""

    def __init__(self, senders: ChannelSenders, *, metrics: Metrics | None = None) -> None:
        """Keeps the senders (which count outcomes themselves).

        Args:
            senders: Claims, renders, sends and records.
            metrics: Counts refused inputs, if given.
        """
        self._senders = senders
        self._metrics = metrics

    @activity.defn
    @translate_errors
    async def send_push(self, input: SendNotificationsInput) -> SendNotificationsResult:
        """Sends push rows (one FCM message per device); unsent rows raise for a retry."""
        return await self._refusals("send_push", self._senders.send_push(input.notification_ids))

    @activity.defn
    @translate_errors
    async def send_email(self, input: SendNotificationsInput) -> SendNotificationsResult:
        """Sends email rows (notifications or digests); unsent rows raise for a retry."""
        return await self._refusals("send_email", self._senders.send_email(input.notification_ids))

    @activity.defn
    @translate_errors
    async def send_sms(self, input: SendNotificationsInput) -> SendNotificationsResult:
        """Sends SMS rows (digests); unsent rows raise for a retry."""
        return await self._refusals("send_sms", self._senders.send_sms(input.notification_ids))

    @activity.defn
    @translate_errors
    async def clear_pushes(self, input: SendNotificationsInput) -> SendNotificationsResult:
        """Clears pushes already shown for messages the reader has now read."""
        return await self._refusals(
            "clear_pushes", self._senders.clear_pushes(input.notification_ids)
        )

    async def _refusals(
        self, name: str, call: Awaitable[SendNotificationsResult]
    ) -> SendNotificationsResult:
        try:
            return await call
        except PermanentError as err:
            if self._metrics is not None:
                self._metrics.refused(name, err)
            raise
