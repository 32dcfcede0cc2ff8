"""Message events: ``message:send``, ``message:search``, and the delivered / read receipts."""

from __future__ import annotations

import asyncio
import functools
from datetime import timedelta

from gateway.acks import Ack, Handler, require_object
from gateway.context import Context
from gateway.search import parse_search_request, result_json
from missive.constants import (
    EVENT_MESSAGE_DELIVERED,
    EVENT_MESSAGE_READ,
    EVENT_MESSAGE_SEARCH,
    EVENT_MESSAGE_SEND,
)
from missive.e2e import require_e2e_header
from missive.errors import InvalidInput, PermanentError, ProviderUnavailable
from missive.notify.options import send_notify_options
from missive.schemas import (
    MessageAccepted,
    PersistMessageInput,
    PersistMessageResult,
    ReceiptStatus,
    SendMessageInput,
)
from missive.services.receipts import Watermark
from missive.validation import (
    require_body,
    require_client_message_id,
    require_mentions,
    require_seq,
    require_uuid,
)
from runtime.messaging import send_message, with_request_id
from runtime.search_attributes import KIND_MESSAGE, start_attributes


class LocalAcks:
    """Acks for sends whose lifecycle stores the message in this very process.

    A lifecycle started eagerly runs its first workflow task on this process's
    worker, where the persist activity tells this registry the outcome: the
    sender is acked then, without a second round trip (the ``accepted`` update)
    through Temporal. A send whose task ran elsewhere, or a resend that joined
    a running lifecycle, hears nothing here and asks the workflow instead.
    """

    def __init__(self) -> None:
        self._waiting: dict[str, asyncio.Future[MessageAccepted]] = {}

    def expect(self, request_id: str) -> asyncio.Future[MessageAccepted]:
        """A future for the outcome of the send with this request id."""
        future = self._waiting[request_id] = asyncio.get_running_loop().create_future()
        return future

    def forget(self, request_id: str) -> None:
        """Stops waiting for a send (its ack was answered one way or another)."""
        future = self._waiting.pop(request_id, None)
        if future is not None and future.done() and not future.cancelled():
            future.exception()  # retrieved: no "never retrieved" warning

    def __call__(
        self, input: PersistMessageInput, outcome: PersistMessageResult | PermanentError
    ) -> None:
        future = self._waiting.get(input.request_id) if input.request_id else None
        if future is None or future.done():
            return
        if isinstance(outcome, PermanentError):
            future.set_exception(outcome)
            return
        future.set_result(
            MessageAccepted(
                message_id=outcome.message_id,
                conversation_id=outcome.conversation_id,
                seq=outcome.seq,
                created_at=outcome.created_at,
                duplicate=not outcome.created,
            )
        )


class MessageEvents:
    """Sending, searching and acknowledging messages."""

    def __init__(self, gateway: Context, acks: LocalAcks) -> None:
        self._gateway = gateway
        self._settings = gateway.settings
        self._acks = acks
        self._notify = send_notify_options(gateway.settings)  # settings never change

    def handlers(self) -> dict[str, Handler]:
        """The events this class answers, by name."""
        return {
            EVENT_MESSAGE_SEND: self._gateway.admission.in_order(self.send),
            EVENT_MESSAGE_SEARCH: self.search,
            EVENT_MESSAGE_DELIVERED: functools.partial(
                self.receipt, status=ReceiptStatus.DELIVERED
            ),
            EVENT_MESSAGE_READ: functools.partial(self.receipt, status=ReceiptStatus.READ),
        }

    async def send(self, sid: str, data: object) -> Ack:
        """``message:send``: starts (or joins) the message's lifecycle, acks when stored.

        Registered through ``Admission.in_order``: a socket's sends are stored in the
        order they came, each checked and admitted at once, then started once the ones
        before it have their acks.
        """
        user_id = await self._gateway.user_of(sid)
        payload = require_object(data)
        conversation_id = require_uuid(payload.get("conversation_id"), "conversation_id")
        client_message_id = require_client_message_id(payload.get("client_message_id"))
        body = payload.get("body")
        require_body(body, max_bytes=self._settings.max_body_bytes)
        assert isinstance(body, str)  # require_body checked it
        raw_header = payload.get("e2e_header")
        e2e_header = require_e2e_header(raw_header) if raw_header is not None else None
        mentions = require_mentions(payload.get("mentions"))
        send = with_request_id(
            SendMessageInput(
                conversation_id=conversation_id,
                sender_id=user_id,
                client_message_id=client_message_id,
                body=body,
                max_body_bytes=self._settings.max_body_bytes,
                lifecycle_window_seconds=self._settings.lifecycle_window_seconds,
                receipt_detail_max_recipients=self._settings.receipt_detail_max_recipients,
                e2e_header=e2e_header,
                mentions=mentions,
                notify=self._notify,
            )
        )
        admission = self._gateway.admission
        async with admission.admit(sid, user_id):
            return await self._start(send)

    async def _start(self, send: SendMessageInput) -> Ack:
        client = self._gateway.services().client
        assert send.request_id is not None  # with_request_id gave it one
        local_ack = self._acks.expect(send.request_id)
        try:
            accepted = await self._gateway.admission.temporal_call(
                send_message(
                    client,
                    send,
                    eager=True,
                    local_ack=local_ack,
                    rpc_timeout=timedelta(seconds=self._settings.gateway_ack_timeout_seconds),
                    search_attributes=start_attributes(
                        self._settings, KIND_MESSAGE, conversation_id=send.conversation_id
                    ),
                )
            )
        finally:
            self._acks.forget(send.request_id)
        return {
            "ok": True,
            "message_id": accepted.message_id,
            "seq": accepted.seq,
            "created_at": accepted.created_at.isoformat(),
            "duplicate": accepted.duplicate,
        }

    async def search(self, sid: str, data: object) -> Ack:
        """``message:search``: the user's own conversations only (a scoped Typesense key)."""
        user_id = await self._gateway.user_of(sid)
        query = parse_search_request(data)
        search = self._gateway.services().search
        if search is None:
            raise ProviderUnavailable("search is not configured on this gateway (TYPESENSE_URL)")
        return {"ok": True, **result_json(await search.search(user_id, query))}

    async def receipt(self, sid: str, data: object, *, status: ReceiptStatus) -> Ack:
        """``message:delivered`` / ``message:read``: a watermark, acked once its batch committed.

        No workflow per receipt: the process's ReceiptBatcher applies every receipt
        of a short window in one statement (runtime/receipt_batcher.py).
        """
        user_id = await self._gateway.user_of(sid)
        payload = require_object(data)
        conversation_id = require_uuid(payload.get("conversation_id"), "conversation_id")
        raw_seq, raw_message_id = payload.get("up_to_seq"), payload.get("message_id")
        if (raw_seq is None) == (raw_message_id is None):
            raise InvalidInput("give exactly one of up_to_seq and message_id")
        up_to_seq = require_seq(raw_seq) if raw_seq is not None else None
        message_id = require_uuid(raw_message_id, "message_id") if up_to_seq is None else None
        applied = await self._gateway.services().receipts.submit(
            Watermark(
                user_id=user_id,
                conversation_id=conversation_id,
                status=status,
                up_to_seq=up_to_seq,
                message_id=message_id,
            )
        )
        return {"ok": True, "changed": applied.changed, "up_to_seq": applied.up_to_seq}
