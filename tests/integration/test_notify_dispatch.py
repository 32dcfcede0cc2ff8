"""ChannelSenders against real local providers: the FCM and Twilio sinks and an SMTP server.

Rows are planned and dispatched through the notification log as the workflows do,
then sent; the assertions are what a user or an operator would check: what reached
the provider, the log rows, the devices table.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
from sqlalchemy import text
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment

from activities.messages import MessageActivities
from activities.notify import NotifyActivities
from fakes import Failure, FcmSink, Inbox, TwilioSink, serve, start_smtp
from missive.broadcast import Broadcaster
from missive.config import Settings
from missive.constants import (
    EVENT_MESSAGE_NEW,
    EVENT_NOTIFICATION_NEW,
    EVENT_NOTIFICATION_UNREAD,
    conversation_room,
    notify_digest_workflow_id,
    notify_message_workflow_id,
    user_room,
)
from missive.db import session_factory
from missive.errors import InvalidInput, ProviderUnavailable, RateLimited
from missive.metrics import Metrics
from missive.models import ConversationKind, EncryptionMode
from missive.notify.dispatch import SEND_WITHIN, ChannelSenders
from missive.notify.log import CLAIM_LEASE, Outcome
from missive.notify.mail import EmailSender, message_id
from missive.notify.options import notify_options
from missive.notify.preferences import PreferenceService
from missive.notify.push import PushSender, _StaticSinkCredentials
from missive.notify.quota import ChannelRate, ProviderQuota
from missive.notify.sms import SmsSender
from missive.schemas import (
    BroadcastMessageInput,
    Channel,
    DigestItem,
    DigestItems,
    DispatchDueInput,
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
    QueueDigestsInput,
    ReceiptStatus,
    SettleNotificationsInput,
)
from runtime.notify import notify_workers, open_notify
from runtime.wiring import Core, message_activities
from tests.conftest import base_settings, free_port

pytestmark = pytest.mark.integration

PROJECT = "missive-test"
MAIL_DOMAIN = "missive.example"
BEN_PHONE = "+14155550100"
CY_PHONE = "+14155550101"
OPTIONS = NotifyOptions()
E2E_TIMEOUT = 60.0
"""Seconds the end-to-end test waits for a workflow (time skips; this is wall time)."""
LATER = timedelta(hours=2)
"""Past every channel's delay (push 60 s, email 15 min, SMS 1 h)."""


# --- providers ----------------------------------------------------------------------------


@pytest.fixture
async def twilio() -> AsyncIterator[tuple[TwilioSink, str]]:
    sink = TwilioSink()
    runner, url = await serve(sink.app())
    yield sink, url
    await runner.cleanup()


@pytest.fixture
def smtp_port() -> int:
    return free_port()


@pytest.fixture
def inbox(smtp_port: int) -> Iterator[Inbox]:
    inbox = Inbox()
    controller = start_smtp(inbox, smtp_port)
    yield inbox
    controller.stop()


@dataclass
class Senders:
    senders: ChannelSenders
    metrics: Metrics
    sms: SmsSender


@pytest.fixture
async def channels(
    core: Core, fcm: tuple[FcmSink, str], twilio: tuple[TwilioSink, str], smtp_port: int
) -> AsyncIterator[Senders]:
    """ChannelSenders over the sinks; the SMTP server is whatever listens on smtp_port."""
    push = PushSender(project_id=PROJECT, credentials=_StaticSinkCredentials(), endpoint=fcm[1])
    email = EmailSender(
        host="127.0.0.1", port=smtp_port, sender=f"Missive <notify@{MAIL_DOMAIN}>", timeout=5
    )
    sms = SmsSender(
        account_sid="ACtest", auth_token="secret", from_number="+15005550006", base_url=twilio[1]
    )
    metrics = Metrics()
    senders = ChannelSenders(
        core.notifications,
        core.messages,
        push=push,
        email=email,
        sms=sms,
        devices=core.preferences,
        metrics=metrics,
    )
    yield Senders(senders, metrics, sms)
    await sms.close()


def counted(metrics: Metrics, channel: str, outcome: str) -> float:
    value = metrics.registry.get_sample_value(
        "missive_notifications_total", {"channel": channel, "outcome": outcome}
    )
    return value or 0.0


# --- the world: ana writes to ben and cy ----------------------------------------------------


@dataclass
class World:
    ana: str
    ben: str
    cy: str
    ops: str
    """A standard group titled "ops" of the three."""
    prefs: PreferenceService


@pytest.fixture
async def world(core: Core) -> World:
    from missive.services.directory import NewUser

    ana = await core.directory.create_user(NewUser(handle="ana", display_name="Ana"))
    ben = await core.directory.create_user(
        NewUser(handle="ben", display_name="Ben", email="ben@example.com", phone=BEN_PHONE)
    )
    cy = await core.directory.create_user(
        NewUser(handle="cy", display_name="Cy", email="cy@example.com", phone=CY_PHONE)
    )
    ops = await core.directory.create_conversation(
        kind=ConversationKind.GROUP, members=[ana, ben, cy], title="ops", owner_id=ana
    )
    prefs = PreferenceService(session_factory(core.engine))
    await prefs.register_device(ben, "android", "ben-phone-token")
    await prefs.register_device(ben, "ios", "ben-tablet-token")
    await prefs.register_device(cy, "android", "cy-only-token")
    return World(ana, ben, cy, ops, prefs)


@dataclass
class Planned:
    message_id: str
    at: datetime
    push: dict[str, str]
    """recipient -> push row."""
    digests: dict[tuple[Channel, str], str]
    """(channel, recipient) -> digest row, prepared like NotificationDigestWorkflow does."""


async def send_and_plan(
    core: Core,
    sender: str,
    conversation_id: str,
    body: str,
    *,
    cmid: str = "c-1",
    e2e_header: dict[str, Any] | None = None,
) -> Planned:
    """Persists a message, plans it, dispatches everything due and prepares the digests."""
    stored = await core.messages.persist(
        PersistMessageInput(
            conversation_id=conversation_id,
            sender_id=sender,
            client_message_id=cmid,
            body=body,
            e2e_header=e2e_header,
        )
    )
    log = core.notifications
    message = NotifyMessageInput(
        message_id=stored.message_id,
        conversation_id=conversation_id,
        sender_id=sender,
        seq=stored.seq,
        created_at=stored.created_at,
        options=OPTIONS,
    )
    await log.plan(PlanNotificationsInput(message=message, now=stored.created_at))
    at = stored.created_at + LATER
    due, _ = await log.dispatch_due(
        DispatchDueInput(message_id=stored.message_id, options=OPTIONS, now=at)
    )
    rows = {row.id: row for row in await log.rows(message_id=stored.message_id)}
    push = {str(rows[i].recipient_id): i for i in due.push}
    digests: dict[tuple[Channel, str], str] = {}
    for item in due.digests:
        prepared = await log.prepare_digest(
            PrepareDigestInput(
                recipient_id=item.recipient_id,
                channel=item.channel,
                notification_ids=[item.notification_id],
                now=at,
            )
        )
        assert prepared.notification_id is not None, prepared
        digests[(Channel(item.channel), item.recipient_id)] = prepared.notification_id
    return Planned(stored.message_id, at, push, digests)


async def row(core: Core, notification_id: str) -> Any:
    async with core.engine.connect() as conn:
        return (
            await conn.execute(
                text("SELECT * FROM notifications WHERE id = :id"), {"id": notification_id}
            )
        ).one()


async def tokens_of(core: Core, user_id: str) -> set[str]:
    async with core.engine.connect() as conn:
        result = await conn.execute(
            text("SELECT push_token FROM devices WHERE user_id = :u"), {"u": user_id}
        )
        return set(result.scalars())


def pushes_to(sink: FcmSink, token: str) -> list[dict[str, Any]]:
    return [m["message"] for m in sink.received if m["message"]["token"] == token]


# --- push ---------------------------------------------------------------------------------


async def _start_notify(
    client: Client, stored: PersistMessageResult, sender: str, options: NotifyOptions
) -> WorkflowHandle[Any, NotifyMessageResult]:
    """Starts a stored message's NotifyMessageWorkflow on the options' queue."""
    from workflows.notify_message import NotifyMessageWorkflow

    return await client.start_workflow(
        NotifyMessageWorkflow.run,
        NotifyMessageInput(
            message_id=stored.message_id,
            conversation_id=stored.conversation_id,
            sender_id=sender,
            seq=stored.seq,
            created_at=stored.created_at,
            options=options,
        ),
        id=notify_message_workflow_id(stored.message_id),
        task_queue=options.task_queue,
    )


def _own_queues(settings: Settings, task_queue: str) -> NotifyOptions:
    """The notification options with queues of this test's own, on the session's dev server."""
    return dataclasses.replace(
        notify_options(settings),
        task_queue=f"{task_queue}-notify",
        push_task_queue=f"{task_queue}-push",
        email_task_queue=f"{task_queue}-email",
        sms_task_queue=f"{task_queue}-sms",
    )


async def test_push_reaches_fcm_with_collapse_key_and_data(
    core: Core, world: World, channels: Senders, fcm: tuple[FcmSink, str]
) -> None:
    sink, _ = fcm
    planned = await send_and_plan(core, world.ana, world.ops, "deploy   done")
    ids = list(planned.push.values())
    result = await channels.senders.send_push(ids)
    assert (result.sent, result.failed, result.removed_tokens) == (2, 0, 0)

    [phone] = pushes_to(sink, "ben-phone-token")
    [tablet] = pushes_to(sink, "ben-tablet-token")
    [cy] = pushes_to(sink, "cy-only-token")
    ben_row = planned.push[world.ben]
    assert phone["notification"] == {"title": "Ana in #ops", "body": "deploy done"}
    assert phone["android"] == {"collapse_key": f"conv-{world.ops}"}
    assert phone["apns"] == {"headers": {"apns-collapse-id": f"conv-{world.ops}"}}
    assert phone["data"] == {
        "type": "message",
        "message_id": planned.message_id,
        "conversation_id": world.ops,
        "seq": "1",
        "notification_id": ben_row,
    }
    assert tablet["data"] == phone["data"]
    assert cy["data"]["notification_id"] == planned.push[world.cy]

    stored = await row(core, ben_row)
    assert stored.status == NotificationStatus.SENT
    assert stored.provider_ref.startswith(f"projects/{PROJECT}/messages/")
    assert stored.sent_at is not None and stored.attempts == 1
    assert counted(channels.metrics, "push", "sent") == 2

    # A retry of the activity (or a replay) sends nothing again.
    again = await channels.senders.send_push(ids)
    assert again.sent == 0
    assert len(sink.received) == 3


async def test_unregistered_token_deletes_the_device_and_other_devices_still_get_it(
    core: Core, world: World, channels: Senders, fcm: tuple[FcmSink, str]
) -> None:
    sink, _ = fcm
    sink.fail("ben-phone-token", Failure.INVALID_RECIPIENT)
    sink.fail("cy-only-token", Failure.INVALID_ARGUMENT)
    planned = await send_and_plan(core, world.ana, world.ops, "hello")
    result = await channels.senders.send_push(list(planned.push.values()))

    assert (result.sent, result.failed, result.removed_tokens) == (1, 1, 2)
    assert [m["token"] for m in (m["message"] for m in sink.received)] == ["ben-tablet-token"]
    assert await tokens_of(core, world.ben) == {"ben-tablet-token"}
    assert await tokens_of(core, world.cy) == set()
    assert (await row(core, planned.push[world.ben])).status == NotificationStatus.SENT
    cy_row = await row(core, planned.push[world.cy])
    assert cy_row.status == NotificationStatus.FAILED
    assert "every push token" in cy_row.reason
    assert counted(channels.metrics, "push", "failed") == 1


async def test_rate_limit_raises_with_retry_after_and_only_the_unsent_row_goes_again(
    core: Core, world: World, channels: Senders, fcm: tuple[FcmSink, str]
) -> None:
    sink, _ = fcm
    sink.fail("cy-only-token", Failure.RATE_LIMITED, retry_after=7, times=1)
    planned = await send_and_plan(core, world.ana, world.ops, "hello")
    ids = list(planned.push.values())

    with pytest.raises(RateLimited) as caught:
        await channels.senders.send_push(ids)
    assert caught.value.retry_after == 7
    cy_row = await row(core, planned.push[world.cy])
    assert cy_row.status == NotificationStatus.QUEUED
    assert "rate limit" in cy_row.reason
    assert (await row(core, planned.push[world.ben])).status == NotificationStatus.SENT
    assert len(sink.received) == 2  # ben's two devices
    assert counted(channels.metrics, "push", "retry") == 1

    # The activity's retry: only cy's row goes out.
    result = await channels.senders.send_push(ids)
    assert result.sent == 1
    assert [m["message"]["token"] for m in sink.received[2:]] == ["cy-only-token"]
    cy_row = await row(core, planned.push[world.cy])
    assert (cy_row.status, cy_row.attempts) == (NotificationStatus.SENT, 2)


def _senders_at(
    core: Core, channels: Senders, clock: Any, log: Any = None, quota: Any = None
) -> ChannelSenders:
    """The fixture's providers with another clock (and log, and quota)."""
    s = channels.senders
    return ChannelSenders(
        log or core.notifications,
        core.messages,
        push=s._push,
        email=s._email,
        sms=s._sms,
        devices=core.preferences,
        quota=quota,
        metrics=channels.metrics,
        clock=clock,
    )


async def test_rows_past_the_provider_quota_are_queued_again_and_sent_once_later(
    core: Core, world: World, channels: Senders, fcm: tuple[FcmSink, str]
) -> None:
    sink, _ = fcm
    quota = ProviderQuota(
        session_factory(core.engine),
        {Channel.PUSH: ChannelRate(per_second=2, burst=1)},
        horizon=0,  # nothing reserved ahead: one row now, the next half a second later
    )
    senders = _senders_at(core, channels, None, quota=quota)
    planned = await send_and_plan(core, world.ana, world.ops, "hello")
    ids = list(planned.push.values())  # ben's row (two devices) and cy's

    with pytest.raises(RateLimited) as caught:
        await senders.send_push(ids)
    assert caught.value.retry_after is not None and 0 < caught.value.retry_after <= 0.5
    statuses = sorted([(await row(core, i)).status for i in ids])
    assert statuses == [NotificationStatus.QUEUED, NotificationStatus.SENT]
    [waiting] = [i for i in ids if (await row(core, i)).status == NotificationStatus.QUEUED]
    assert "quota" in (await row(core, waiting)).reason
    first = len(sink.received)

    await asyncio.sleep(caught.value.retry_after)  # the activity's next_retry_delay
    result = await senders.send_push(ids)
    assert result.sent == 1  # only the queued row: the sent one is not claimed again
    assert {(await row(core, i)).status for i in ids} == {NotificationStatus.SENT}
    tokens = sorted(m["message"]["token"] for m in sink.received)
    assert tokens == ["ben-phone-token", "ben-tablet-token", "cy-only-token"]  # once each
    assert first in (1, 2)  # cy's one push or ben's two went first


async def test_a_row_another_attempt_holds_is_sent_only_once_its_claim_lapsed(
    core: Core, world: World, channels: Senders, fcm: tuple[FcmSink, str]
) -> None:
    sink, _ = fcm
    planned = await send_and_plan(core, world.ana, world.ops, "hello")
    ids = list(planned.push.values())
    ben_row = planned.push[world.ben]
    # An attempt claimed ben's row and is still sending it (or retrying its record).
    now = datetime.now(UTC)
    [held], _ = await core.notifications.claim([ben_row], Channel.PUSH, now=now)

    # Another attempt of the same send: cy's row goes, ben's is left to its holder,
    # and the activity fails transiently so Temporal retries it.
    with pytest.raises(ProviderUnavailable, match="being sent by another attempt"):
        await _senders_at(core, channels, lambda: now).send_push(ids)
    assert [m["message"]["token"] for m in sink.received] == ["cy-only-token"]
    assert (await row(core, ben_row)).status == NotificationStatus.SENDING

    # The holder died: once its claim lapsed, a retry sends ben's row, once.
    later = now + CLAIM_LEASE + timedelta(seconds=1)
    result = await _senders_at(core, channels, lambda: later).send_push(ids)
    assert result.sent == 1
    assert sorted(m["message"]["token"] for m in sink.received) == [
        "ben-phone-token",
        "ben-tablet-token",
        "cy-only-token",
    ]
    # The first holder's late outcome does not overwrite the row it no longer owns.
    await core.notifications.record(
        [Outcome(ben_row, NotificationStatus.QUEUED, "late", claim=held.attempts)], now=later
    )
    stored = await row(core, ben_row)
    assert (stored.status, stored.attempts) == (NotificationStatus.SENT, 2)


class Restarting:
    """``target`` whose ``method`` fails its first ``failures`` calls, as during a
    PostgreSQL restart; everything else passes through."""

    def __init__(self, target: Any, method: str, failures: int = 2) -> None:
        self.failures = failures
        self._target, self._method = target, method

    def __getattr__(self, name: str) -> Any:
        found = getattr(self._target, name)
        if name != self._method:
            return found

        async def failing_first(*args: Any, **kwargs: Any) -> Any:
            if self.failures:
                self.failures -= 1
                raise ConnectionRefusedError("PostgreSQL is restarting")
            return await found(*args, **kwargs)

        return failing_first


async def test_outcomes_are_recorded_through_a_database_outage_and_never_sent_twice(
    core: Core, world: World, channels: Senders, fcm: tuple[FcmSink, str]
) -> None:
    sink, _ = fcm
    planned = await send_and_plan(core, world.ana, world.ops, "hello")
    ids = list(planned.push.values())

    # The log, whose first two records fail as during a PostgreSQL restart.
    restarting = Restarting(core.notifications, "record")
    senders = _senders_at(core, channels, lambda: datetime.now(UTC), log=restarting)
    result = await senders.send_push(ids)
    assert result.sent == 2 and restarting.failures == 0
    assert len(sink.received) == 3  # ben's two devices and cy's, once each
    assert {(await row(core, i)).status for i in ids} == {NotificationStatus.SENT}
    assert (await channels.senders.send_push(ids)).sent == 0
    assert len(sink.received) == 3


async def test_rows_are_claimed_through_a_database_outage_within_the_attempt(
    core: Core, world: World, channels: Senders, fcm: tuple[FcmSink, str]
) -> None:
    sink, _ = fcm
    planned = await send_and_plan(core, world.ana, world.ops, "hello")
    ids = list(planned.push.values())

    # The log, whose first two claims fail as during a PostgreSQL restart.
    restarting = Restarting(core.notifications, "claim")
    senders = _senders_at(core, channels, lambda: datetime.now(UTC), log=restarting)
    # Not the activity's retry (its backoff doubles to an hour): this very attempt.
    result = await senders.send_push(ids)
    assert result.sent == 2 and restarting.failures == 0
    assert len(sink.received) == 3
    assert {(await row(core, i)).attempts for i in ids} == {1}


async def test_messages_read_after_the_claim_are_read_through_a_database_outage(
    core: Core, world: World, channels: Senders, fcm: tuple[FcmSink, str]
) -> None:
    sink, _ = fcm
    planned = await send_and_plan(core, world.ana, world.ops, "hello")
    ids = list(planned.push.values())

    # The messages, whose first two reads fail as during a PostgreSQL restart: the rows
    # are claimed (``sending``) by then.
    s = channels.senders
    restarting = Restarting(core.messages, "load")
    senders = ChannelSenders(
        core.notifications,
        restarting,  # type: ignore[arg-type]
        push=s._push,
        email=s._email,
        sms=s._sms,
        devices=core.preferences,
        metrics=channels.metrics,
    )
    # The same attempt rides it out: nothing is left "sending" for the claim to lapse.
    result = await senders.send_push(ids)
    assert result.sent == 2 and restarting.failures == 0
    assert len(sink.received) == 3  # ben's two devices and cy's, once each
    assert {(await row(core, i)).status for i in ids} == {NotificationStatus.SENT}


async def test_rows_not_started_soon_enough_after_their_claim_are_queued_again(
    core: Core, world: World, channels: Senders, fcm: tuple[FcmSink, str]
) -> None:
    sink, _ = fcm
    planned = await send_and_plan(core, world.ana, world.ops, "hello")
    ids = list(planned.push.values())
    claimed_at = datetime.now(UTC)
    times = iter([claimed_at])  # the claim's time, then every provider call is late

    def clock() -> datetime:
        return next(times, claimed_at + SEND_WITHIN)

    with pytest.raises(ProviderUnavailable, match="not sent within"):
        await _senders_at(core, channels, clock).send_push(ids)
    assert sink.received == []
    assert {(await row(core, i)).status for i in ids} == {NotificationStatus.QUEUED}
    assert (await channels.senders.send_push(ids)).sent == 2


async def test_read_before_sending_cancels_the_push(
    core: Core, world: World, channels: Senders, fcm: tuple[FcmSink, str]
) -> None:
    sink, _ = fcm
    planned = await send_and_plan(core, world.ana, world.ops, "hello")
    async with core.engine.begin() as conn:
        await conn.execute(
            text("UPDATE deliveries SET status = 2 WHERE message_id = :m AND recipient_id = :r"),
            {"m": planned.message_id, "r": world.cy},
        )
    result = await channels.senders.send_push(list(planned.push.values()))
    assert (result.sent, result.cancelled) == (1, 1)
    assert pushes_to(sink, "cy-only-token") == []
    assert (await row(core, planned.push[world.cy])).status == NotificationStatus.CANCELLED


# --- e2e ----------------------------------------------------------------------------------


async def test_e2e_push_and_email_carry_no_content(
    core: Core,
    world: World,
    channels: Senders,
    fcm: tuple[FcmSink, str],
    inbox: Inbox,
) -> None:
    sink, _ = fcm
    secret = await core.directory.create_conversation(
        kind=ConversationKind.DIRECT,
        members=[world.ana, world.ben],
        encryption_mode=EncryptionMode.E2E,
    )
    ciphertext = base64.b64encode(os.urandom(48)).decode()
    header = {"alg": "x25519-aes256gcm", "key_id": "ana-device-1", "wrapped": {"ben": "AAEC"}}
    planned = await send_and_plan(core, world.ana, secret, ciphertext, e2e_header=header)

    await channels.senders.send_push([planned.push[world.ben]])
    for message in pushes_to(sink, "ben-phone-token") + pushes_to(sink, "ben-tablet-token"):
        assert message["notification"] == {"title": "New message from Ana"}
        assert ciphertext not in str(message)

    await channels.senders.send_email([planned.digests[(Channel.EMAIL, world.ben)]])
    [(_, mail)] = inbox.emails
    raw = mail.as_string()
    assert ciphertext not in raw and ciphertext[:20] not in raw
    assert mail["Subject"] == "New message from Ana"
    assert "Ana sent an end-to-end encrypted message" in mail.get_body(("plain",)).get_content()  # type: ignore[union-attr]


# --- email --------------------------------------------------------------------------------


async def test_email_arrives_once_with_its_headers(
    core: Core, world: World, channels: Senders, inbox: Inbox
) -> None:
    planned = await send_and_plan(core, world.ana, world.ops, "deploy <done> & dusted")
    digest = planned.digests[(Channel.EMAIL, world.ben)]
    result = await channels.senders.send_email([digest])
    assert result.sent == 1

    [(envelope, mail)] = inbox.emails
    assert envelope.rcpt_tos == ["ben@example.com"]
    assert mail["To"] == "Ben <ben@example.com>"
    assert mail["From"] == f"Missive <notify@{MAIL_DOMAIN}>"
    assert mail["Subject"] == "New message from Ana in #ops"
    assert mail["Message-ID"] == message_id(digest, MAIL_DOMAIN)
    plain = mail.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    html = mail.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert "Hi Ben," in plain and "Ana: deploy <done> & dusted" in plain
    assert "deploy &lt;done&gt; &amp; dusted" in html and "<done>" not in html

    stored = await row(core, digest)
    assert (stored.status, stored.provider_ref) == (NotificationStatus.SENT, mail["Message-ID"])

    # The same id again (an activity retry, a replay): nothing is sent.
    again = await channels.senders.send_email([digest])
    assert again.sent == 0
    assert len(inbox.emails) == 1
    assert counted(channels.metrics, "email", "sent") == 1


async def test_smtp_down_then_back_delivers_exactly_one_email(
    core: Core, world: World, channels: Senders, smtp_port: int
) -> None:
    planned = await send_and_plan(core, world.ana, world.ops, "hello")
    digest = planned.digests[(Channel.EMAIL, world.ben)]

    # Nothing listens on smtp_port yet.
    with pytest.raises(ProviderUnavailable, match="1 of 1 email notifications not sent"):
        await channels.senders.send_email([digest])
    stored = await row(core, digest)
    assert (stored.status, stored.sent_at) == (NotificationStatus.QUEUED, None)
    assert "unreachable" in stored.reason

    inbox = Inbox()
    controller = start_smtp(inbox, smtp_port)
    try:
        result = await channels.senders.send_email([digest])
        await channels.senders.send_email([digest])  # a late duplicate retry
    finally:
        controller.stop()
    assert result.sent == 1
    [(_, mail)] = inbox.emails
    assert mail["Message-ID"] == message_id(digest, MAIL_DOMAIN)
    stored = await row(core, digest)
    assert (stored.status, stored.attempts) == (NotificationStatus.SENT, 2)


# --- SMS ----------------------------------------------------------------------------------


async def test_sms_reaches_twilio_and_an_invalid_number_is_recorded_failed(
    core: Core, world: World, channels: Senders, twilio: tuple[TwilioSink, str]
) -> None:
    sink, _ = twilio
    sink.fail(CY_PHONE, Failure.INVALID_RECIPIENT)
    for user in (world.ben, world.cy):
        await world.prefs.set_user(user, NotificationPreferences(sms=True))
    planned = await send_and_plan(core, world.ana, world.ops, "deploy done")
    ben = planned.digests[(Channel.SMS, world.ben)]
    cy = planned.digests[(Channel.SMS, world.cy)]

    result = await channels.senders.send_sms([ben, cy])
    assert (result.sent, result.failed) == (1, 1)
    [sms] = sink.received
    assert (sms["to"], sms["body"]) == (BEN_PHONE, "Missive: Ana in #ops: deploy done")
    stored = await row(core, ben)
    assert (stored.status, stored.provider_ref) == (NotificationStatus.SENT, sms["sid"])
    failed = await row(core, cy)
    assert failed.status == NotificationStatus.FAILED
    assert "21211" in failed.reason and CY_PHONE in failed.reason
    assert counted(channels.metrics, "sms", "failed") == 1


async def test_sms_rate_limit_queues_the_row_again(
    core: Core, world: World, channels: Senders, twilio: tuple[TwilioSink, str]
) -> None:
    sink, _ = twilio
    sink.fail(BEN_PHONE, Failure.RATE_LIMITED, retry_after=3, times=1)
    await world.prefs.set_user(world.ben, NotificationPreferences(sms=True))
    planned = await send_and_plan(core, world.ana, world.ops, "hi")
    ben = planned.digests[(Channel.SMS, world.ben)]
    with pytest.raises(RateLimited) as caught:
        await channels.senders.send_sms([ben])
    assert caught.value.retry_after == 3
    assert (await row(core, ben)).status == NotificationStatus.QUEUED
    assert (await channels.senders.send_sms([ben])).sent == 1
    assert len(sink.received) == 1


# --- clearing -----------------------------------------------------------------------------


async def test_clear_pushes_sends_data_only_with_the_same_collapse_key(
    core: Core, world: World, channels: Senders, fcm: tuple[FcmSink, str]
) -> None:
    sink, _ = fcm
    planned = await send_and_plan(core, world.ana, world.ops, "hello")
    await channels.senders.send_push([planned.push[world.ben]])
    shown = len(sink.received)
    result = await channels.senders.clear_pushes([planned.push[world.ben]])
    assert result.sent == 1
    clears = [m["message"] for m in sink.received[shown:]]
    assert {m["token"] for m in clears} == {"ben-phone-token", "ben-tablet-token"}
    for message in clears:
        assert "notification" not in message
        assert message["data"] == {"type": "clear", "conversation_id": world.ops, "up_to_seq": "1"}
        assert message["android"] == {"collapse_key": f"conv-{world.ops}"}


async def test_bad_ids_are_refused(channels: Senders) -> None:
    with pytest.raises(InvalidInput, match="notification_ids"):
        await channels.senders.send_push(["not-a-uuid"])
    assert (await channels.senders.send_email([])).sent == 0


# --- the activities -----------------------------------------------------------------------


class Emitted:
    """An Emitter that records what it is asked to emit."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any], str | None]] = []

    async def emit(self, event: str, data: Any, *, room: str | None = None) -> None:
        self.events.append((event, data, room))


async def _ana_posts_in_ops(
    core: Core, world: World, body: str
) -> tuple[PersistMessageResult, PlanNotificationsInput]:
    """ana's message to #ops, stored, and the input that plans its notifications."""
    stored = await core.messages.persist(
        PersistMessageInput(
            conversation_id=world.ops, sender_id=world.ana, client_message_id="c-1", body=body
        )
    )
    message = NotifyMessageInput(
        message_id=stored.message_id,
        conversation_id=world.ops,
        sender_id=world.ana,
        seq=stored.seq,
        created_at=stored.created_at,
        options=OPTIONS,
    )
    return stored, PlanNotificationsInput(message=message, now=stored.created_at)


async def test_dispatch_due_emits_notification_new_without_message_text(
    core: Core, world: World
) -> None:
    stored, plan = await _ana_posts_in_ops(core, world, "s3cret")
    emitted = Emitted()
    metrics = Metrics()
    acts = NotifyActivities(core.notifications, emitter=emitted, metrics=metrics)
    env = ActivityEnvironment()
    # What is due at once (in-app) is dispatched by the plan activity itself.
    planned = await env.run(acts.plan_notifications, plan)
    result = planned.dispatched
    assert result is not None and result.in_app == 2
    assert planned.next_due == result.next_due and planned.next_due is not None
    rows = {
        r.recipient_id: r.id
        for r in await core.notifications.rows(message_id=stored.message_id)
        if r.channel == Channel.IN_APP
    }
    assert sorted(emitted.events, key=lambda e: str(e[2])) == sorted(
        [
            (
                EVENT_NOTIFICATION_NEW,
                {
                    "event_id": f"notification:new:{rows[user]}",
                    "notification_id": rows[user],
                    "conversation_id": world.ops,
                    "message_id": stored.message_id,
                    "title": "New message from Ana in #ops",
                    "unread_count": 1,
                },
                user_room(user),
            )
            for user in (world.ben, world.cy)
        ],
        key=lambda e: str(e[2]),
    )
    assert "s3cret" not in str(emitted.events)
    assert counted(metrics, "in_app", "sent") == 2

    # A read settles the reader's in-app row and tells their other tabs the new count.
    settled = await env.run(
        acts.settle_notifications,
        SettleNotificationsInput(
            user_id=world.ben,
            conversation_id=world.ops,
            up_to_seq=stored.seq,
            status=ReceiptStatus.READ,
            now=stored.created_at + timedelta(seconds=5),
        ),
    )
    assert settled.in_app_read == 1
    assert emitted.events[-1] == (
        EVENT_NOTIFICATION_UNREAD,
        {
            "event_id": f"notification:unread:{world.ben}:{world.ops}:{stored.seq}",
            "conversation_id": world.ops,
            "unread_count": 0,
        },
        user_room(world.ben),
    )


async def test_a_failed_emit_does_not_fail_dispatch(core: Core, world: World) -> None:
    class Down:
        async def emit(self, event: str, data: Any, *, room: str | None = None) -> None:
            raise ConnectionError("pub/sub is down")

    _, plan = await _ana_posts_in_ops(core, world, "x")
    acts = NotifyActivities(core.notifications, emitter=Down())
    planned = await ActivityEnvironment().run(acts.plan_notifications, plan)
    # The in-app rows are committed: the clients read the count when they (re)connect.
    assert planned.dispatched is not None and planned.dispatched.in_app == 2
    assert await core.notifications.unread_count(world.ben) == 1


async def test_the_broadcast_plans_the_notifications_in_the_same_activity(
    core: Core, world: World, caplog: pytest.LogCaptureFixture
) -> None:
    stored, plan = await _ana_posts_in_ops(core, world, "hi")
    emitted = Emitted()
    acts = message_activities(core, emitted)
    env = ActivityEnvironment()

    planned = await env.run(
        acts.messages.broadcast_message, BroadcastMessageInput(stored.message_id, plan=plan)
    )

    # message:new to the room first, then each recipient's in-app notification.
    sent = [(e, room) for e, _, room in emitted.events]
    assert sent[0] == (EVENT_MESSAGE_NEW, conversation_room(world.ops))
    assert sorted(sent[1:], key=str) == sorted(
        [(EVENT_NOTIFICATION_NEW, user_room(u)) for u in (world.ben, world.cy)], key=str
    )
    assert planned is not None and planned.dispatched is not None
    assert planned.dispatched.in_app == 2 and planned.next_due == stored.created_at + timedelta(
        seconds=OPTIONS.grace_seconds
    )
    rows = await core.notifications.rows(message_id=stored.message_id)
    assert {(r.recipient_id, r.channel, r.status) for r in rows if r.channel == Channel.IN_APP} == {
        (world.ben, Channel.IN_APP, NotificationStatus.SENT),
        (world.cy, Channel.IN_APP, NotificationStatus.SENT),
    }

    # Planning that fails does not fail the broadcast (message:new is not sent twice):
    # the lifecycle's agenda plans on its own.
    async def down(_: PlanNotificationsInput) -> PlanNotificationsResult:
        raise ProviderUnavailable("database down")

    failing = MessageActivities(core.messages, core.receipts, Broadcaster(emitted), planner=down)
    before = len(emitted.events)
    assert (
        await env.run(
            failing.broadcast_message, BroadcastMessageInput(stored.message_id, plan=plan)
        )
        is None
    )
    assert [e for e, _, _ in emitted.events[before:]] == [EVENT_MESSAGE_NEW]
    assert "plans them on its own" in caplog.text


async def test_queue_digests_signal_with_starts_one_digest_per_channel_and_recipient(
    dev_env: WorkflowEnvironment, task_queue: str
) -> None:
    ben, cy = str(uuid.uuid4()), str(uuid.uuid4())
    options = NotifyOptions(
        task_queue=task_queue
    )  # nothing polls it: the runs wait, then are terminated
    ids = [str(uuid.uuid4()) for _ in range(4)]
    acts = NotifyActivities(cast(Any, None), client=dev_env.client)
    env = ActivityEnvironment()
    first = await env.run(
        acts.queue_digests,
        QueueDigestsInput(
            items=[
                DigestItem(ids[0], ben, Channel.EMAIL),
                DigestItem(ids[1], ben, Channel.EMAIL),
                DigestItem(ids[2], cy, Channel.SMS),
            ],
            options=options,
        ),
    )
    again = await env.run(
        acts.queue_digests,
        QueueDigestsInput(items=[DigestItem(ids[3], ben, Channel.EMAIL)], options=options),
    )
    assert (first.signalled, again.signalled) == (2, 1)

    converter = dev_env.client.data_converter
    ben_digest = dev_env.client.get_workflow_handle(notify_digest_workflow_id("email", ben))
    try:
        history = await ben_digest.fetch_history()
        started = [
            e for e in history.events if e.HasField("workflow_execution_started_event_attributes")
        ]
        signals = [
            e for e in history.events if e.HasField("workflow_execution_signaled_event_attributes")
        ]
        assert len(started) == 1
        [start_input] = await converter.decode(
            started[0].workflow_execution_started_event_attributes.input.payloads,
            [NotificationDigestInput],
        )
        assert start_input == NotificationDigestInput(
            recipient_id=ben, channel=Channel.EMAIL, options=options
        )
        assert started[0].workflow_execution_started_event_attributes.workflow_type.name == (
            "NotificationDigestWorkflow"
        )
        got = []
        for signal in signals:
            attrs = signal.workflow_execution_signaled_event_attributes
            assert attrs.signal_name == "add_items"
            [items] = await converter.decode(attrs.input.payloads, [DigestItems])
            got.append(items.notification_ids)
        assert got == [[ids[0], ids[1]], [ids[3]]]
        cy_digest = dev_env.client.get_workflow_handle(notify_digest_workflow_id("sms", cy))
        assert (await cy_digest.describe()).status == WorkflowExecutionStatus.RUNNING
    finally:
        for handle in (
            ben_digest,
            dev_env.client.get_workflow_handle(notify_digest_workflow_id("sms", cy)),
        ):
            await handle.terminate("test over")


async def test_queue_digests_refuses_a_channel_without_digests() -> None:
    acts = NotifyActivities(cast(Any, None), client=cast(Any, None))
    with pytest.raises(ApplicationError) as caught:
        await ActivityEnvironment().run(
            acts.queue_digests,
            QueueDigestsInput(
                items=[DigestItem(str(uuid.uuid4()), str(uuid.uuid4()), Channel.PUSH)],
                options=OPTIONS,
            ),
        )
    assert caught.value.type == "InvalidInput" and caught.value.non_retryable


# --- the workers, end to end ----------------------------------------------------------------


async def test_notify_workers_send_a_message_s_push_and_email_digest(
    core: Core,
    world: World,
    fcm: tuple[FcmSink, str],
    twilio: tuple[TwilioSink, str],
    smtp_port: int,
    inbox: Inbox,
    dev_env: WorkflowEnvironment,
    database_url: str,
    task_queue: str,
) -> None:
    """runtime.notify's workers run the real workflows and activities on their queues.

    On the dev server, in real time with delays of a second or two: the whole
    escalation (in-app, push after the grace, an email digest after its window)
    takes a few seconds and depends on no time skipping.
    """

    settings = base_settings(
        database_url=database_url,
        fcm_endpoint=fcm[1],
        twilio_base_url=twilio[1],
        smtp_host="127.0.0.1",
        smtp_port=smtp_port,
        email_from=f"Missive <notify@{MAIL_DOMAIN}>",
        notify_grace_seconds=1,
        notify_email_delay_seconds=2,
        notify_digest_window_seconds=1,
    )
    options = _own_queues(settings, task_queue)
    stored = await core.messages.persist(
        PersistMessageInput(
            conversation_id=world.ops,
            sender_id=world.ana,
            client_message_id="c-1",
            body="deploy done",
        )
    )
    client = dev_env.client
    async with AsyncExitStack() as stack:
        senders = open_notify(settings, core, stack)
        for worker in notify_workers(settings, client, core, Emitted(), senders, queues=options):
            await stack.enter_async_context(worker)
        handle = await _start_notify(client, stored, world.ana, options)
        digests = [
            client.get_workflow_handle(
                notify_digest_workflow_id("email", user), result_type=NotificationDigestResult
            )
            for user in (world.ben, world.cy)
        ]
        try:
            result = await asyncio.wait_for(handle.result(), E2E_TIMEOUT)
            for digest in digests:
                assert (await asyncio.wait_for(digest.result(), E2E_TIMEOUT)).digests == 1
        finally:
            # Leave nothing running on the session's dev server.
            for running in [handle.id, *(d.id for d in digests)]:
                with suppress(RPCError):
                    await client.get_workflow_handle(running).terminate("test over")

    assert result.pushed == 2 and result.in_app == 2
    sink, _ = fcm
    assert {m["message"]["token"] for m in sink.received} == {
        "ben-phone-token",
        "ben-tablet-token",
        "cy-only-token",
    }
    assert sorted(envelope.rcpt_tos[0] for envelope, _ in inbox.emails) == [
        "ben@example.com",
        "cy@example.com",
    ]
    assert {mail["Subject"] for _, mail in inbox.emails} == {"New message from Ana in #ops"}


async def test_one_row_pushes_go_out_at_the_push_quota_not_a_batch_s_share_of_it(
    core: Core,
    world: World,
    fcm: tuple[FcmSink, str],
    dev_env: WorkflowEnvironment,
    database_url: str,
    task_queue: str,
) -> None:
    """Direct messages' pushes are send activities of one row each. The push quota is
    counted in rows: at NOTIFY_PUSH_PER_SECOND 4 they go out at 4 a second, not at the
    4 / NOTIFY_PUSH_BATCH_SIZE (0.04) activities a second a per-activity limit gives."""

    sink, fcm_url = fcm
    settings = base_settings(
        database_url=database_url,
        fcm_endpoint=fcm_url,
        notify_grace_seconds=1,
        notify_email_delay_seconds=3_600,
        notify_push_per_second=4,
        notify_push_batch_size=100,
    )
    options = _own_queues(settings, task_queue)
    direct = await core.directory.create_conversation(
        kind=ConversationKind.GROUP, members=[world.ana, world.cy], title="pair", owner_id=world.ana
    )
    client = dev_env.client
    handles = []
    async with AsyncExitStack() as stack:
        senders = open_notify(settings, core, stack)
        for worker in notify_workers(settings, client, core, None, senders, queues=options):
            await stack.enter_async_context(worker)
        for n in range(12):
            stored = await core.messages.persist(
                PersistMessageInput(direct, world.ana, f"q-{n}", f"#{n}")
            )
            handles.append(await _start_notify(client, stored, world.ana, options))
        loop = asyncio.get_running_loop()
        arrived: list[float] = []
        try:
            async with asyncio.timeout(E2E_TIMEOUT):
                while len(arrived) < 12:
                    arrived += [loop.time()] * (len(sink.received) - len(arrived))
                    await asyncio.sleep(0.01)
            await asyncio.sleep(0.5)  # nothing more arrives
        finally:
            for handle in handles:
                with suppress(RPCError):
                    await handle.terminate("test over")
    # (The agendas go on: cy's email falls due in an hour.)
    pushes = [
        r for r in await core.notifications.rows(recipient_id=world.cy) if r.channel == "push"
    ]
    assert [(r.status, r.attempts) for r in pushes] == [(NotificationStatus.SENT, 1)] * 12
    assert len(sink.received) == 12  # one push per message, none twice
    # The quota held: a burst of 4, then 4 a second, so the twelfth is 2 s after the first.
    spread = arrived[-1] - arrived[0]
    assert 1.7 <= spread <= 10, spread


async def test_an_agenda_sends_once_what_an_attempt_whose_task_was_lost_queued(
    core: Core,
    world: World,
    fcm: tuple[FcmSink, str],
    smtp_port: int,
    inbox: Inbox,
    dev_env: WorkflowEnvironment,
    database_url: str,
    task_queue: str,
) -> None:
    """An attempt stored the message, planned it and dispatched its push and email rows
    (queued), then its workflow task was lost: no send was ever started for them. The
    attempt that replaces it plans again (a rerun) and must send each row exactly once."""
    from workflows.notify_message import NotifyMessageWorkflow

    settings = base_settings(
        database_url=database_url,
        fcm_endpoint=fcm[1],
        smtp_host="127.0.0.1",
        smtp_port=smtp_port,
        email_from=f"Missive <notify@{MAIL_DOMAIN}>",
        notify_grace_seconds=0,
        notify_email_delay_seconds=0,
        notify_digest_window_seconds=1,
    )
    options = _own_queues(settings, task_queue)
    stored = await core.messages.persist(
        PersistMessageInput(world.ops, world.ana, "c-lost", "deploy done")
    )
    message = NotifyMessageInput(
        message_id=stored.message_id,
        conversation_id=world.ops,
        sender_id=world.ana,
        seq=stored.seq,
        created_at=stored.created_at,
        options=options,
    )
    # The lost attempt: its plan and its dispatch committed, their results went nowhere.
    lost_at = stored.created_at + timedelta(milliseconds=1)
    await core.notifications.plan(PlanNotificationsInput(message, now=lost_at))
    lost, _ = await core.notifications.dispatch_due(
        DispatchDueInput(stored.message_id, options, lost_at)
    )
    assert len(lost.push) == 2 and len(lost.digests) == 2
    client = dev_env.client
    async with AsyncExitStack() as stack:
        senders = open_notify(settings, core, stack)
        for worker in notify_workers(settings, client, core, Emitted(), senders, queues=options):
            await stack.enter_async_context(worker)
        handle = await client.start_workflow(
            NotifyMessageWorkflow.run,
            message,
            id=notify_message_workflow_id(stored.message_id),
            task_queue=options.task_queue,
        )
        digests = [
            client.get_workflow_handle(
                notify_digest_workflow_id("email", user), result_type=NotificationDigestResult
            )
            for user in (world.ben, world.cy)
        ]
        try:
            result = await asyncio.wait_for(handle.result(), E2E_TIMEOUT)
            for digest in digests:
                assert (await asyncio.wait_for(digest.result(), E2E_TIMEOUT)).digests == 1
        finally:
            for running in [handle.id, *(d.id for d in digests)]:
                with suppress(RPCError):
                    await client.get_workflow_handle(running).terminate("test over")

    assert result.pushed == 2
    sink, _ = fcm
    assert sorted(m["message"]["token"] for m in sink.received) == [
        "ben-phone-token",
        "ben-tablet-token",
        "cy-only-token",
    ]
    assert sorted(envelope.rcpt_tos[0] for envelope, _ in inbox.emails) == [
        "ben@example.com",
        "cy@example.com",
    ]
    rows = await core.notifications.rows(message_id=stored.message_id)
    assert {(r.channel, r.status) for r in rows} == {
        (Channel.IN_APP, NotificationStatus.SENT),
        (Channel.PUSH, NotificationStatus.SENT),
        (Channel.EMAIL, NotificationStatus.DIGESTED),
    }
