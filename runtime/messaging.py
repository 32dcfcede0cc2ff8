"""The send and receipt protocol over Temporal, shared by the gateway and the starter.

A send starts (or joins) the message's lifecycle and waits for its ack: from the
``accepted`` update, or, when the lifecycle already closed, from the
``acceptance`` query. Resends are recognised by workflow id, a resend with
another body by the send's fingerprint.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable
from datetime import timedelta

from temporalio.client import (
    Client,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowQueryFailedError,
    WorkflowUpdateFailedError,
)
from temporalio.common import (
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

import missive.errors
from missive.constants import TASK_QUEUE_MESSAGES, message_workflow_id, receipt_workflow_id
from missive.errors import MessagingError, PermanentError
from missive.schemas import (
    AcceptInput,
    MessageAccepted,
    MessageLifecycleResult,
    ReceiptInput,
    ReceiptResult,
    SendMessageInput,
)
from missive.validation import send_fingerprint
from workflows.message_lifecycle import MessageLifecycleWorkflow
from workflows.receipts import ReceiptWorkflow

LifecycleHandle = WorkflowHandle[MessageLifecycleWorkflow, MessageLifecycleResult]

LIFECYCLE_ID_REUSE = WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY
"""A lifecycle that completed owns its id for good: a resend is answered from it.
One that failed (a refused send) stored nothing, so the sender may try again with
the same client_message_id, say once added to the conversation."""


def domain_error(type_name: str | None, message: str) -> MessagingError:
    """The ``missive.errors`` class a failure's type names, else a PermanentError."""
    cls = getattr(missive.errors, type_name or "", None)
    if isinstance(cls, type) and issubclass(cls, MessagingError):
        return cls(message)
    return PermanentError(message)


def to_domain_error(err: BaseException) -> MessagingError:
    """The domain error a workflow or update failure stands for."""
    cause: BaseException | None = err
    for _ in range(10):  # failure chains are short; never loop on a cycle
        if cause is None or isinstance(cause, ApplicationError):
            break
        cause = getattr(cause, "cause", None) or cause.__cause__
    if isinstance(cause, ApplicationError):
        return domain_error(cause.type, cause.message)
    return PermanentError(str(err))


def with_request_id(input: SendMessageInput) -> SendMessageInput:
    """The input with a fresh request id, unless it carries one."""
    if input.request_id:
        return input
    return SendMessageInput(**{**input.__dict__, "request_id": uuid.uuid4().hex})


async def send_message(
    client: Client,
    input: SendMessageInput,
    *,
    eager: bool = False,
    local_ack: Awaitable[MessageAccepted] | None = None,
    local_ack_grace: float = 0.5,
    eager_ack_grace: float = 5.0,
    search_attributes: TypedSearchAttributes | None = None,
    rpc_timeout: timedelta | None = None,
) -> MessageAccepted:
    """Starts or joins a message's lifecycle and returns its ack.

    Args:
        client: A client with the project's data converter.
        input: The send; give it a ``request_id`` (see with_request_id).
        eager: Ask the server to hand the first workflow task to this process's
            worker (only useful where a worker on the task queue shares ``client``).
        local_ack: Resolves when this process's own worker stored the message
            (the gateway's fast path); if it does not within ``local_ack_grace``
            seconds, the ack is asked of the workflow.
        local_ack_grace: See ``local_ack``.
        eager_ack_grace: The wait for ``local_ack`` when the server handed this
            process the lifecycle's first workflow task (an eager start): the
            message is being stored here, so the ack comes, however busy the process
            (asking the workflow instead would cost it a workflow task and the
            process more work; at full load a 0.5 s grace made that a quarter of the
            sends).
        search_attributes: Set on a new lifecycle (see runtime.search_attributes).
        rpc_timeout: Bounds each call into Temporal (its retries included).

    Raises:
        PermanentError: the lifecycle refused the message (the subclass names why).
    """
    check = AcceptInput(
        fingerprint=send_fingerprint(input.conversation_id, input.body),
        request_id=input.request_id,
    )
    workflow_id = message_workflow_id(input.sender_id, input.client_message_id)
    try:
        handle = await client.start_workflow(
            MessageLifecycleWorkflow.run,
            input,
            id=workflow_id,
            task_queue=TASK_QUEUE_MESSAGES,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            id_reuse_policy=LIFECYCLE_ID_REUSE,
            request_eager_start=eager,
            search_attributes=search_attributes,
            rpc_timeout=rpc_timeout,
        )
    except WorkflowAlreadyStartedError as err:
        # An earlier send's lifecycle completed; it still knows the answer.
        closed = client.get_workflow_handle_for(
            MessageLifecycleWorkflow.run, workflow_id, run_id=err.run_id
        )
        return await acceptance(closed, check, rpc_timeout=rpc_timeout)
    if local_ack is not None:
        # Nothing within the grace: the workflow task ran elsewhere, or this was a
        # resend that joined a running lifecycle. Then the workflow is asked.
        wait = eager_ack_grace if started_here(handle) else local_ack_grace
        with contextlib.suppress(TimeoutError):
            return await asyncio.wait_for(asyncio.shield(local_ack), wait)
    return await request_ack(handle, check, rpc_timeout=rpc_timeout)


def started_here(handle: LifecycleHandle) -> bool:
    """Whether the server answered the start with its first workflow task (eager start).

    Read from the start's response, which the SDK keeps on the handle; a handle
    without one (another SDK version) counts as not eager.
    """
    response = getattr(handle, "_start_workflow_response", None)
    try:
        return bool(response is not None and response.HasField("eager_workflow_task"))
    except ValueError:  # a response type without that field
        return False


async def request_ack(
    handle: LifecycleHandle, check: AcceptInput, *, rpc_timeout: timedelta | None = None
) -> MessageAccepted:
    """The ``accepted`` update; a lifecycle that closed meanwhile answers by query."""
    try:
        return await handle.execute_update(
            MessageLifecycleWorkflow.accepted, check, rpc_timeout=rpc_timeout
        )
    except WorkflowUpdateFailedError as err:
        raise to_domain_error(err) from None
    except RPCError as err:
        if err.status is not RPCStatusCode.NOT_FOUND:
            raise
    return await acceptance(handle, check, rpc_timeout=rpc_timeout)


async def acceptance(
    handle: LifecycleHandle, check: AcceptInput, *, rpc_timeout: timedelta | None = None
) -> MessageAccepted:
    """The ack of a closed lifecycle, from its ``acceptance`` query."""
    try:
        answer = await handle.query(
            MessageLifecycleWorkflow.acceptance, check, rpc_timeout=rpc_timeout
        )
    except WorkflowQueryFailedError:
        # A lifecycle refused before its code ran (input the converter refused) has
        # no state to query: its failure is the answer.
        try:
            await handle.result(rpc_timeout=rpc_timeout)
        except WorkflowFailureError as err:
            raise to_domain_error(err) from None
        raise
    if answer.accepted is not None:
        return answer.accepted
    if answer.error_type is not None:
        raise domain_error(answer.error_type, answer.error_message or answer.error_type)
    raise PermanentError(
        f"lifecycle {handle.id} ended before storing its message (terminated?); "
        "send again with a new client_message_id"
    )


async def apply_receipt(
    client: Client,
    input: ReceiptInput,
    *,
    eager: bool = False,
    search_attributes: TypedSearchAttributes | None = None,
) -> ReceiptResult:
    """Runs the receipt workflow for one watermark and returns what changed.

    ``search_attributes`` are set on a new receipt workflow.

    Raises:
        PermanentError: the receipt was refused (the subclass names why).
    """
    up_to = str(input.up_to_seq) if input.up_to_seq is not None else str(input.message_id)
    try:
        return await client.execute_workflow(
            ReceiptWorkflow.run,
            input,
            id=receipt_workflow_id(input.user_id, input.conversation_id, str(input.status), up_to),
            task_queue=TASK_QUEUE_MESSAGES,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
            request_eager_start=eager,
            search_attributes=search_attributes,
        )
    except WorkflowFailureError as err:
        raise to_domain_error(err) from None
