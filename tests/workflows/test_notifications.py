"""Notification workflows on the time-skipping server: the workflow logic with activities
faked by name, then end to end with the real activities, database and provider sinks."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import pytest
from temporalio import activity
from temporalio.client import WorkflowHandle
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.notify import ChannelActivities, NotifyActivities
from fakes import Failure, FcmSink, Inbox, TwilioSink, serve, start_smtp
from missive.constants import (
    EVENT_NOTIFICATION_NEW,
    EVENT_NOTIFICATION_UNREAD,
    message_id_for,
    notify_digest_workflow_id,
    notify_message_workflow_id,
    user_room,
)
from missive.db import session_factory
from missive.models import ConversationKind
from missive.notify.log import NotificationRow
from missive.notify.preferences import PreferenceService
from missive.schemas import (
    ApplyReceiptResult,
    BroadcastMessageInput,
    Channel,
    DigestItem,
    DigestItems,
    DispatchDueInput,
    DispatchDueResult,
    FallBackInput,
    FallBackResult,
    LifecyclePhase,
    NotificationDigestInput,
    NotificationDigestResult,
    NotificationPreferences,
    NotificationStatus,
    NotifyMessageInput,
    NotifyMessageResult,
    NotifyOptions,
    PersistMessageInput,
    PersistMessageResult,
    PlanNotificationsInput,
    PlanNotificationsResult,
    PrepareDigestInput,
    PrepareDigestResult,
    QueueDigestsInput,
    QueueDigestsResult,
    ReceiptInput,
    ReceiptStatus,
    SendMessageInput,
    SendNotificationsInput,
    SendNotificationsResult,
    SettleNotificationsInput,
    SettleNotificationsResult,
)
from missive.services.directory import NewUser
from runtime.notify import open_notify
from runtime.wiring import WORKFLOWS, Core, activity_methods, message_activities
from tests.conftest import base_settings, free_port
from workflows.message_lifecycle import MessageLifecycleWorkflow
from workflows.notify_digest import NotificationDigestWorkflow
from workflows.notify_message import NotifyMessageWorkflow
from workflows.receipts import ReceiptWorkflow

NOTIFY_WORKFLOWS = [NotifyMessageWorkflow, NotificationDigestWorkflow]


def _options(task_queue: str, **overrides: object) -> NotifyOptions:
    """Short delays (the server skips them anyway) and queues unique to the test."""
    values: dict[str, object] = {
        "grace_seconds": 60,
        "email_delay_seconds": 900,
        "sms_delay_seconds": 3600,
        "digest_window_seconds": 300,
        "push_deadline_seconds": 120,
        "email_deadline_seconds": 120,
        "sms_deadline_seconds": 120,
        "task_queue": f"{task_queue}-notify",
        "push_task_queue": f"{task_queue}-push",
        "email_task_queue": f"{task_queue}-email",
        "sms_task_queue": f"{task_queue}-sms",
    }
    values.update(overrides)
    return NotifyOptions(**values)  # type: ignore[arg-type]


# --- the workflow logic, activities faked by name ---------------------------------------


@dataclass
class Send:
    """One call of a fake send activity."""

    channel: Channel
    ids: list[str]
    attempt: int


@dataclass
class FakeNotify:
    """Fakes of the notification activities, declared by name, recording their calls.

    ``down`` channels answer a retryable provider error, ``refuse`` channels a
    non-retryable one; ``dispatches`` are returned by dispatch_due in turn.
    """

    plan: PlanNotificationsResult = field(
        default_factory=lambda: PlanNotificationsResult(planned=0, skipped=0, next_due=None)
    )
    dispatches: list[DispatchDueResult] = field(default_factory=list)
    down: set[Channel] = field(default_factory=set)
    refuse: set[Channel] = field(default_factory=set)
    fallbacks: dict[Channel, Callable[[FallBackInput], FallBackResult]] = field(
        default_factory=dict
    )
    prepares: list[PrepareDigestResult] = field(default_factory=list)
    settled: SettleNotificationsResult = field(default_factory=SettleNotificationsResult)
    settle_fails: bool = False
    # What the activities were called with.
    planned: list[PlanNotificationsInput] = field(default_factory=list)
    planned_with_broadcast: list[PlanNotificationsInput] = field(default_factory=list)
    dispatched: list[DispatchDueInput] = field(default_factory=list)
    sends: list[Send] = field(default_factory=list)
    fell_back: list[FallBackInput] = field(default_factory=list)
    queued: list[QueueDigestsInput] = field(default_factory=list)
    prepared: list[PrepareDigestInput] = field(default_factory=list)
    settles: list[SettleNotificationsInput] = field(default_factory=list)
    clears: list[list[str]] = field(default_factory=list)

    def notify_activities(self) -> list[Callable[..., object]]:
        """The activities of the notify queue (the workflows' local ones too)."""

        @activity.defn(name="plan_notifications")
        async def plan_notifications(input: PlanNotificationsInput) -> PlanNotificationsResult:
            self.planned.append(input)
            return self.plan

        @activity.defn(name="dispatch_due")
        async def dispatch_due(input: DispatchDueInput) -> DispatchDueResult:
            self.dispatched.append(input)
            return self.dispatches.pop(0) if self.dispatches else DispatchDueResult()

        @activity.defn(name="fall_back")
        async def fall_back(input: FallBackInput) -> FallBackResult:
            self.fell_back.append(input)
            decide = self.fallbacks.get(input.channel)
            if decide is None:
                return FallBackResult(failed=len(input.notification_ids))
            return decide(input)

        @activity.defn(name="queue_digests")
        async def queue_digests(input: QueueDigestsInput) -> QueueDigestsResult:
            self.queued.append(input)
            return QueueDigestsResult(signalled=len({i.recipient_id for i in input.items}))

        @activity.defn(name="prepare_digest")
        async def prepare_digest(input: PrepareDigestInput) -> PrepareDigestResult:
            self.prepared.append(input)
            if self.prepares:
                return self.prepares.pop(0)
            return PrepareDigestResult(
                notification_id=f"digest-{len(self.prepared)}", items=len(input.notification_ids)
            )

        return [plan_notifications, dispatch_due, fall_back, queue_digests, prepare_digest]

    def messages_activities(self) -> list[Callable[..., object]]:
        """settle_notifications: a local activity of the receipt, on the messages queue."""

        @activity.defn(name="settle_notifications")
        async def settle_notifications(
            input: SettleNotificationsInput,
        ) -> SettleNotificationsResult:
            self.settles.append(input)
            if self.settle_fails:
                raise ApplicationError("settle refused", type="InvalidInput", non_retryable=True)
            return self.settled

        return [settle_notifications]

    def _send(self, channel: Channel, input: SendNotificationsInput) -> SendNotificationsResult:
        self.sends.append(Send(channel, list(input.notification_ids), activity.info().attempt))
        if channel in self.refuse:
            raise ApplicationError("refused", type="InvalidInput", non_retryable=True)
        if channel in self.down:
            raise ApplicationError(f"{channel} provider answered 500", type="ProviderUnavailable")
        return SendNotificationsResult(sent=len(input.notification_ids))

    def channel_activities(self, channel: Channel) -> list[Callable[..., object]]:
        """The send activities of one provider queue."""
        if channel is Channel.PUSH:

            @activity.defn(name="send_push")
            async def send_push(input: SendNotificationsInput) -> SendNotificationsResult:
                return self._send(Channel.PUSH, input)

            @activity.defn(name="clear_pushes")
            async def clear_pushes(input: SendNotificationsInput) -> SendNotificationsResult:
                self.clears.append(list(input.notification_ids))
                return SendNotificationsResult(sent=len(input.notification_ids))

            return [send_push, clear_pushes]
        if channel is Channel.EMAIL:

            @activity.defn(name="send_email")
            async def send_email(input: SendNotificationsInput) -> SendNotificationsResult:
                return self._send(Channel.EMAIL, input)

            return [send_email]

        @activity.defn(name="send_sms")
        async def send_sms(input: SendNotificationsInput) -> SendNotificationsResult:
            return self._send(Channel.SMS, input)

        return [send_sms]

    def sent(self, channel: Channel) -> list[Send]:
        """The calls of one channel's send activity."""
        return [s for s in self.sends if s.channel is channel]


def _fake_workers(
    env: WorkflowEnvironment, fakes: FakeNotify, options: NotifyOptions
) -> list[Worker]:
    queues = {
        Channel.PUSH: options.push_task_queue,
        Channel.EMAIL: options.email_task_queue,
        Channel.SMS: options.sms_task_queue,
    }
    return [
        Worker(
            env.client,
            task_queue=options.task_queue,
            workflows=NOTIFY_WORKFLOWS,
            activities=fakes.notify_activities(),
        ),
        *(
            Worker(env.client, task_queue=queue, activities=fakes.channel_activities(channel))
            for channel, queue in queues.items()
        ),
    ]


class _Running:
    """Runs a list of workers for the length of a ``with`` block."""

    def __init__(self, workers: list[Worker]) -> None:
        self._workers = workers

    async def __aenter__(self) -> None:
        for worker in self._workers:
            await worker.__aenter__()

    async def __aexit__(self, *exc: object) -> None:
        for worker in reversed(self._workers):
            await worker.__aexit__(None, None, None)


async def _notify_input(
    env: WorkflowEnvironment, options: NotifyOptions, **overrides: object
) -> NotifyMessageInput:
    values: dict[str, object] = {
        "message_id": str(uuid.uuid4()),
        "conversation_id": str(uuid.uuid4()),
        "sender_id": str(uuid.uuid4()),
        "seq": 1,
        "created_at": await env.get_current_time(),
        "options": options,
    }
    values.update(overrides)
    return NotifyMessageInput(**values)  # type: ignore[arg-type]


T = TypeVar("T")

RESULT_WITHIN = 60.0
"""Real seconds a workflow may take to finish on the skipping server before the test fails
(every run here finishes in a few; a hang fails clearly instead of blocking the suite)."""


async def _result(handle: WorkflowHandle[Any, T]) -> T:
    """The workflow's result, skipping time; fails the test if it does not come.

    On a busy machine the time-skipping server can end the result's long poll before
    the workflow closed ("No completion event found"): asking again keeps it
    skipping, as a client polling for a result would.
    """
    async with asyncio.timeout(RESULT_WITHIN):
        while True:
            try:
                return await handle.result()
            except RuntimeError as err:
                if "No completion event found" not in str(err):
                    raise


async def _run_notify(
    env: WorkflowEnvironment, input: NotifyMessageInput
) -> WorkflowHandle[NotifyMessageWorkflow, NotifyMessageResult]:
    return await env.client.start_workflow(
        NotifyMessageWorkflow.run,
        input,
        id=notify_message_workflow_id(input.message_id),
        task_queue=input.options.task_queue,
    )


@pytest.mark.unit
async def test_fake_sleeps_until_due_and_sends_pushes_in_chunks(time_env, task_queue) -> None:
    options = _options(task_queue, push_batch_size=100)
    input = await _notify_input(time_env, options)
    grace = input.created_at + timedelta(seconds=options.grace_seconds)
    email_due = input.created_at + timedelta(seconds=options.email_delay_seconds)
    pushes = [f"p{i}" for i in range(250)]
    items = [DigestItem(f"e{i}", f"r{i}", Channel.EMAIL) for i in range(3)]
    fakes = FakeNotify(
        plan=PlanNotificationsResult(planned=256, skipped=1, next_due=input.created_at),
        dispatches=[
            DispatchDueResult(in_app=3, next_due=grace),
            DispatchDueResult(push=pushes, cancelled=2, next_due=email_due),
            DispatchDueResult(digests=items, cancelled=1, next_due=None),
        ],
    )
    async with _Running(_fake_workers(time_env, fakes, options)):
        result = await _result(await _run_notify(time_env, input))
    # Each dispatch at (not before, not long after) its due time: the workflow slept on a timer.
    assert len(fakes.dispatched) == 3
    for dispatched, due in zip(fakes.dispatched, [input.created_at, grace, email_due], strict=True):
        assert due <= dispatched.now < due + timedelta(seconds=5)
    assert fakes.planned[0].message == input
    assert sorted(len(s.ids) for s in fakes.sent(Channel.PUSH)) == [50, 100, 100]
    assert sorted(i for s in fakes.sent(Channel.PUSH) for i in s.ids) == sorted(pushes)
    assert [q.items for q in fakes.queued] == [items]
    assert fakes.queued[0].options == options
    assert (result.planned, result.in_app, result.pushed, result.digested) == (256, 3, 250, 3)
    assert (result.cancelled, result.skipped, result.failed, result.fell_back) == (3, 1, 0, 0)


@pytest.mark.unit
async def test_fake_nothing_planned_ends_at_once(time_env, task_queue) -> None:
    options = _options(task_queue)
    fakes = FakeNotify(plan=PlanNotificationsResult(planned=0, skipped=2, next_due=None))
    async with _Running(_fake_workers(time_env, fakes, options)):
        input = await _notify_input(time_env, options)
        result = await _result(await _run_notify(time_env, input))
    assert fakes.dispatched == [] and fakes.sends == []
    assert (result.planned, result.skipped) == (0, 2)


@pytest.mark.unit
async def test_fake_push_down_past_its_deadline_falls_back_to_email(time_env, task_queue) -> None:
    options = _options(task_queue, push_deadline_seconds=60)
    input = await _notify_input(time_env, options)
    fakes = FakeNotify(
        plan=PlanNotificationsResult(planned=2, skipped=0, next_due=input.created_at),
        dispatches=[DispatchDueResult(push=["p1", "p2"])],
        down={Channel.PUSH},
        fallbacks={
            Channel.PUSH: lambda fb: FallBackResult(
                channel=Channel.EMAIL,
                notification_ids=["e1"],
                fell_back=2,
                failed=1,  # p2's recipient has no other channel
            )
        },
    )
    async with _Running(_fake_workers(time_env, fakes, options)):
        result = await _result(await _run_notify(time_env, input))
    pushes = fakes.sent(Channel.PUSH)
    assert len(pushes) > 2 and pushes[-1].attempt == len(pushes)  # retried, then gave up
    [moved] = fakes.fell_back
    assert moved.channel is Channel.PUSH and moved.notification_ids == ["p1", "p2"]
    assert "push still failing after 60 s" in moved.reason
    assert "push provider answered 500" in moved.reason
    # The deadline, not a count of attempts, ended the retries.
    assert moved.now - input.created_at >= timedelta(seconds=30)
    assert [s.ids for s in fakes.sent(Channel.EMAIL)] == [["e1"]]
    assert (result.pushed, result.fell_back, result.failed, result.fallback_sent) == (0, 2, 1, 1)


@pytest.mark.unit
async def test_fake_fallback_of_a_fallback_goes_down_the_order(time_env, task_queue) -> None:
    options = _options(task_queue, push_deadline_seconds=30, email_deadline_seconds=30)
    input = await _notify_input(time_env, options)
    fakes = FakeNotify(
        plan=PlanNotificationsResult(planned=1, skipped=0, next_due=input.created_at),
        dispatches=[DispatchDueResult(push=["p1"])],
        down={Channel.PUSH, Channel.EMAIL},
        fallbacks={
            Channel.PUSH: lambda fb: FallBackResult(Channel.EMAIL, ["e1"], fell_back=1),
            Channel.EMAIL: lambda fb: FallBackResult(Channel.SMS, ["s1"], fell_back=1),
        },
    )
    async with _Running(_fake_workers(time_env, fakes, options)):
        result = await _result(await _run_notify(time_env, input))
    assert [f.channel for f in fakes.fell_back] == [Channel.PUSH, Channel.EMAIL]
    assert fakes.fell_back[1].notification_ids == ["e1"]
    assert [s.ids for s in fakes.sent(Channel.SMS)] == [["s1"]]
    assert (result.fell_back, result.fallback_sent, result.failed) == (2, 1, 0)


@pytest.mark.unit
async def test_fake_push_fallback_sends_email_and_sms_beside_it(time_env, task_queue) -> None:
    options = _options(task_queue, push_deadline_seconds=30)
    input = await _notify_input(time_env, options)
    fakes = FakeNotify(
        plan=PlanNotificationsResult(planned=2, skipped=0, next_due=input.created_at),
        dispatches=[DispatchDueResult(push=["p1", "p2"])],
        down={Channel.PUSH},
        fallbacks={
            # p2's recipient takes no email but SMS.
            Channel.PUSH: lambda fb: FallBackResult(
                Channel.EMAIL, ["e1"], fell_back=2, sms_notification_ids=["s2"]
            )
        },
    )
    async with _Running(_fake_workers(time_env, fakes, options)):
        result = await _result(await _run_notify(time_env, input))
    assert [s.ids for s in fakes.sent(Channel.EMAIL)] == [["e1"]]
    assert [s.ids for s in fakes.sent(Channel.SMS)] == [["s2"]]
    assert (result.fell_back, result.fallback_sent) == (2, 2)


@pytest.mark.unit
async def test_fake_refused_send_does_not_fall_back(time_env, task_queue) -> None:
    options = _options(task_queue)
    input = await _notify_input(time_env, options)
    fakes = FakeNotify(
        plan=PlanNotificationsResult(planned=1, skipped=0, next_due=input.created_at),
        dispatches=[DispatchDueResult(push=["p1", "p2"])],
        refuse={Channel.PUSH},
    )
    async with _Running(_fake_workers(time_env, fakes, options)):
        result = await _result(await _run_notify(time_env, input))
    assert len(fakes.sent(Channel.PUSH)) == 1  # non-retryable: one attempt
    assert fakes.fell_back == []
    assert (result.failed, result.fell_back) == (2, 0)


@pytest.mark.unit
async def test_fake_slow_push_does_not_hold_back_the_email_due_meanwhile(
    time_env, task_queue
) -> None:
    # The push retries for an hour; the email digest is due after 2 minutes.
    options = _options(task_queue, push_deadline_seconds=3600, email_delay_seconds=120)
    input = await _notify_input(time_env, options)
    email_due = input.created_at + timedelta(seconds=120)
    fakes = FakeNotify(
        plan=PlanNotificationsResult(planned=2, skipped=0, next_due=input.created_at),
        dispatches=[
            DispatchDueResult(push=["p1"], next_due=email_due),
            DispatchDueResult(digests=[DigestItem("e1", "r1", Channel.EMAIL)]),
        ],
        down={Channel.PUSH},
    )
    async with _Running(_fake_workers(time_env, fakes, options)):
        result = await _result(await _run_notify(time_env, input))
    assert fakes.dispatched[1].now - email_due < timedelta(seconds=5)
    assert fakes.fell_back[0].now - input.created_at >= timedelta(minutes=30)
    assert (result.digested, result.failed) == (1, 1)


async def _start_digest(
    env: WorkflowEnvironment,
    recipient: str,
    channel: Channel,
    options: NotifyOptions,
    ids: list[str],
) -> WorkflowHandle[NotificationDigestWorkflow, NotificationDigestResult]:
    """What queue_digests does: signal-with-start the recipient's digest."""
    return await env.client.start_workflow(
        NotificationDigestWorkflow.run,
        NotificationDigestInput(recipient_id=recipient, channel=channel, options=options),
        id=notify_digest_workflow_id(channel, recipient),
        task_queue=options.task_queue,
        start_signal="add_items",
        start_signal_args=[DigestItems(ids)],
    )


@pytest.mark.unit
async def test_fake_digest_gathers_within_its_window_and_sends_one(time_env, task_queue) -> None:
    options = _options(task_queue, digest_window_seconds=300)
    recipient = str(uuid.uuid4())
    fakes = FakeNotify()
    async with _Running(_fake_workers(time_env, fakes, options)):
        started = await time_env.get_current_time()
        handle = await _start_digest(time_env, recipient, Channel.EMAIL, options, ["e1"])
        await time_env.sleep(60)
        await _start_digest(time_env, recipient, Channel.EMAIL, options, ["e2", "e1"])
        await time_env.sleep(60)
        await handle.signal(NotificationDigestWorkflow.add_items, DigestItems(["e3"]))
        assert await handle.query(NotificationDigestWorkflow.pending) == ["e1", "e2", "e3"]
        result = await _result(handle)
    [prepared] = fakes.prepared
    assert prepared.notification_ids == ["e1", "e2", "e3"]
    assert prepared.recipient_id == recipient and prepared.channel is Channel.EMAIL
    assert prepared.now - started >= timedelta(seconds=300)
    assert [s.ids for s in fakes.sends] == [["digest-1"]]
    assert (result.digests, result.items) == (1, 3)


@pytest.mark.unit
async def test_fake_digest_defers_in_quiet_hours_with_newer_items(time_env, task_queue) -> None:
    options = _options(task_queue, digest_window_seconds=60)
    recipient = str(uuid.uuid4())
    start = await time_env.get_current_time()
    morning = start + timedelta(hours=8)
    fakes = FakeNotify(
        prepares=[
            PrepareDigestResult(defer_until=morning),
            PrepareDigestResult(notification_id="d1", items=2, cancelled=1),
        ]
    )
    async with _Running(_fake_workers(time_env, fakes, options)):
        handle = await _start_digest(time_env, recipient, Channel.SMS, options, ["s1", "s2"])
        await time_env.sleep(timedelta(hours=1))
        await handle.signal(NotificationDigestWorkflow.add_items, DigestItems(["s3"]))
        result = await _result(handle)
    first, second = fakes.prepared
    assert first.notification_ids == ["s1", "s2"]
    assert second.notification_ids == ["s1", "s2", "s3"]
    assert second.now >= morning
    assert [s.ids for s in fakes.sent(Channel.SMS)] == [["d1"]]
    assert (result.digests, result.items, result.cancelled) == (1, 2, 1)


@pytest.mark.unit
async def test_fake_digest_nothing_left_to_send(time_env, task_queue) -> None:
    options = _options(task_queue, digest_window_seconds=60)
    fakes = FakeNotify(prepares=[PrepareDigestResult(cancelled=2)])
    async with _Running(_fake_workers(time_env, fakes, options)):
        handle = await _start_digest(
            time_env, str(uuid.uuid4()), Channel.EMAIL, options, ["e1", "e2"]
        )
        result = await _result(handle)
    assert fakes.sends == []
    assert (result.digests, result.cancelled) == (0, 2)


@pytest.mark.unit
async def test_fake_digest_keeps_going_while_items_arrive_and_carries_pending(
    time_env, task_queue
) -> None:
    options = _options(task_queue, digest_window_seconds=60, email_deadline_seconds=30)
    recipient = str(uuid.uuid4())
    fakes = FakeNotify(down={Channel.EMAIL})
    fakes.fallbacks[Channel.EMAIL] = lambda fb: FallBackResult(fell_back=1, failed=0)
    async with _Running(_fake_workers(time_env, fakes, options)):
        # Started as a continued run: the carried rows are the first window's.
        handle = await time_env.client.start_workflow(
            NotificationDigestWorkflow.run,
            NotificationDigestInput(recipient, Channel.EMAIL, options, pending=["e1"]),
            id=notify_digest_workflow_id(Channel.EMAIL, recipient),
            task_queue=options.task_queue,
        )
        await time_env.sleep(70)  # the first digest's send is retrying now
        await handle.signal(NotificationDigestWorkflow.add_items, DigestItems(["e2"]))
        result = await _result(handle)
    assert [p.notification_ids for p in fakes.prepared] == [["e1"], ["e2"]]
    assert [f.notification_ids for f in fakes.fell_back] == [["digest-1"], ["digest-2"]]
    assert result.digests == 0


def _lifecycle_fakes(
    recipients: int,
    created: bool = True,
    *,
    fakes: FakeNotify | None = None,
    plan_with_broadcast: bool = False,
) -> list[Callable[..., object]]:
    """persist_message and broadcast_message; the broadcast plans (into ``fakes``)
    when ``plan_with_broadcast``, else it answers as a process without a planner
    (or whose planning failed) does: None, and the agenda plans on its own."""

    @activity.defn(name="persist_message")
    async def persist_message(input: PersistMessageInput) -> PersistMessageResult:
        return PersistMessageResult(
            message_id=message_id_for(input.sender_id, input.client_message_id),
            conversation_id=input.conversation_id,
            seq=7,
            created_at=datetime.fromisoformat("2026-01-01T00:00:00+00:00"),
            created=created,
            recipient_count=recipients,
        )

    @activity.defn(name="broadcast_message")
    async def broadcast_message(input: BroadcastMessageInput) -> PlanNotificationsResult | None:
        if fakes is None or not plan_with_broadcast or input.plan is None:
            return None
        fakes.planned_with_broadcast.append(input.plan)
        return fakes.plan

    return [persist_message, broadcast_message]


MENTIONED = "7d4c1b9e-0f5a-4e21-9a3b-2c6d8e0f1a2b"
"""A user id mentioned (mentions are user ids: the lifecycle refuses anything else)."""


@pytest.mark.unit
@pytest.mark.parametrize(
    ("notify", "recipients", "created", "starts", "with_broadcast"),
    [
        (True, 2, True, True, True),
        (True, 2, True, True, False),
        (False, 2, True, False, True),
        (True, 0, True, False, True),
        # The message was already stored (by an attempt whose workflow task was lost):
        # it is planned all the same; the log's deterministic ids make that idempotent.
        (True, 2, False, True, True),
        (True, 2, False, True, False),
    ],
)
async def test_fake_lifecycle_starts_notifications_whoever_stored_the_message(
    time_env, task_queue, notify, recipients, created, starts, with_broadcast
) -> None:
    options = _options(task_queue)
    fakes = FakeNotify()
    send = SendMessageInput(
        conversation_id=str(uuid.uuid4()),
        sender_id=str(uuid.uuid4()),
        client_message_id=f"c-{uuid.uuid4().hex[:8]}",
        body="hello",
        lifecycle_window_seconds=60,
        mentions=[MENTIONED],
        notify=options if notify else None,
    )
    lifecycle = Worker(
        time_env.client,
        task_queue=task_queue,
        workflows=WORKFLOWS,
        # The agenda's plan / dispatch run as local activities of the lifecycle.
        activities=[
            *_lifecycle_fakes(recipients, created, fakes=fakes, plan_with_broadcast=with_broadcast),
            *fakes.notify_activities(),
        ],
    )
    async with _Running([lifecycle, *_fake_workers(time_env, fakes, options)]):
        await time_env.client.execute_workflow(
            MessageLifecycleWorkflow.run, send, id=f"message-{uuid.uuid4()}", task_queue=task_queue
        )
        message_id = message_id_for(send.sender_id, send.client_message_id)
    if not starts:
        assert fakes.planned == fakes.planned_with_broadcast == []
        return
    # Planned once: by the broadcast's local activity when it can, else by the agenda.
    if with_broadcast:
        assert fakes.planned == []
        [plan] = fakes.planned_with_broadcast
    else:
        [plan] = fakes.planned
    assert plan.message.message_id == message_id
    assert (plan.message.seq, plan.message.sender_id, plan.message.mentions) == (
        7,
        send.sender_id,
        [MENTIONED],
    )
    assert plan.message.options == options


@pytest.mark.unit
@pytest.mark.parametrize("settle_fails", [False, True])
async def test_fake_receipt_settles_and_clears_pushes(time_env, task_queue, settle_fails) -> None:
    options = _options(task_queue)
    reader, conversation = str(uuid.uuid4()), str(uuid.uuid4())
    fakes = FakeNotify(
        settled=SettleNotificationsResult(cancelled=2, in_app_read=1, clear_push_ids=["p1"]),
        settle_fails=settle_fails,
    )

    @activity.defn(name="apply_receipt")
    async def apply_receipt(input: ReceiptInput) -> ApplyReceiptResult:
        return ApplyReceiptResult(reader, conversation, input.status, up_to_seq=5, changed=1)

    messages = Worker(
        time_env.client,
        task_queue=task_queue,
        workflows=WORKFLOWS,
        activities=[apply_receipt, *fakes.messages_activities()],
    )
    async with _Running([messages, *_fake_workers(time_env, fakes, options)]):
        result = await time_env.client.execute_workflow(
            ReceiptWorkflow.run,
            ReceiptInput(reader, conversation, ReceiptStatus.READ, up_to_seq=5, notify=options),
            id=f"receipt-{uuid.uuid4()}",
            task_queue=task_queue,
        )
    assert result.changed == 1  # a failed settle does not fail the receipt
    [settle] = fakes.settles
    assert (settle.user_id, settle.conversation_id, settle.up_to_seq, settle.status) == (
        reader,
        conversation,
        5,
        ReceiptStatus.READ,
    )
    assert fakes.clears == ([] if settle_fails else [["p1"]])


@pytest.mark.unit
async def test_fake_receipt_without_notify_options_settles_nothing(time_env, task_queue) -> None:
    fakes = FakeNotify()

    @activity.defn(name="apply_receipt")
    async def apply_receipt(input: ReceiptInput) -> ApplyReceiptResult:
        return ApplyReceiptResult(input.user_id, input.conversation_id, input.status, 5, 1)

    async with Worker(
        time_env.client,
        task_queue=task_queue,
        workflows=WORKFLOWS,
        activities=[apply_receipt, *fakes.messages_activities()],
    ):
        await time_env.client.execute_workflow(
            ReceiptWorkflow.run,
            ReceiptInput(str(uuid.uuid4()), str(uuid.uuid4()), ReceiptStatus.READ, up_to_seq=5),
            id=f"receipt-{uuid.uuid4()}",
            task_queue=task_queue,
        )
    assert fakes.settles == []


# --- end to end: real activities, database and provider sinks -------------------------------

MAIL_DOMAIN = "missive.example"
CY_PHONE = "+14155550101"


class Emitted:
    """An Emitter that records what it is asked to emit (the Socket.IO side)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any], str | None]] = []

    async def emit(self, event: str, data: Any, *, room: str | None = None) -> None:
        self.events.append((event, data, room))

    def of(self, event: str, user_id: str) -> list[dict[str, Any]]:
        """The payloads of ``event`` emitted to a user's room."""
        return [d for e, d, room in self.events if e == event and room == user_room(user_id)]


async def _until(predicate: Callable[[], bool], within: float = 15.0) -> None:
    """Waits (real time) for something a worker does asynchronously; fails after ``within``."""
    deadline = asyncio.get_running_loop().time() + within
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not reached within {within} s")
        await asyncio.sleep(0.05)


@dataclass
class Rig:
    """Workers with the real activities over the test's database, and the provider sinks."""

    env: WorkflowEnvironment
    core: Core
    prefs: PreferenceService
    options: NotifyOptions
    messages_queue: str
    fcm: FcmSink
    twilio: TwilioSink
    inbox: Inbox
    emitted: Emitted
    users: dict[str, str] = field(default_factory=dict)
    conversation: str = ""
    sent: int = 0

    async def user(
        self,
        handle: str,
        *,
        device: bool = False,
        email: bool = True,
        phone: str | None = None,
        timezone: str = "UTC",
        prefs: NotificationPreferences | None = None,
    ) -> str:
        """A user (display name: the handle capitalised) with what it takes to reach them."""
        uid = await self.core.directory.create_user(
            NewUser(
                handle=handle,
                display_name=handle.capitalize(),
                email=f"{handle}@{MAIL_DOMAIN}" if email else None,
                phone=phone,
                timezone=timezone,
            )
        )
        self.users[handle] = uid
        if device:
            await self.prefs.register_device(uid, "android", f"{handle}-token")
        if prefs is not None:
            await self.prefs.set_user(uid, prefs)
        return uid

    async def group(self, title: str = "ops") -> str:
        """A standard group of every user so far."""
        self.conversation = await self.core.directory.create_conversation(
            kind=ConversationKind.GROUP,
            members=list(self.users.values()),
            title=title,
            owner_id=next(iter(self.users.values())),
        )
        return self.conversation

    async def send(
        self, sender: str = "ana", body: str = "deploy done", *, mentions: list[str] | None = None
    ) -> tuple[WorkflowHandle[NotifyMessageWorkflow, NotifyMessageResult], PersistMessageResult]:
        """Stores a message and starts its notifications, as the lifecycle does.

        Its delays count from the server's (skipped) time, as they do from the
        storing time in production, where both clocks agree.
        """
        self.sent += 1
        stored = await self.core.messages.persist(
            PersistMessageInput(self.conversation, self.users[sender], f"c-{self.sent}", body)
        )
        input = NotifyMessageInput(
            message_id=stored.message_id,
            conversation_id=self.conversation,
            sender_id=self.users[sender],
            seq=stored.seq,
            created_at=await self.env.get_current_time(),
            mentions=[self.users[m] for m in mentions or []],
            options=self.options,
        )
        return await _run_notify(self.env, input), stored

    async def receipt(
        self, reader: str, status: ReceiptStatus, up_to_seq: int, *, settle: bool = True
    ) -> None:
        """Runs the reader's receipt workflow without skipping time; ``settle``: with
        notification options, so it settles the reader's notifications itself."""
        handle = await self.env.client.start_workflow(
            ReceiptWorkflow.run,
            ReceiptInput(
                self.users[reader],
                self.conversation,
                status,
                up_to_seq=up_to_seq,
                notify=self.options if settle else None,
            ),
            id=f"receipt-{uuid.uuid4()}",
            task_queue=self.messages_queue,
        )
        with self.env.auto_time_skipping_disabled():
            await _result(handle)

    async def rows(
        self, stored: PersistMessageResult
    ) -> dict[tuple[str, Channel], NotificationRow]:
        """The message's log rows by (recipient handle, channel)."""
        handles = {uid: handle for handle, uid in self.users.items()}
        return {
            (handles[str(r.recipient_id)], Channel(r.channel)): r
            for r in await self.core.notifications.rows(message_id=stored.message_id)
        }

    def pushes(self, handle: str) -> list[dict[str, Any]]:
        """What FCM received for the user's device."""
        token = f"{handle}-token"
        return [m["message"] for m in self.fcm.received if m["message"]["token"] == token]

    def texts(self, phone: str) -> list[dict[str, Any]]:
        """What Twilio received for a number."""
        return [m for m in self.twilio.received if m["to"] == phone]

    async def digest(self, channel: Channel, handle: str) -> NotificationDigestResult:
        """The result of the user's digest workflow on ``channel`` (skipping time)."""
        return await _result(
            self.env.client.get_workflow_handle_for(
                NotificationDigestWorkflow.run,
                notify_digest_workflow_id(channel, self.users[handle]),
            )
        )


@pytest.fixture
async def rig(
    time_env: WorkflowEnvironment, core: Core, database_url: str, task_queue: str
) -> AsyncIterator[Rig]:
    fcm, twilio, inbox = FcmSink(), TwilioSink(), Inbox()
    smtp_port = free_port()
    smtp = start_smtp(inbox, smtp_port)
    emitted = Emitted()
    options = _options(
        task_queue,
        grace_seconds=60,
        email_delay_seconds=900,
        sms_delay_seconds=3600,
        digest_window_seconds=60,
        push_deadline_seconds=120,
    )
    async with AsyncExitStack() as stack:
        stack.callback(smtp.stop)
        fcm_runner, fcm_url = await serve(fcm.app())
        stack.push_async_callback(fcm_runner.cleanup)
        twilio_runner, twilio_url = await serve(twilio.app())
        stack.push_async_callback(twilio_runner.cleanup)
        settings = base_settings(
            database_url=database_url,
            fcm_endpoint=fcm_url,
            twilio_base_url=twilio_url,
            smtp_host="127.0.0.1",
            smtp_port=smtp_port,
            email_from=f"Missive <notify@{MAIL_DOMAIN}>",
        )
        client = time_env.client
        notify = NotifyActivities(core.notifications, client=client, emitter=emitted)
        channels = ChannelActivities(open_notify(settings, core, stack))
        workers = [
            Worker(
                client,
                task_queue=options.task_queue,
                workflows=NOTIFY_WORKFLOWS,
                activities=[
                    notify.plan_notifications,
                    notify.dispatch_due,
                    notify.fall_back,
                    notify.prepare_digest,
                    notify.queue_digests,
                ],
            ),
            Worker(
                client,
                task_queue=options.push_task_queue,
                activities=[channels.send_push, channels.clear_pushes],
            ),
            Worker(client, task_queue=options.email_task_queue, activities=[channels.send_email]),
            Worker(client, task_queue=options.sms_task_queue, activities=[channels.send_sms]),
            Worker(
                client,
                task_queue=task_queue,
                workflows=WORKFLOWS,
                activities=activity_methods(message_activities(core, emitted)),
            ),
        ]
        for worker in workers:
            await stack.enter_async_context(worker)
        yield Rig(
            env=time_env,
            core=core,
            prefs=PreferenceService(session_factory(core.engine)),
            options=options,
            messages_queue=task_queue,
            fcm=fcm,
            twilio=twilio,
            inbox=inbox,
            emitted=emitted,
        )


NO_EMAIL = NotificationPreferences(email=False)
"""Push and in-app only: the test is about push."""


@pytest.mark.integration
async def test_push_after_the_grace_period_when_not_delivered(rig: Rig) -> None:
    await rig.user("ana")
    await rig.user("ben", device=True, prefs=NO_EMAIL)
    await rig.group()
    handle, stored = await rig.send()
    # In-app at once; the push waits for the grace period.
    await _until(lambda: len(rig.emitted.of(EVENT_NOTIFICATION_NEW, rig.users["ben"])) == 1)
    await rig.env.sleep(timedelta(seconds=50))
    await asyncio.sleep(0.5)
    assert rig.pushes("ben") == []
    result = await _result(handle)

    [push] = rig.pushes("ben")
    assert push["notification"] == {"title": "Ana in #ops", "body": "deploy done"}
    assert push["data"]["message_id"] == stored.message_id
    rows = await rig.rows(stored)
    assert rows[("ben", Channel.PUSH)].status is NotificationStatus.SENT
    assert rows[("ben", Channel.IN_APP)].status is NotificationStatus.SENT
    assert ("ben", Channel.EMAIL) not in rows
    [event] = rig.emitted.of(EVENT_NOTIFICATION_NEW, rig.users["ben"])
    assert event["message_id"] == stored.message_id and event["unread_count"] == 1
    assert "deploy" not in str(event)  # no message text in events
    assert (result.planned, result.in_app, result.pushed) == (2, 1, 1)


@pytest.mark.integration
async def test_no_push_when_delivered_within_the_grace_period(rig: Rig) -> None:
    await rig.user("ana")
    await rig.user("ben", device=True, prefs=NO_EMAIL)
    await rig.group()
    handle, stored = await rig.send()
    await rig.env.sleep(timedelta(seconds=30))
    # Not settled by the receipt: the workflow finds it delivered when the push falls due.
    await rig.receipt("ben", ReceiptStatus.DELIVERED, stored.seq, settle=False)
    result = await _result(handle)

    assert rig.fcm.received == []
    push = (await rig.rows(stored))[("ben", Channel.PUSH)]
    assert (push.status, push.reason) == (NotificationStatus.CANCELLED, "delivered")
    assert (result.pushed, result.cancelled) == (0, 1)


@pytest.mark.integration
async def test_escalation_push_then_email_digest_then_sms_for_the_opted_in(rig: Rig) -> None:
    await rig.user("ana")
    await rig.user("ben", device=True, phone="+14155550100")  # SMS is off by default
    await rig.user("cy", device=True, phone=CY_PHONE, prefs=NotificationPreferences(sms=True))
    await rig.group()
    handle, stored = await rig.send()
    created = await rig.env.get_current_time()

    await rig.env.sleep(timedelta(seconds=120))
    await _until(lambda: len(rig.fcm.received) == 2)
    assert rig.inbox.emails == [] and rig.twilio.received == []

    await rig.env.sleep(timedelta(seconds=900))  # past the email delay and the digest window
    await _until(lambda: len(rig.inbox.emails) == 2)
    assert rig.twilio.received == []

    result = await _result(handle)
    assert (await rig.digest(Channel.SMS, "cy")).digests == 1
    assert (await rig.digest(Channel.EMAIL, "ben")).digests == 1
    assert [m["Subject"] for m in rig.inbox.to(f"ben@{MAIL_DOMAIN}")] == [
        "New message from Ana in #ops"
    ]
    assert len(rig.inbox.to(f"cy@{MAIL_DOMAIN}")) == 1
    [text] = rig.texts(CY_PHONE)
    assert "Ana" in text["body"]
    assert rig.texts("+14155550100") == []

    rows = await rig.rows(stored)
    assert ("ben", Channel.SMS) not in rows
    grace, email, sms = (timedelta(seconds=s) for s in (60, 900, 3600))
    for who in ("ben", "cy"):
        assert abs(rows[(who, Channel.PUSH)].due_at - (created + grace)) < timedelta(seconds=2)
        assert abs(rows[(who, Channel.EMAIL)].due_at - (created + email)) < timedelta(seconds=2)
        assert rows[(who, Channel.EMAIL)].status is NotificationStatus.DIGESTED
    assert abs(rows[("cy", Channel.SMS)].due_at - (created + sms)) < timedelta(seconds=2)
    assert rows[("cy", Channel.SMS)].status is NotificationStatus.DIGESTED
    assert (result.pushed, result.digested, result.in_app) == (2, 3, 2)


@pytest.mark.integration
async def test_read_before_the_grace_period_cancels_everything(rig: Rig) -> None:
    await rig.user("ana")
    await rig.user("ben", device=True)
    await rig.group()
    handle, stored = await rig.send()
    await _until(lambda: len(rig.emitted.of(EVENT_NOTIFICATION_NEW, rig.users["ben"])) == 1)
    await rig.receipt("ben", ReceiptStatus.READ, stored.seq)
    result = await _result(handle)

    assert rig.fcm.received == [] and rig.inbox.emails == []
    rows = await rig.rows(stored)
    for channel in (Channel.PUSH, Channel.EMAIL):
        assert (rows[("ben", channel)].status, rows[("ben", channel)].reason) == (
            NotificationStatus.CANCELLED,
            "read",
        )
    assert rows[("ben", Channel.IN_APP)].read_at is not None
    [unread] = rig.emitted.of(EVENT_NOTIFICATION_UNREAD, rig.users["ben"])
    assert unread["unread_count"] == 0
    assert (result.pushed, result.digested) == (0, 0)


@pytest.mark.integration
async def test_read_after_the_push_clears_it_from_the_devices(rig: Rig) -> None:
    await rig.user("ana")
    await rig.user("ben", device=True)
    await rig.group()
    handle, stored = await rig.send()
    await rig.env.sleep(timedelta(seconds=65))
    await _until(lambda: len(rig.pushes("ben")) == 1)

    await rig.receipt("ben", ReceiptStatus.READ, stored.seq)
    await _until(lambda: len(rig.pushes("ben")) == 2)
    shown, clear = rig.pushes("ben")
    assert "notification" not in clear  # data only: nothing shown
    assert clear["data"] == {
        "type": "clear",
        "conversation_id": rig.conversation,
        "up_to_seq": str(stored.seq),
    }
    assert clear["android"] == shown["android"] == {"collapse_key": f"conv-{rig.conversation}"}
    result = await _result(handle)
    rows = await rig.rows(stored)
    assert rows[("ben", Channel.PUSH)].cleared_at is not None
    assert rows[("ben", Channel.EMAIL)].status is NotificationStatus.CANCELLED
    assert rig.inbox.emails == []
    assert (result.pushed, result.digested) == (1, 0)


def _quiet_around(now: datetime, zone: str, *, mentions: bool = False) -> NotificationPreferences:
    """Quiet hours from an hour before ``now`` to two hours after it, in ``zone``'s wall time."""
    local = now.astimezone(ZoneInfo(zone))
    return NotificationPreferences(
        email=False,
        quiet_start=(local - timedelta(hours=1)).strftime("%H:%M"),
        quiet_end=(local + timedelta(hours=2)).strftime("%H:%M"),
        quiet_mentions=mentions,
    )


def _quiet_end(now: datetime, zone: str, *, hours: int = 2) -> datetime:
    """The instant the quiet hours of _quiet_around end: the wall time's minute, in ``zone``."""
    local = now.astimezone(ZoneInfo(zone)) + timedelta(hours=hours)
    return local.replace(second=0, microsecond=0).astimezone(UTC)


@pytest.mark.integration
async def test_quiet_hours_defer_to_their_end_in_the_users_timezone(rig: Rig) -> None:
    now = await rig.env.get_current_time()
    await rig.user("ana")
    await rig.user(
        "ben", device=True, timezone="Asia/Tokyo", prefs=_quiet_around(now, "Asia/Tokyo")
    )
    await rig.group()
    handle, stored = await rig.send()

    await rig.env.sleep(timedelta(minutes=90))
    await asyncio.sleep(0.5)
    assert rig.pushes("ben") == []
    push = (await rig.rows(stored))[("ben", Channel.PUSH)]
    assert push.status is NotificationStatus.PENDING
    assert push.due_at == _quiet_end(now, "Asia/Tokyo")
    assert "quiet hours" in (push.reason or "")

    result = await _result(handle)
    assert len(rig.pushes("ben")) == 1
    assert (await rig.rows(stored))[("ben", Channel.PUSH)].status is NotificationStatus.SENT
    assert result.pushed == 1


@pytest.mark.integration
async def test_quiet_hours_follow_a_timezone_change_during_the_deferral(rig: Rig) -> None:
    now = await rig.env.get_current_time()
    await rig.user("ana")
    await rig.user(
        "ben", device=True, timezone="Asia/Tokyo", prefs=_quiet_around(now, "Asia/Tokyo")
    )
    await rig.group()
    handle, stored = await rig.send()
    await rig.env.sleep(timedelta(minutes=10))
    # Ben flies to Bangkok (two hours behind Tokyo): at the end of Tokyo's quiet hours
    # it is only the start of Bangkok's, which end two hours later.
    await rig.prefs.set_timezone(rig.users["ben"], "Asia/Bangkok")
    await rig.env.sleep(timedelta(minutes=150))
    await asyncio.sleep(0.5)
    assert rig.pushes("ben") == []
    push = (await rig.rows(stored))[("ben", Channel.PUSH)]
    assert push.status is NotificationStatus.PENDING
    assert push.due_at == _quiet_end(now, "Asia/Tokyo", hours=4)

    result = await _result(handle)
    assert len(rig.pushes("ben")) == 1 and result.pushed == 1


@pytest.mark.integration
async def test_mentions_break_through_quiet_hours_only_when_chosen(rig: Rig) -> None:
    now = await rig.env.get_current_time()
    await rig.user("ana")
    await rig.user("ben", device=True, prefs=_quiet_around(now, "UTC", mentions=True))
    await rig.user("cy", device=True, prefs=_quiet_around(now, "UTC", mentions=False))
    await rig.group()
    handle, stored = await rig.send(mentions=["ben", "cy"])
    await rig.env.sleep(timedelta(seconds=90))
    await _until(lambda: len(rig.pushes("ben")) == 1)
    await asyncio.sleep(0.5)
    assert rig.pushes("cy") == []
    assert rig.pushes("ben")[0]["notification"]["title"] == "Ana mentioned you in #ops"
    rows = await rig.rows(stored)
    assert rows[("cy", Channel.PUSH)].due_at == _quiet_end(now, "UTC")
    assert rows[("ben", Channel.PUSH)].mention

    result = await _result(handle)
    assert len(rig.pushes("cy")) == 1 and result.pushed == 2


@pytest.mark.integration
async def test_three_messages_within_the_window_make_one_digest_email(rig: Rig) -> None:
    await rig.user("ana")
    await rig.user("ben", prefs=NotificationPreferences(push=False))
    await rig.group()
    runs = []
    for body in ("one", "two", "three"):
        runs.append(await rig.send(body=body))
        await rig.env.sleep(timedelta(seconds=20))
    results = [await _result(handle) for handle, _ in runs]
    digest = await rig.digest(Channel.EMAIL, "ben")

    [mail] = rig.inbox.to(f"ben@{MAIL_DOMAIN}")
    assert mail["Subject"] == "3 new messages from Ana in #ops"
    assert len(rig.inbox.emails) == 1
    assert (digest.digests, digest.items) == (1, 3)
    assert [r.digested for r in results] == [1, 1, 1]
    rows = [(await rig.rows(stored))[("ben", Channel.EMAIL)] for _, stored in runs]
    assert {r.status for r in rows} == {NotificationStatus.DIGESTED}
    assert len({r.digest_id for r in rows}) == 1


@pytest.mark.integration
async def test_push_down_past_its_deadline_falls_back_to_email(rig: Rig) -> None:
    await rig.user("ana")
    await rig.user("ben", device=True)
    await rig.group()
    rig.fcm.fail("ben-token", Failure.SERVER_ERROR)
    handle, stored = await rig.send()
    # Grace 60 s, then FCM answers 500 until the push deadline (120 s): email instead.
    await rig.env.sleep(timedelta(seconds=400))
    await _until(lambda: len(rig.inbox.emails) == 1)
    [mail] = rig.inbox.to(f"ben@{MAIL_DOMAIN}")
    assert mail["Subject"] == "New message from Ana in #ops"
    assert rig.fcm.received == []

    rows = {
        r.channel: r
        for r in await rig.core.notifications.rows(message_id=stored.message_id)
        if r.status in (NotificationStatus.FELL_BACK, NotificationStatus.SENT)
    }
    push, email = rows[Channel.PUSH], rows[Channel.EMAIL]
    assert push.status is NotificationStatus.FELL_BACK
    assert "push still failing after 120 s" in (push.reason or "")
    assert push.attempts > 1
    assert (email.status, email.source_id) == (NotificationStatus.SENT, push.id)

    await rig.receipt("ben", ReceiptStatus.READ, stored.seq)  # the planned email is not needed
    result = await _result(handle)
    assert (result.pushed, result.fell_back, result.fallback_sent) == (0, 1, 1)
    assert len(rig.inbox.emails) == 1


@pytest.mark.integration
async def test_nothing_to_send_to_is_recorded_skipped_and_the_workflow_completes(
    rig: Rig,
) -> None:
    await rig.user("ana")
    await rig.user("ben", prefs=NO_EMAIL)  # push on, no device
    await rig.user("cy", email=False, prefs=NotificationPreferences(push=False))
    await rig.user(
        "dee",
        device=True,
        prefs=NotificationPreferences(in_app=False, push=False, email=False, sms=False),
    )
    await rig.group()
    handle, stored = await rig.send()
    result = await _result(handle)

    rows = await rig.rows(stored)
    skipped = {
        key: row.reason for key, row in rows.items() if row.status is NotificationStatus.SKIPPED
    }
    assert skipped == {
        ("ben", Channel.PUSH): "no push device registered",
        ("cy", Channel.EMAIL): "no email address",
        ("dee", Channel.IN_APP): "every notification channel is off",
    }
    assert rig.fcm.received == [] and rig.inbox.emails == []
    assert result.skipped == 3 and result.in_app == 2


@pytest.mark.integration
async def test_lifecycle_starts_the_notifications_of_a_new_message(rig: Rig) -> None:
    await rig.user("ana")
    await rig.user("ben", device=True, prefs=NO_EMAIL)
    await rig.group()
    send = SendMessageInput(
        conversation_id=rig.conversation,
        sender_id=rig.users["ana"],
        client_message_id="c-lifecycle",
        body="deploy done",
        lifecycle_window_seconds=600,
        mentions=[rig.users["ben"]],
        notify=rig.options,
    )
    lifecycle = await rig.env.client.start_workflow(
        MessageLifecycleWorkflow.run,
        send,
        id=f"message-{uuid.uuid4()}",
        task_queue=rig.messages_queue,
    )
    # The lifecycle runs the agenda itself: in-app at once, push after the grace
    # period (ben never receives it), then the window ends and so does the lifecycle.
    result = await _result(lifecycle)
    assert result.phase is LifecyclePhase.WINDOW_ELAPSED
    assert len(rig.emitted.of(EVENT_NOTIFICATION_NEW, rig.users["ben"])) == 1
    [push] = rig.pushes("ben")
    assert push["notification"]["title"] == "Ana mentioned you in #ops"
