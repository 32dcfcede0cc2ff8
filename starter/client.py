"""MissiveClient: send messages, report receipts and read lifecycles through Temporal.

Other Python services import this instead of talking to the workflows directly.
Every method raises only domain errors (``missive.errors``): a refused request as
the ``PermanentError`` the workflow named, an unreachable or silent Temporal as
``ProviderUnavailable``.
"""

from __future__ import annotations

import asyncio
import hmac
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Self

from temporalio.client import (
    Client,
    RPCTimeoutOrCancelledError,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowQueryFailedError,
    WorkflowUpdateFailedError,
)
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

import missive.errors
from missive.config import Settings
from missive.constants import (
    MESSAGE_WORKFLOW_PREFIX,
    TASK_QUEUE_MESSAGES,
    message_id_for,
    message_workflow_id,
    receipt_workflow_id,
)
from missive.errors import (
    DuplicateClientMessageId,
    InvalidInput,
    MessageNotVisible,
    MessagingError,
    PermanentError,
    ProviderUnavailable,
)
from missive.schemas import (
    MessageAccepted,
    MessageLifecycleResult,
    MessageStatus,
    ReceiptInput,
    ReceiptResult,
    ReceiptStatus,
    SendMessageInput,
)
from missive.validation import require_body, require_client_message_id, require_seq, require_uuid
from runtime.client import connect
from workflows.message_lifecycle import MessageLifecycleWorkflow
from workflows.receipts import ReceiptWorkflow

DEFAULT_TIMEOUT = timedelta(seconds=30)
"""How long a call waits for a worker to answer before raising ProviderUnavailable."""

ACCEPTED_UPDATE_ID = "accepted"
"""Every sender asks for a message's ack under this one update id: Temporal then
answers a resend with the stored outcome, even after the workflow has closed."""

SEND_MEMO_KEY = "missive_send"
"""Memo key holding a random token of the send that started a lifecycle workflow,
so a later send can tell "I started it" from "I joined an earlier send"."""

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
    created_at: datetime | None
    """When the server stored it. None only when an earlier send's workflow has
    closed without any ack recorded (its sender never asked for one)."""
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
) -> SendMessageInput:
    """Checks a send's shape and builds the lifecycle input (ids in canonical form).

    Raises:
        InvalidInput: naming the bad field.
    """
    conversation = require_uuid(conversation_id, "conversation_id")
    sender = require_uuid(sender_id, "sender_id")
    cmid = require_client_message_id(client_message_id)
    require_body(body, max_bytes=settings.max_body_bytes)
    return SendMessageInput(
        conversation_id=conversation,
        sender_id=sender,
        client_message_id=cmid,
        body=body,
        max_body_bytes=settings.max_body_bytes,
        lifecycle_window_seconds=settings.lifecycle_window_seconds,
        receipt_detail_max_recipients=settings.receipt_detail_max_recipients,
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
    )


def lifecycle_workflow_id(message_id: str) -> str:
    """The lifecycle workflow id of a message named by its server id."""
    return f"{MESSAGE_WORKFLOW_PREFIX}-{require_uuid(message_id, 'message_id')}"


def to_domain_error(err: BaseException) -> MessagingError:
    """The domain error a workflow, update or activity failure stands for.

    An ApplicationError whose type names a class of ``missive.errors`` becomes that
    class with the same message; any other failure becomes a PermanentError.
    """
    cause: BaseException | None = err
    for _ in range(10):  # failure chains are short; never loop on a cycle
        if cause is None or isinstance(cause, ApplicationError):
            break
        cause = getattr(cause, "cause", None) or cause.__cause__
    if isinstance(cause, ApplicationError):
        cls = getattr(missive.errors, cause.type or "", None)
        if isinstance(cls, type) and issubclass(cls, MessagingError):
            return cls(cause.message)
        return PermanentError(cause.message)
    return PermanentError(f"{err}: {cause}" if cause is not None else str(err))


class MissiveClient:
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
        missive_client = cls(await connect(settings), settings, call_timeout=call_timeout)
        missive_client._owns_client = True
        return missive_client

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
        self, conversation_id: str, sender_id: str, client_message_id: str, body: str
    ) -> SendResult:
        """Sends a message and waits until it is stored.

        A resend with the same client_message_id and body returns the stored
        message with ``duplicate=True``, whether the first send's workflow still
        runs or has closed.

        Args:
            conversation_id: The conversation (UUID).
            sender_id: The sending user (UUID); must take part in the conversation.
            client_message_id: The sender's own id for this message (1-128 characters).
            body: The text; it travels encrypted and is stored encrypted.

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
        )
        workflow_id = message_workflow_id(input.sender_id, input.client_message_id)
        token = uuid.uuid4().hex
        async with self._answer_within(
            f"message {workflow_id} is queued and is stored once a worker runs; "
            "send it again with the same client_message_id for its ack"
        ):
            try:
                handle = await self.temporal.start_workflow(
                    MessageLifecycleWorkflow.run,
                    input,
                    id=workflow_id,
                    task_queue=TASK_QUEUE_MESSAGES,
                    id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                    id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                    memo={SEND_MEMO_KEY: token},
                )
            except WorkflowAlreadyStartedError as err:
                # An earlier send's workflow has closed; it still holds the answer.
                handle = self.temporal.get_workflow_handle_for(
                    MessageLifecycleWorkflow.run, workflow_id, run_id=err.run_id
                )
            joined = False
            if _started_new_run(handle) is not True:
                # Joined a running or closed earlier send, or could not tell: the
                # run's own input and memo say whether it is ours and the same message.
                earlier, earlier_token = await self._first_send(handle)
                joined = earlier_token != token
                if joined:
                    _require_same_message(input, earlier)
            accepted = await self._accepted(handle)
        if accepted is None:
            result = await self._closed_result(handle)
            return SendResult(
                message_id=result.message_id,
                conversation_id=input.conversation_id,
                seq=result.seq,
                created_at=None,
                duplicate=True,
            )
        return SendResult(
            message_id=accepted.message_id,
            conversation_id=accepted.conversation_id,
            seq=accepted.seq,
            created_at=accepted.created_at,
            duplicate=accepted.duplicate or joined,
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
            try:
                return await self.temporal.execute_workflow(
                    ReceiptWorkflow.run,
                    input,
                    id=workflow_id,
                    task_queue=TASK_QUEUE_MESSAGES,
                    id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                    id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
                )
            except WorkflowFailureError as err:
                raise to_domain_error(err) from None

    async def _first_send(
        self, handle: WorkflowHandle[Any, Any]
    ) -> tuple[SendMessageInput, str | None]:
        """The input the workflow was started with, and the starting send's token."""
        converter = self.temporal.data_converter
        async for event in handle.fetch_history_events(page_size=1):
            attrs = event.workflow_execution_started_event_attributes
            [earlier] = await converter.decode(attrs.input.payloads, [SendMessageInput])
            token = None
            if SEND_MEMO_KEY in attrs.memo.fields:
                [token] = await converter.decode([attrs.memo.fields[SEND_MEMO_KEY]], [str])
            return earlier, token
        raise MessageNotVisible(f"workflow {handle.id} has no history")

    async def _accepted(
        self, handle: WorkflowHandle[MessageLifecycleWorkflow, MessageLifecycleResult]
    ) -> MessageAccepted | None:
        """The ack, or None when the workflow closed before anyone asked for it."""
        try:
            return await handle.execute_update(
                MessageLifecycleWorkflow.accepted, id=ACCEPTED_UPDATE_ID
            )
        except WorkflowUpdateFailedError as err:
            raise to_domain_error(err) from None
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                return None  # "workflow execution already completed"
            raise

    async def _closed_result(
        self, handle: WorkflowHandle[MessageLifecycleWorkflow, MessageLifecycleResult]
    ) -> MessageLifecycleResult:
        async with self._answer_within(f"reading the result of {handle.id}"):
            try:
                return await handle.result()
            except WorkflowFailureError as err:
                raise to_domain_error(err) from None

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


def _started_new_run(handle: WorkflowHandle[Any, Any]) -> bool | None:
    """Whether start_workflow started a new run; None when the SDK does not say.

    The SDK keeps the server's answer on the handle without exposing it publicly;
    when it is missing, the caller reads the run's first event instead.
    """
    started = getattr(getattr(handle, "_start_workflow_response", None), "started", None)
    return started if isinstance(started, bool) else None


def _require_same_message(input: SendMessageInput, earlier: SendMessageInput) -> None:
    """A send that joined an earlier one must repeat it exactly."""
    message_id = message_id_for(input.sender_id, input.client_message_id)
    same_body = hmac.compare_digest(earlier.body.encode(), input.body.encode())
    if earlier.conversation_id != input.conversation_id or not same_body:
        raise DuplicateClientMessageId(
            f"client_message_id {input.client_message_id!r} of user {input.sender_id} was "
            f"already used for a different message ({message_id}); it is not overwritten"
        )
