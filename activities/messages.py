"""Message activities: persist, broadcast, apply receipts. Each one is idempotent."""

from __future__ import annotations

from collections.abc import Callable

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
    ReceiptInput,
)
from missive.services.messages import MessageService
from missive.services.receipts import ReceiptService

PersistListener = Callable[[PersistMessageInput, PersistMessageResult | PermanentError], None]
"""Told of every persist outcome in this process: the gateway acks its own sends from it."""


class MessageActivities:
    """The I/O of a message's lifecycle, run as local activities on the hot path."""

    def __init__(
        self,
        messages: MessageService,
        receipts: ReceiptService,
        broadcaster: Broadcaster,
        *,
        persist_listener: PersistListener | None = None,
        metrics: Metrics | None = None,
    ):
        self._messages = messages
        self._receipts = receipts
        self._broadcaster = broadcaster
        self._persist_listener = persist_listener
        self._metrics = metrics

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
        if self._persist_listener is not None:
            self._persist_listener(input, result)
        return result

    @activity.defn
    @translate_errors
    async def broadcast_message(self, input: BroadcastMessageInput) -> None:
        """Emits message:new to the conversation's room (clients dedupe by event_id)."""
        await self._broadcaster.message_new(await self._messages.load(input.message_id))
        if self._metrics is not None:
            self._metrics.broadcast(EVENT_MESSAGE_NEW)

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
