"""Message activities: persist, broadcast, apply receipts. Each one is idempotent."""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from temporalio import activity

from activities.errors import translate_errors
from missive.broadcast import Broadcaster
from missive.constants import EVENT_MESSAGE_NEW, EVENT_MESSAGE_RECEIPT
from missive.errors import PermanentError
from missive.metrics import Metrics
from missive.schemas import (
    ApplyReceiptResult,
    BroadcastMessageInput,
    PersistMessageInput,
    PersistMessageResult,
    PlanNotificationsInput,
    PlanNotificationsResult,
    ReceiptInput,
)
from missive.services.messages import MessageService
from missive.services.receipts import ReceiptService
from missive.stored import StoredMessage

HANDOFF_SIZE = 4096
"""Messages persisted here and not yet broadcast, kept for the broadcast (see below)."""

PersistListener = Callable[[PersistMessageInput, PersistMessageResult | PermanentError], None]
"""Told of every persist outcome in this process: the gateway acks its own sends from it."""

Planner = Callable[[PlanNotificationsInput], Awaitable[PlanNotificationsResult]]
"""Plans a message's notifications (NotifyActivities.plan)."""

log = logging.getLogger("missive.messages")


class MessageActivities:
    """The I/O of a message's lifecycle, run as local activities on the hot path."""

    def __init__(
        self,
        messages: MessageService,
        receipts: ReceiptService,
        broadcaster: Broadcaster,
        *,
        persist_listener: PersistListener | None = None,
        planner: Planner | None = None,
        metrics: Metrics | None = None,
    ):
        self._messages = messages
        self._planner = planner
        self._receipts = receipts
        self._broadcaster = broadcaster
        self._persist_listener = persist_listener
        self._metrics = metrics
        # A lifecycle's persist and broadcast are local activities of one workflow
        # task, so they run in this process one after the other: the broadcast takes
        # the message persist just stored instead of reading it back (a transaction
        # saved per message). Anything else (a retry, a restart, an eviction) loads it.
        self._handoff: OrderedDict[str, StoredMessage] = OrderedDict()

    @activity.defn
    @translate_errors
    async def persist_message(self, input: PersistMessageInput) -> PersistMessageResult:
        """Stores the message and its deliveries; a rerun returns the stored row."""
        try:
            result = await self._messages.persist(input)
        except PermanentError as err:
            if self._metrics is not None:
                self._metrics.refused("persist_message", err)
            if self._persist_listener is not None:
                self._persist_listener(input, err)
            raise
        if self._metrics is not None:
            self._metrics.message_persisted(created=result.created)
        if result.created:
            self._hand_off(input, result)
        if self._persist_listener is not None:
            self._persist_listener(input, result)
        return result

    @activity.defn
    @translate_errors
    async def broadcast_message(
        self, input: BroadcastMessageInput
    ) -> PlanNotificationsResult | None:
        """Emits message:new to the conversation's room (clients dedupe by event_id).

        With ``input.plan``, then plans the message's notifications: each local
        activity costs the send path about as much as its work, so the lifecycle
        runs one here instead of two. A planning failure does not fail the
        broadcast (that would emit message:new again): it is logged and None
        returned, and the lifecycle's agenda plans with its own retry policy.
        """
        message = self._handoff.pop(input.message_id, None)
        if message is None:
            message = await self._messages.load(input.message_id)
        await self._broadcaster.message_new(message)
        if self._metrics is not None:
            self._metrics.broadcast(EVENT_MESSAGE_NEW)
        if input.plan is None or self._planner is None:
            return None
        try:
            return await self._planner(input.plan)
        except Exception as err:
            log.warning(
                "planning the notifications of message %s with its broadcast failed (%s: %s);"
                " the lifecycle plans them on its own",
                input.message_id,
                type(err).__name__,
                err,
            )
            return None

    def _hand_off(self, input: PersistMessageInput, result: PersistMessageResult) -> None:
        self._handoff[result.message_id] = StoredMessage(
            message_id=result.message_id,
            conversation_id=result.conversation_id,
            seq=result.seq,
            sender_id=input.sender_id,
            client_message_id=input.client_message_id,
            body=input.body,
            created_at=result.created_at,
            edited_at=None,
            deleted_at=None,
            e2e_header=input.e2e_header,
        )
        while len(self._handoff) > HANDOFF_SIZE:
            self._handoff.popitem(last=False)

    @activity.defn
    @translate_errors
    async def apply_receipt(self, input: ReceiptInput) -> ApplyReceiptResult:
        """Moves the reader's deliveries forward up to the watermark; a rerun changes nothing."""
        try:
            result = await self._receipts.apply(input)
        except PermanentError as err:
            if self._metrics is not None:
                self._metrics.refused("apply_receipt", err)
            raise
        if self._metrics is not None:
            self._metrics.receipt_applied(str(input.status), moved=result.changed)
        return result

    @activity.defn
    @translate_errors
    async def broadcast_receipts(self, input: ApplyReceiptResult) -> None:
        """Emits message:receipt to each sender whose message moved forward."""
        await self._broadcaster.receipts(
            conversation_id=input.conversation_id,
            recipient_id=input.user_id,
            changes=input.changes,
        )
        if self._metrics is not None:
            self._metrics.broadcast(EVENT_MESSAGE_RECEIPT, len(input.changes))
