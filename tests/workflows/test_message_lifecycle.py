"""MessageLifecycleWorkflow and ReceiptWorkflow on the time-skipping server, activities faked."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from temporalio import activity
from temporalio.client import WorkflowExecutionStatus, WorkflowFailureError
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from missive.constants import message_id_for, message_workflow_id
from missive.schemas import (
    ApplyReceiptResult,
    BroadcastMessageInput,
    LifecyclePhase,
    MessageStatus,
    PersistMessageInput,
    PersistMessageResult,
    ReceiptChange,
    ReceiptInput,
    ReceiptsChanged,
    ReceiptStatus,
    SendMessageInput,
)
from runtime.messaging import LIFECYCLE_ID_REUSE
from runtime.wiring import WORKFLOWS
from workflows.message_lifecycle import MessageLifecycleWorkflow
from workflows.receipts import ReceiptWorkflow

pytestmark = pytest.mark.unit

NOW = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass
class FakeMessages:
    """Fakes for the lifecycle's activities, declared by name, recording their calls."""

    recipients: list[str] = field(default_factory=lambda: [str(uuid.uuid4())])
    refuse_with: str | None = None
    persisted: list[PersistMessageInput] = field(default_factory=list)
    broadcasts: list[str] = field(default_factory=list)
    receipt_results: list[ApplyReceiptResult] = field(default_factory=list)
    receipt_broadcasts: int = 0

    def activities(self) -> list[Callable[..., Any]]:
        @activity.defn(name="persist_message")
        async def persist_message(input: PersistMessageInput) -> PersistMessageResult:
            if self.refuse_with:
                raise ApplicationError("refused by fake", type=self.refuse_with, non_retryable=True)
            self.persisted.append(input)
            return PersistMessageResult(
                message_id=message_id_for(input.sender_id, input.client_message_id),
                conversation_id=input.conversation_id,
                seq=len(self.persisted),
                created_at=NOW,
                created=len(self.persisted) == 1,
                recipient_count=len(self.recipients),
                recipient_ids=self.recipients
                if len(self.recipients) <= input.receipt_detail_max_recipients
                else [],
            )

        @activity.defn(name="broadcast_message")
        async def broadcast_message(input: BroadcastMessageInput) -> None:
            self.broadcasts.append(input.message_id)

        @activity.defn(name="apply_receipt")
        async def apply_receipt(input: ReceiptInput) -> ApplyReceiptResult:
            return self.receipt_results.pop(0)

        @activity.defn(name="broadcast_receipts")
        async def broadcast_receipts(input: ApplyReceiptResult) -> None:
            self.receipt_broadcasts += 1

        return [persist_message, broadcast_message, apply_receipt, broadcast_receipts]


def _send(**overrides: object) -> SendMessageInput:
    values: dict[str, object] = {
        "conversation_id": str(uuid.uuid4()),
        "sender_id": str(uuid.uuid4()),
        "client_message_id": f"c-{uuid.uuid4().hex[:8]}",
        "body": "hello",
        "lifecycle_window_seconds": 3600,
    }
    values.update(overrides)
    return SendMessageInput(**values)  # type: ignore[arg-type]


async def _status_when(handle, predicate, within: float = 10.0) -> MessageStatus:
    """Polls the status query until ``predicate`` holds (signals land asynchronously)."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        status = await handle.query(MessageLifecycleWorkflow.status)
        if predicate(status) or asyncio.get_running_loop().time() > deadline:
            return status
        await asyncio.sleep(0.05)


def _worker(env: WorkflowEnvironment, fakes: FakeMessages, task_queue: str) -> Worker:
    return Worker(
        env.client, task_queue=task_queue, workflows=WORKFLOWS, activities=fakes.activities()
    )


async def _start(env: WorkflowEnvironment, input: SendMessageInput, task_queue: str):
    return await env.client.start_workflow(
        MessageLifecycleWorkflow.run,
        input,
        id=message_workflow_id(input.sender_id, input.client_message_id),
        task_queue=task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        id_reuse_policy=LIFECYCLE_ID_REUSE,
    )


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"body": ""}, "body is empty"),
        ({"body": "   "}, "body is empty"),
        ({"body": "x" * 40, "max_body_bytes": 32}, "over the limit of 32"),
        ({"conversation_id": "c-1"}, "conversation_id is not a valid UUID"),
        ({"client_message_id": ""}, "client_message_id"),
    ],
)
async def test_bad_input_fails_without_persisting(time_env, task_queue, overrides, match) -> None:
    fakes = FakeMessages()
    async with _worker(time_env, fakes, task_queue):
        handle = await _start(time_env, _send(**overrides), task_queue)
        with pytest.raises(WorkflowFailureError) as failure:
            await handle.result()
    cause = failure.value.cause
    assert isinstance(cause, ApplicationError)
    assert cause.type == "InvalidInput" and cause.non_retryable
    assert match in cause.message
    assert fakes.persisted == [] and fakes.broadcasts == []


async def test_refused_by_the_database_fails_with_the_domain_type(time_env, task_queue) -> None:
    fakes = FakeMessages(refuse_with="NotAMember")
    async with _worker(time_env, fakes, task_queue):
        handle = await _start(time_env, _send(), task_queue)
        with pytest.raises(WorkflowFailureError) as failure:
            await handle.result()
        status = await handle.query(MessageLifecycleWorkflow.status)
    assert isinstance(failure.value.cause, ApplicationError)
    assert failure.value.cause.type == "NotAMember"
    assert status.phase is LifecyclePhase.REJECTED and "NotAMember" in (status.error or "")
    assert fakes.broadcasts == []


async def test_duplicate_send_joins_the_running_lifecycle(time_env, task_queue) -> None:
    fakes = FakeMessages()
    send = _send()
    async with _worker(time_env, fakes, task_queue):
        first = await _start(time_env, send, task_queue)
        second = await _start(time_env, send, task_queue)
        assert second.result_run_id == first.result_run_id
        await first.signal(MessageLifecycleWorkflow.receipts_changed, ReceiptsChanged(1, 1, 1))
        result = await first.result()
        # Once completed, the id is never reused for a second lifecycle.
        with pytest.raises(WorkflowAlreadyStartedError):
            await time_env.client.start_workflow(
                MessageLifecycleWorkflow.run,
                send,
                id=first.id,
                task_queue=task_queue,
                id_reuse_policy=LIFECYCLE_ID_REUSE,
            )
    assert len(fakes.persisted) == 1 and len(fakes.broadcasts) == 1
    assert result.phase is LifecyclePhase.ALL_READ


async def test_receipts_out_of_order_only_move_forward(time_env, task_queue) -> None:
    ben, cy = str(uuid.uuid4()), str(uuid.uuid4())
    fakes = FakeMessages(recipients=[ben, cy])
    async with _worker(time_env, fakes, task_queue):
        handle = await _start(time_env, _send(), task_queue)
        read_at = NOW + timedelta(minutes=1)
        await handle.signal(
            MessageLifecycleWorkflow.receipts_changed,
            ReceiptsChanged(2, 1, 1, recipient_id=ben, status=ReceiptStatus.READ, at=read_at),
        )
        # A late "delivered" (counts from before the read) changes nothing.
        await handle.signal(
            MessageLifecycleWorkflow.receipts_changed,
            ReceiptsChanged(2, 1, 0, recipient_id=ben, status=ReceiptStatus.DELIVERED, at=NOW),
        )
        status = await _status_when(handle, lambda s: s.read_count == 1)
        assert status.phase is LifecyclePhase.FOLLOWING_RECEIPTS
        assert status.recipients[ben].status == "read"
        assert status.recipients[ben].delivered_at == read_at
        assert status.recipients[cy].status == "sent"
        assert (status.delivered_count, status.read_count) == (1, 1)

        await handle.signal(
            MessageLifecycleWorkflow.receipts_changed,
            ReceiptsChanged(2, 2, 2, recipient_id=cy, status=ReceiptStatus.READ, at=read_at),
        )
        result = await handle.result()
    assert result.phase is LifecyclePhase.ALL_READ and result.read_count == 2


async def test_lifecycle_ends_after_its_window_when_unread(time_env, task_queue) -> None:
    fakes = FakeMessages()
    async with _worker(time_env, fakes, task_queue):
        handle = await _start(time_env, _send(lifecycle_window_seconds=6 * 3600), task_queue)
        await time_env.sleep(timedelta(hours=5))
        assert (await handle.describe()).status == WorkflowExecutionStatus.RUNNING
        await time_env.sleep(timedelta(hours=2))
        result = await handle.result()
    assert result.phase is LifecyclePhase.WINDOW_ELAPSED
    assert (result.delivered_count, result.read_count) == (0, 0)


async def test_large_group_tracks_counts_not_each_recipient(time_env, task_queue) -> None:
    fakes = FakeMessages(recipients=[str(uuid.uuid4()) for _ in range(1000)])
    async with _worker(time_env, fakes, task_queue):
        handle = await _start(time_env, _send(), task_queue)
        status = await _status_when(handle, lambda s: s.recipient_count > 0)
        assert status.recipient_count == 1000 and not status.per_recipient
        assert status.recipients == {}
        await handle.signal(
            MessageLifecycleWorkflow.receipts_changed, ReceiptsChanged(1000, 1000, 1000)
        )
        result = await handle.result()
        history = await handle.fetch_history()
    assert result.phase is LifecyclePhase.ALL_READ
    assert len(history.events) < 30


async def test_receipt_tells_the_lifecycle_and_the_sender(time_env, task_queue) -> None:
    ben = str(uuid.uuid4())
    fakes = FakeMessages(recipients=[ben])
    send = _send()
    async with _worker(time_env, fakes, task_queue):
        lifecycle = await _start(time_env, send, task_queue)
        fakes.receipt_results.append(
            ApplyReceiptResult(
                user_id=ben,
                conversation_id=send.conversation_id,
                status=ReceiptStatus.READ,
                up_to_seq=1,
                changed=1,
                changes=[
                    ReceiptChange(
                        message_id=message_id_for(send.sender_id, send.client_message_id),
                        sender_id=send.sender_id,
                        client_message_id=send.client_message_id,
                        seq=1,
                        status=ReceiptStatus.READ,
                        at=NOW,
                        recipient_count=1,
                        delivered_count=1,
                        read_count=1,
                    ),
                    # A message whose lifecycle already ended: telling it is skipped quietly.
                    ReceiptChange(
                        message_id=str(uuid.uuid4()),
                        sender_id=send.sender_id,
                        client_message_id="long-gone",
                        seq=0,
                        status=ReceiptStatus.READ,
                        at=NOW,
                        recipient_count=1,
                        delivered_count=1,
                        read_count=1,
                    ),
                ],
            )
        )
        receipt = await time_env.client.execute_workflow(
            ReceiptWorkflow.run,
            ReceiptInput(ben, send.conversation_id, ReceiptStatus.READ, up_to_seq=1),
            id=f"receipt-{uuid.uuid4()}",
            task_queue=task_queue,
        )
        result = await lifecycle.result()
        status = await lifecycle.query(MessageLifecycleWorkflow.status)
    assert (receipt.changed, receipt.notified_lifecycles) == (1, 1)
    assert fakes.receipt_broadcasts == 1
    assert result.phase is LifecyclePhase.ALL_READ
    assert status.recipients[ben].status == "read"
