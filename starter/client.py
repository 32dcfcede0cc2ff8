"""MissiveClient: send messages, report receipts and read lifecycles through Temporal.

Other Python services import this instead of talking to the workflows directly.
Every method raises only domain errors (``missive.errors``): a refused request as
the ``PermanentError`` the workflow named, an unreachable or silent Temporal as
``ProviderUnavailable``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Self

from temporalio.client import (
    Client,
    RPCTimeoutOrCancelledError,
    WorkflowQueryFailedError,
)
from temporalio.service import RPCError, RPCStatusCode

from missive.config import Settings
from missive.constants import (
    MESSAGE_WORKFLOW_PREFIX,
    TASK_QUEUE_MESSAGES,
    message_workflow_id,
    receipt_workflow_id,
)
from missive.e2e import require_e2e_header
from missive.errors import (
    InvalidInput,
    MessageNotVisible,
    PermanentError,
    ProviderUnavailable,
)
from missive.notify.options import send_notify_options
from missive.schemas import (
    MessageStatus,
    ReceiptInput,
    ReceiptResult,
    ReceiptStatus,
    SearchQuery,
    SearchResult,
    SendMessageInput,
)
from missive.validation import require_body, require_client_message_id, require_seq, require_uuid
from runtime.client import connect
from runtime.messaging import apply_receipt, send_message, with_request_id
from runtime.search_attributes import KIND_MESSAGE, KIND_RECEIPT, start_attributes
from runtime.telemetry import tracing_interceptors
from starter.provisioning import Provisioning
from starter.search import search_messages
from workflows.message_lifecycle import MessageLifecycleWorkflow

DEFAULT_TIMEOUT = timedelta(seconds=30)
"""How long a call waits for a worker to answer before raising ProviderUnavailable."""

MAX_TIMEOUT = timedelta(days=1)
"""The longest call timeout a command takes."""


def timeout_option(seconds: float) -> timedelta:
    """A command's ``--timeout`` as a call timeout.

    Raises:
        InvalidInput: not more than 0 and at most MAX_TIMEOUT (NaN included).
    """
    most = MAX_TIMEOUT.total_seconds()
    if not 0 < seconds <= most:
        raise InvalidInput(
            f"--timeout must be more than 0 and at most {most:g} seconds, got {seconds:g}"
        )
    return timedelta(seconds=seconds)


_TRANSIENT_RPC = frozenset(
    {
        RPCStatusCode.UNAVAILABLE,
        RPCStatusCode.DEADLINE_EXCEEDED,
        RPCStatusCode.RESOURCE_EXHAUSTED,
        RPCStatusCode.ABORTED,
        RPCStatusCode.CANCELLED,
    }
)


@dataclass(frozen=True)
class SendResult:
    """What a send was acked with."""

    message_id: str
    """Server id (deterministic from sender and client_message_id)."""
    conversation_id: str
    """The conversation."""
    seq: int
    """Position of the message in its conversation."""
    created_at: datetime
    """When the server stored it."""
    duplicate: bool = False
    """True when an earlier send with the same client_message_id and body made
    the message; nothing new was stored."""


def send_input(
    settings: Settings,
    *,
    conversation_id: str,
    sender_id: str,
    client_message_id: str,
    body: str,
    e2e_header: dict[str, Any] | None = None,
) -> SendMessageInput:
    """Checks a send's shape and builds the lifecycle input (ids in canonical form).

    Raises:
        InvalidInput: naming the bad field.
    """
    conversation = require_uuid(conversation_id, "conversation_id")
    sender = require_uuid(sender_id, "sender_id")
    cmid = require_client_message_id(client_message_id)
    require_body(body, max_bytes=settings.max_body_bytes)
    header = require_e2e_header(e2e_header) if e2e_header is not None else None
    return SendMessageInput(
        conversation_id=conversation,
        sender_id=sender,
        client_message_id=cmid,
        body=body,
        max_body_bytes=settings.max_body_bytes,
        lifecycle_window_seconds=settings.lifecycle_window_seconds,
        receipt_detail_max_recipients=settings.receipt_detail_max_recipients,
        e2e_header=header,
        notify=send_notify_options(settings),
    )


def receipt_input(
    settings: Settings,
    *,
    user_id: str,
    conversation_id: str,
    status: ReceiptStatus,
    up_to_seq: int | None = None,
    message_id: str | None = None,
) -> ReceiptInput:
    """Checks a receipt's shape and builds the receipt workflow's input.

    Raises:
        InvalidInput: naming the bad field, or not exactly one of up_to_seq and message_id.
    """
    user = require_uuid(user_id, "user_id")
    conversation = require_uuid(conversation_id, "conversation_id")
    if (up_to_seq is None) == (message_id is None):
        raise InvalidInput("give exactly one of up_to_seq and message_id")
    return ReceiptInput(
        user_id=user,
        conversation_id=conversation,
        status=ReceiptStatus(status),
        up_to_seq=require_seq(up_to_seq) if up_to_seq is not None else None,
        message_id=require_uuid(message_id, "message_id") if message_id is not None else None,
        lifecycle_window_seconds=settings.lifecycle_window_seconds,
        receipt_detail_max_recipients=settings.receipt_detail_max_recipients,
        notify=send_notify_options(settings),
    )


def lifecycle_workflow_id(message_id: str) -> str:
    """The lifecycle workflow id of a message named by its server id."""
    return f"{MESSAGE_WORKFLOW_PREFIX}-{require_uuid(message_id, 'message_id')}"


class MissiveClient(Provisioning):
    """Sends messages, reports receipts and reads message lifecycles.

    Build it over an existing Temporal client (which its creator keeps and
    closes), or let :meth:`connect` create one that ``async with`` releases::

        async with await MissiveClient.connect(settings) as missive:
            sent = await missive.send(conversation_id, sender_id, "c-1", "hello")
    """

    def __init__(
        self, client: Client, settings: Settings, *, call_timeout: timedelta = DEFAULT_TIMEOUT
    ) -> None:
        """Wraps a connected Temporal client.

        Args:
            client: A client using the project's data converter
                (``runtime.client.data_converter``), or bodies go out unencrypted.
            settings: Limits and windows passed to the workflows.
            call_timeout: How long one call waits for a worker's answer.
        """
        self._client: Client | None = client
        self._settings = settings
        self._timeout = call_timeout
        self._owns_client = False

    @classmethod
    async def connect(
        cls, settings: Settings, *, call_timeout: timedelta = DEFAULT_TIMEOUT
    ) -> MissiveClient:
        """Connects to Temporal at ``settings.temporal_address``.

        Raises:
            ProviderUnavailable: Temporal did not answer (the message names the address).
        """
        temporal = await connect(
            settings, interceptors=tracing_interceptors(settings, service="missive-starter")
        )
        missive_client = cls(temporal, settings, call_timeout=call_timeout)
        missive_client._owns_client = True
        return missive_client

    @property
    def settings(self) -> Settings:
        """The settings the client was built with."""
        return self._settings

    @property
    def call_timeout(self) -> timedelta:
        """How long one call waits for an answer."""
        return self._timeout

    @property
    def temporal(self) -> Client:
        """The underlying Temporal client."""
        if self._client is None:
            raise RuntimeError("MissiveClient is closed")
        return self._client

    async def close(self) -> None:
        """Releases the Temporal client if this object created it.

        The SDK has no explicit close: dropping the last reference closes the
        connection. A client passed in stays open for its owner.
        """
        if self._owns_client:
            self._client = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def send(
        self,
        conversation_id: str,
        sender_id: str,
        client_message_id: str,
        body: str,
        *,
        e2e_header: dict[str, Any] | None = None,
    ) -> SendResult:
        """Sends a message and waits until it is stored.

        A resend with the same client_message_id and body returns the stored
        message with ``duplicate=True``, whether the first send's workflow still
        runs or has closed.

        Args:
            conversation_id: The conversation (UUID).
            sender_id: The sending user (UUID); must take part in the conversation.
            client_message_id: The sender's own id for this message (1-128 characters).
            body: The text; it travels encrypted and is stored encrypted. In an
                end-to-end encrypted conversation: the client's ciphertext, base64.
            e2e_header: End-to-end encrypted conversations only (required there):
                the key metadata, stored and relayed untouched.

        Raises:
            InvalidInput: a malformed field (nothing is started).
            DuplicateClientMessageId: the client_message_id was used for another body.
            NotAMember, ConversationNotFound, ...: the workflow refused the message.
            ProviderUnavailable: Temporal or the workers did not answer in time.
        """
        input = send_input(
            self._settings,
            conversation_id=conversation_id,
            sender_id=sender_id,
            client_message_id=client_message_id,
            body=body,
            e2e_header=e2e_header,
        )
        input = with_request_id(input)
        workflow_id = message_workflow_id(input.sender_id, input.client_message_id)
        async with self._answer_within(
            f"message {workflow_id} is queued and is stored once a worker runs; "
            "send it again with the same client_message_id for its ack"
        ):
            accepted = await send_message(
                self.temporal,
                input,
                search_attributes=start_attributes(
                    self._settings, KIND_MESSAGE, conversation_id=input.conversation_id
                ),
            )
        return SendResult(
            message_id=accepted.message_id,
            conversation_id=accepted.conversation_id,
            seq=accepted.seq,
            created_at=accepted.created_at,
            duplicate=accepted.duplicate,
        )

    async def mark_delivered(
        self,
        user_id: str,
        conversation_id: str,
        *,
        up_to_seq: int | None = None,
        message_id: str | None = None,
    ) -> ReceiptResult:
        """Reports that ``user_id`` received every message up to a watermark.

        Args:
            user_id: The recipient reporting it.
            conversation_id: The conversation.
            up_to_seq: The watermark as a sequence number, or
            message_id: the watermark as a message (exactly one of the two).

        Raises:
            InvalidInput: a malformed field, or not exactly one watermark.
            NotAMember, ConversationNotFound, MessageNotVisible: refused.
            ProviderUnavailable: Temporal or the workers did not answer in time.
        """
        return await self._receipt(
            ReceiptStatus.DELIVERED, user_id, conversation_id, up_to_seq, message_id
        )

    async def mark_read(
        self,
        user_id: str,
        conversation_id: str,
        *,
        up_to_seq: int | None = None,
        message_id: str | None = None,
    ) -> ReceiptResult:
        """Reports that ``user_id`` read every message up to a watermark (read implies delivered).

        Args:
            user_id: The recipient reporting it.
            conversation_id: The conversation.
            up_to_seq: The watermark as a sequence number, or
            message_id: the watermark as a message (exactly one of the two).

        Raises:
            InvalidInput: a malformed field, or not exactly one watermark.
            NotAMember, ConversationNotFound, MessageNotVisible: refused.
            ProviderUnavailable: Temporal or the workers did not answer in time.
        """
        return await self._receipt(
            ReceiptStatus.READ, user_id, conversation_id, up_to_seq, message_id
        )

    async def search(self, user_id: str, query: SearchQuery) -> SearchResult:
        """Searches the messages of the conversations ``user_id`` takes part in.

        A worker issues a short-lived Typesense key scoped to those conversations
        (SearchKeyWorkflow); the query then goes to TYPESENSE_URL with that key.

        Raises:
            InvalidInput: an empty or too long query, a bad filter value or page.
            NotAMember: a conversation filter the user does not take part in.
            ProviderUnavailable: Temporal, the workers or Typesense did not answer.
        """
        async with self._answer_within(f"search by user {user_id}"):
            return await search_messages(self.temporal, self._settings, user_id, query)

    async def status(self, sender_id: str, client_message_id: str) -> MessageStatus:
        """Where a message's lifecycle is, named by its sender's client_message_id.

        Args:
            sender_id: The user who sent it.
            client_message_id: The sender's id for it.

        Raises:
            InvalidInput: a malformed field.
            MessageNotVisible: no such lifecycle (unknown, or its history was deleted).
            ProviderUnavailable: Temporal or the workers did not answer in time.
        """
        sender = require_uuid(sender_id, "sender_id")
        cmid = require_client_message_id(client_message_id)
        return await self._query_status(message_workflow_id(sender, cmid))

    async def status_by_message_id(self, message_id: str) -> MessageStatus:
        """Where a message's lifecycle is, named by its server id.

        Raises:
            InvalidInput: a malformed message id.
            MessageNotVisible: no such lifecycle (unknown, or its history was deleted).
            ProviderUnavailable: Temporal or the workers did not answer in time.
        """
        return await self._query_status(lifecycle_workflow_id(message_id))

    async def _receipt(
        self,
        status: ReceiptStatus,
        user_id: str,
        conversation_id: str,
        up_to_seq: int | None,
        message_id: str | None,
    ) -> ReceiptResult:
        input = receipt_input(
            self._settings,
            user_id=user_id,
            conversation_id=conversation_id,
            status=status,
            up_to_seq=up_to_seq,
            message_id=message_id,
        )
        up_to = str(input.up_to_seq) if input.up_to_seq is not None else str(input.message_id)
        workflow_id = receipt_workflow_id(
            input.user_id, input.conversation_id, input.status.value, up_to
        )
        async with self._answer_within(f"receipt {workflow_id} is queued"):
            return await apply_receipt(
                self.temporal,
                input,
                search_attributes=start_attributes(
                    self._settings, KIND_RECEIPT, conversation_id=input.conversation_id
                ),
            )

    async def _query_status(self, workflow_id: str) -> MessageStatus:
        handle = self.temporal.get_workflow_handle_for(MessageLifecycleWorkflow.run, workflow_id)
        async with self._answer_within(f"status of {workflow_id}"):
            try:
                return await handle.query(MessageLifecycleWorkflow.status)
            except RPCError as err:
                if err.status != RPCStatusCode.NOT_FOUND:
                    raise
                raise MessageNotVisible(
                    f"no message lifecycle {workflow_id}: unknown message, or its history "
                    "is past retention"
                ) from None
            except WorkflowQueryFailedError as err:
                raise PermanentError(
                    f"status query on {workflow_id} failed: {err.message}"
                ) from None

    @asynccontextmanager
    async def _answer_within(self, what: str) -> AsyncIterator[None]:
        """Bounds a call by the timeout; Temporal errors leave as domain errors."""
        address = self.temporal.service_client.config.target_host
        try:
            async with asyncio.timeout(self._timeout.total_seconds()):
                yield
        except (TimeoutError, RPCTimeoutOrCancelledError):
            raise ProviderUnavailable(
                f"no worker answered on task queue {TASK_QUEUE_MESSAGES} at {address} within "
                f"{self._timeout.total_seconds():g}s ({what})"
            ) from None
        except RPCError as err:
            if err.status in _TRANSIENT_RPC:
                raise ProviderUnavailable(f"Temporal at {address}: {err.message}") from None
            raise PermanentError(
                f"Temporal at {address} refused the call: {err.status.name}: {err.message}"
            ) from None
