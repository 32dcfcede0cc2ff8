"""Bulk send: many messages through MissiveClient with bounded concurrency and one summary."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from temporalio.common import WorkflowIDConflictPolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError

from missive.constants import TASK_QUEUE_MESSAGES, message_workflow_id
from missive.errors import InvalidInput, MessagingError, PermanentError, ProviderUnavailable
from runtime.messaging import LIFECYCLE_ID_REUSE, with_request_id
from runtime.search_attributes import KIND_MESSAGE, start_attributes
from starter.client import MissiveClient, send_input
from workflows.message_lifecycle import MessageLifecycleWorkflow

DEFAULT_CONCURRENCY = 32
"""Sends in flight at once: enough to keep a dev server busy without queueing at the client."""

SEND_FIELDS = ("conversation_id", "sender_id", "client_message_id", "body", "e2e_header")


@dataclass(frozen=True)
class BulkSend:
    """One message of a bulk send."""

    conversation_id: str
    """The conversation (UUID)."""
    sender_id: str
    """The sending user (UUID)."""
    client_message_id: str
    """The sender's own id for this message."""
    body: str
    """The text (the base64 ciphertext in an e2e conversation)."""
    e2e_header: dict[str, Any] | None = None
    """E2E conversations only: the key metadata."""
    number: int | None = None
    """Where the send came from (a line number); default its position, from 1."""


@dataclass(frozen=True)
class BulkProblem:
    """A send that did not start: refused (bad input, not a member...) or failed (unavailable)."""

    number: int
    """The send's number (line number of a file, else its position from 1)."""
    client_message_id: str
    """The sender's id for it ("" when the line could not be read)."""
    error_type: str
    """The error's name: InvalidInput, NotAMember, ProviderUnavailable, ..."""
    message: str
    """What went wrong, one line."""


@dataclass(frozen=True)
class BulkSummary:
    """What a bulk send did."""

    total: int
    """Sends read."""
    started: int
    """Sends that made a new message (ack mode) or started a new lifecycle (start-only)."""
    duplicates: int
    """Sends whose message already existed or whose lifecycle already ran: nothing new."""
    refused: list[BulkProblem] = field(default_factory=list)
    """Sends refused for good: resending them unchanged cannot help."""
    failed: list[BulkProblem] = field(default_factory=list)
    """Sends that hit an unavailable Temporal or worker: resending them is safe."""
    elapsed_seconds: float = 0.0
    """Wall time of the whole bulk send."""
    waited_for_ack: bool = True
    """False in start-only mode: a start means the lifecycle runs, not that it stored."""


async def send_many(
    missive: MissiveClient,
    sends: Iterable[BulkSend],
    *,
    concurrency: int = DEFAULT_CONCURRENCY,
    wait_for_ack: bool = True,
) -> BulkSummary:
    """Sends many messages, at most ``concurrency`` at a time, and sums up the outcome.

    With ``wait_for_ack`` (the default) each send is :meth:`MissiveClient.send`: it
    waits until the message is stored, so a refusal by the workflow (not a
    member, ...) is reported. Without it each send only starts the lifecycle
    (id conflict policy FAIL: a lifecycle already running or completed counts as
    a duplicate); refusals are then the input checks made before starting, and
    the workflow's own refusals show later as failed lifecycles (``python -m
    starter failures``). Sends are read lazily, so the iterable may be long.

    Args:
        missive: The client.
        sends: The messages.
        concurrency: Sends in flight at once (>= 1).
        wait_for_ack: Wait for each message to be stored (see above).

    Raises:
        InvalidInput: concurrency below 1.
    """
    if concurrency < 1:
        raise InvalidInput(f"concurrency must be at least 1, got {concurrency}")
    started = duplicates = total = 0
    refused: list[BulkProblem] = []
    failed: list[BulkProblem] = []
    gate = asyncio.Semaphore(concurrency)
    began = time.perf_counter()

    async def one(number: int, send: BulkSend) -> None:
        nonlocal started, duplicates
        try:
            try:
                if wait_for_ack:
                    result = await missive.send(
                        send.conversation_id,
                        send.sender_id,
                        send.client_message_id,
                        send.body,
                        e2e_header=send.e2e_header,
                    )
                    duplicate = result.duplicate
                else:
                    duplicate = not await start_lifecycle(missive, send)
            except PermanentError as err:
                refused.append(_problem(number, send.client_message_id, err))
                return
            except MessagingError as err:
                failed.append(_problem(number, send.client_message_id, err))
                return
            if duplicate:
                duplicates += 1
            else:
                started += 1
        finally:
            gate.release()

    try:
        async with asyncio.TaskGroup() as tasks:
            for position, send in enumerate(sends, start=1):
                total += 1
                await gate.acquire()
                tasks.create_task(one(send.number or position, send))
    except ExceptionGroup as group:
        # Reading the sends failed (a file that cannot be read): that error, not a group.
        first = group.exceptions[0]
        if len(group.exceptions) == 1 and isinstance(first, MessagingError):
            raise first from None
        raise
    refused.sort(key=lambda p: p.number)
    failed.sort(key=lambda p: p.number)
    return BulkSummary(
        total=total,
        started=started,
        duplicates=duplicates,
        refused=refused,
        failed=failed,
        elapsed_seconds=time.perf_counter() - began,
        waited_for_ack=wait_for_ack,
    )


async def start_lifecycle(missive: MissiveClient, send: BulkSend) -> bool:
    """Starts one message's lifecycle without waiting for it to store the message.

    Returns:
        True when a lifecycle started, False when one with the same id already
        runs or completed (a duplicate).

    Raises:
        InvalidInput: a malformed field (nothing is started).
        ProviderUnavailable: Temporal did not answer.
    """
    input = with_request_id(
        send_input(
            missive.settings,
            conversation_id=send.conversation_id,
            sender_id=send.sender_id,
            client_message_id=send.client_message_id,
            body=send.body,
            e2e_header=send.e2e_header,
        )
    )
    workflow_id = message_workflow_id(input.sender_id, input.client_message_id)
    try:
        async with asyncio.timeout(missive.call_timeout.total_seconds()):
            await missive.temporal.start_workflow(
                MessageLifecycleWorkflow.run,
                input,
                id=workflow_id,
                task_queue=TASK_QUEUE_MESSAGES,
                id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
                id_reuse_policy=LIFECYCLE_ID_REUSE,
                search_attributes=start_attributes(
                    missive.settings, KIND_MESSAGE, conversation_id=input.conversation_id
                ),
            )
    except WorkflowAlreadyStartedError:
        return False
    except TimeoutError:
        raise ProviderUnavailable(f"Temporal did not answer the start of {workflow_id}") from None
    except RPCError as err:
        raise ProviderUnavailable(
            f"start of {workflow_id}: {err.status.name}: {err.message}"
        ) from None
    return True


def _problem(number: int, client_message_id: str, err: MessagingError) -> BulkProblem:
    return BulkProblem(
        number=number,
        client_message_id=client_message_id,
        error_type=err.type,
        message=" ".join(str(err).split()),
    )


@dataclass
class JsonlSends:
    """The sends of a JSON-lines file, read lazily; unreadable lines are kept as problems.

    Each non-blank line is ``{"conversation_id", "sender_id", "client_message_id",
    "body", "e2e_header"?}``.
    """

    path: Path
    """The file ('-' reads stdin)."""
    problems: list[BulkProblem] = field(default_factory=list)
    """Lines that are not a send: line number and what is wrong."""

    def __iter__(self) -> Iterator[BulkSend]:
        for number, line in self._lines():
            if not line.strip():
                continue
            try:
                yield parse_send_line(line, number)
            except InvalidInput as err:
                self.problems.append(_problem(number, "", err))

    def _lines(self) -> Iterator[tuple[int, str]]:
        try:
            if str(self.path) == "-":
                yield from enumerate(sys.stdin, start=1)
                return
            with self.path.open(encoding="utf-8") as lines:
                yield from enumerate(lines, start=1)
        except (OSError, UnicodeDecodeError) as err:
            raise InvalidInput(f"--file {self.path}: {err}") from None


def parse_send_line(line: str, number: int) -> BulkSend:
    """One JSON line as a send.

    Raises:
        InvalidInput: naming the line and the problem.
    """
    try:
        value = json.loads(line)
    except json.JSONDecodeError as err:
        raise InvalidInput(f"line {number}: not JSON ({err.msg})") from None
    except (ValueError, RecursionError):  # a number over 4,300 digits, nesting too deep
        raise InvalidInput(f"line {number}: not JSON this reader can hold") from None
    if not isinstance(value, dict):
        raise InvalidInput(f"line {number}: must be a JSON object")
    unknown = sorted(set(value) - set(SEND_FIELDS))
    if unknown:
        raise InvalidInput(f"line {number}: unknown field(s) {', '.join(unknown)}")
    for name in SEND_FIELDS[:4]:
        if not isinstance(value.get(name), str):
            raise InvalidInput(f"line {number}: {name} is missing or not a string")
    header = value.get("e2e_header")
    if header is not None and not isinstance(header, dict):
        raise InvalidInput(f"line {number}: e2e_header must be a JSON object")
    return BulkSend(
        conversation_id=value["conversation_id"],
        sender_id=value["sender_id"],
        client_message_id=value["client_message_id"],
        body=value["body"],
        e2e_header=header,
        number=number,
    )
