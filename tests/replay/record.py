"""Records the workflow histories the replay test runs against; run by hand after a change
that is meant to be compatible: ``python -m tests.replay.record``.

Each history comes from a real run on the time-skipping server with fake activities
and the plain JSON converter (no codec), so the files are readable and key-free.
"""

from __future__ import annotations

import asyncio
import gc
import shutil
import sys
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from temporalio import activity
from temporalio.client import WorkflowFailureError, WorkflowHandle
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from missive.constants import message_id_for, message_workflow_id
from missive.schemas import (
    AcceptInput,
    ApplyReceiptResult,
    BroadcastMessageInput,
    DispatchDueInput,
    DispatchDueResult,
    NotifyOptions,
    PlanNotificationsResult,
    ReceiptChange,
    ReceiptInput,
    ReceiptsChanged,
    ReceiptStatus,
    SendMessageInput,
    SettleNotificationsInput,
    SettleNotificationsResult,
)
from missive.validation import send_fingerprint
from runtime.wiring import WORKFLOWS
from tests.workflows.test_message_lifecycle import NOW, FakeMessages
from workflows.message_lifecycle import MessageLifecycleWorkflow
from workflows.receipts import ReceiptWorkflow

HERE = Path(__file__).resolve().parent / "histories"

# Fixed ids, so re-recording changes only what the code changed.
ANA = "0b7d3c1e-0000-4000-8000-000000000001"
BEN = "0b7d3c1e-0000-4000-8000-000000000002"
CONV = "0b7d3c1e-0000-4000-8000-0000000000c1"


def _send(cmid: str, body: str = "hello", **extra: object) -> SendMessageInput:
    return SendMessageInput(
        conversation_id=CONV,
        sender_id=ANA,
        client_message_id=cmid,
        body=body,
        lifecycle_window_seconds=3600,
        request_id=f"req-{cmid}",
        **extra,  # type: ignore[arg-type]
    )


async def _start_acked(
    env: WorkflowEnvironment, send: SendMessageInput, queue: str
) -> WorkflowHandle[MessageLifecycleWorkflow, Any]:
    """Starts ANA's lifecycle and waits for its ack (the ``accepted`` update)."""
    lifecycle = await env.client.start_workflow(
        MessageLifecycleWorkflow.run,
        send,
        id=message_workflow_id(ANA, send.client_message_id),
        task_queue=queue,
    )
    await lifecycle.execute_update(
        MessageLifecycleWorkflow.accepted,
        AcceptInput(send_fingerprint(CONV, send.body), send.request_id),
    )
    return lifecycle


def _read_by_ben(cmid: str) -> ApplyReceiptResult:
    """What applying BEN's read of ANA's only message returns."""
    return ApplyReceiptResult(
        user_id=BEN,
        conversation_id=CONV,
        status=ReceiptStatus.READ,
        up_to_seq=1,
        changed=1,
        changes=[
            ReceiptChange(
                message_id=message_id_for(ANA, cmid),
                sender_id=ANA,
                client_message_id=cmid,
                seq=1,
                status=ReceiptStatus.READ,
                at=NOW,
                recipient_count=1,
                delivered_count=1,
                read_count=1,
            )
        ],
    )


async def _save(handle: WorkflowHandle, name: str) -> None:  # type: ignore[type-arg]
    history = await handle.fetch_history()
    (HERE / f"{name}.json").write_text(history.to_json())
    print(f"recorded {name}: {len(history.events)} events")


def _notify_fakes() -> list[Callable[..., Any]]:
    """A broadcast that plans (the in-app step sent, a push due after the grace), a
    dispatch that finds the push no longer due, and the reader's settle."""

    @activity.defn(name="broadcast_message")
    async def broadcast_message(input: BroadcastMessageInput) -> PlanNotificationsResult | None:
        if input.plan is None:
            return None
        due = input.plan.message.created_at + timedelta(
            seconds=input.plan.message.options.grace_seconds
        )
        return PlanNotificationsResult(
            planned=2,
            skipped=0,
            next_due=due,
            dispatched=DispatchDueResult(in_app=1, next_due=due),
        )

    @activity.defn(name="dispatch_due")
    async def dispatch_due(input: DispatchDueInput) -> DispatchDueResult:
        return DispatchDueResult(cancelled=1)

    @activity.defn(name="settle_notifications")
    async def settle_notifications(input: SettleNotificationsInput) -> SettleNotificationsResult:
        return SettleNotificationsResult(cancelled=1, in_app_read=1)

    return [broadcast_message, dispatch_due, settle_notifications]


async def _record_notified(env: WorkflowEnvironment) -> None:
    """A lifecycle with notifications on, read by its recipient after the grace period."""
    fakes = FakeMessages(recipients=[BEN])
    queue = f"record-notify-{uuid.uuid4().hex[:6]}"
    options = NotifyOptions(task_queue=queue)
    messages = [a for a in fakes.activities() if a.__name__ != "broadcast_message"]
    async with Worker(
        env.client, task_queue=queue, workflows=WORKFLOWS, activities=[*messages, *_notify_fakes()]
    ):
        lifecycle = await _start_acked(
            env, _send("notified", notify=options, mentions=[BEN]), queue
        )
        await env.sleep(90)  # past the grace: the agenda dispatches the push step
        fakes.receipt_results.append(_read_by_ben("notified"))
        receipt = await env.client.start_workflow(
            ReceiptWorkflow.run,
            ReceiptInput(BEN, CONV, ReceiptStatus.READ, up_to_seq=1, notify=options),
            id="receipt-record-notified",
            task_queue=queue,
        )
        await receipt.result()
        await lifecycle.result()
        await _save(lifecycle, "lifecycle_notified")
        await _save(receipt, "receipt_read_notified")


async def record() -> None:
    """Runs each scenario and writes its history."""
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=shutil.which("temporal-test-server")
        or str(Path(sys.executable).parent / "temporal-test-server"),
        test_server_startup_timeout=timedelta(seconds=60),
    )
    fakes = FakeMessages(recipients=[BEN])
    queue = f"record-{uuid.uuid4().hex[:6]}"
    async with (
        env,
        Worker(env.client, task_queue=queue, workflows=WORKFLOWS, activities=fakes.activities()),
    ):
        client = env.client

        # Sent, acked, read by its only recipient through a receipt workflow.
        lifecycle = await _start_acked(env, _send("all-read"), queue)
        fakes.receipt_results.append(_read_by_ben("all-read"))
        receipt = await client.start_workflow(
            ReceiptWorkflow.run,
            ReceiptInput(BEN, CONV, ReceiptStatus.READ, up_to_seq=1),
            id="receipt-record",
            task_queue=queue,
        )
        await receipt.result()
        await lifecycle.result()
        await _save(lifecycle, "lifecycle_all_read")
        await _save(receipt, "receipt_read")

        # Never read: the window elapses.
        fakes.persisted.clear()
        unread = await client.start_workflow(
            MessageLifecycleWorkflow.run,
            _send("unread"),
            id=message_workflow_id(ANA, "unread"),
            task_queue=queue,
        )
        await unread.signal(
            MessageLifecycleWorkflow.receipts_changed,
            ReceiptsChanged(1, 1, 0, recipient_id=BEN, status=ReceiptStatus.DELIVERED, at=NOW),
        )
        await unread.result()
        await _save(unread, "lifecycle_window_elapsed")

        # Refused before any activity: an empty body.
        refused = await client.start_workflow(
            MessageLifecycleWorkflow.run,
            _send("empty", body=" "),
            id=message_workflow_id(ANA, "empty"),
            task_queue=queue,
        )
        try:
            await refused.result()
        except WorkflowFailureError:
            pass
        await _save(refused, "lifecycle_refused")
        await _record_notified(env)
    # Collect the client inside the loop: sdk-python #300 can crash at exit otherwise.
    del client, lifecycle, receipt, unread, refused
    gc.collect()


if __name__ == "__main__":
    asyncio.run(record())
