"""The notification log and PreferenceService against a real PostgreSQL.

Users, conversations and messages are created through the services; every step of
the log runs with an explicit time (as the workflows pass theirs), and the
assertions read the rows back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from missive.db import session_factory
from missive.errors import ConversationNotFound, InvalidInput, NotAMember, UserNotFound
from missive.models import ConversationKind
from missive.notify.log import (
    CLAIM_LEASE,
    REASON_ALL_OFF,
    REASON_DELIVERED,
    REASON_NO_DEVICE,
    REASON_NO_EMAIL,
    REASON_NO_FALLBACK,
    REASON_PREFERENCES,
    REASON_READ,
    REASON_SENT_AS_FALLBACK,
    UNREAD_COUNT_CAP,
    NotificationLog,
    NotificationRow,
    Outcome,
    ReaderWatermark,
    notification_id,
)
from missive.notify.preferences import PreferenceService
from missive.schemas import (
    Channel,
    ConversationPreferences,
    DigestItem,
    DispatchDueInput,
    FallBackInput,
    NotificationPreferences,
    NotificationStatus,
    NotifyMessageInput,
    NotifyOptions,
    PersistMessageInput,
    PersistMessageResult,
    PlanNotificationsInput,
    PrepareDigestInput,
    ReceiptInput,
    ReceiptStatus,
    SettleNotificationsInput,
)
from missive.services.directory import NewUser
from runtime.wiring import Core

pytestmark = pytest.mark.integration

T0 = datetime(2026, 1, 10, 12, 0, tzinfo=UTC)
"""When the test messages were sent (workflow time; 21:00 in Tokyo)."""
OPTIONS = NotifyOptions()
GRACE = timedelta(seconds=OPTIONS.grace_seconds)
EMAIL_DELAY = timedelta(seconds=OPTIONS.email_delay_seconds)
SMS_DELAY = timedelta(seconds=OPTIONS.sms_delay_seconds)
TOKYO_MORNING = datetime(2026, 1, 10, 22, 0, tzinfo=UTC)
"""07:00 in Tokyo, the end of a 21:00-07:00 quiet night that T0 falls in."""
PENDING, QUEUED, SENDING, SENT = (
    NotificationStatus.PENDING,
    NotificationStatus.QUEUED,
    NotificationStatus.SENDING,
    NotificationStatus.SENT,
)
CANCELLED, SKIPPED, FAILED, DIGESTED = (
    NotificationStatus.CANCELLED,
    NotificationStatus.SKIPPED,
    NotificationStatus.FAILED,
    NotificationStatus.DIGESTED,
)
IN_APP, PUSH, EMAIL, SMS = Channel.IN_APP, Channel.PUSH, Channel.EMAIL, Channel.SMS


@dataclass
class World:
    """The services, and the users and conversation a test creates."""

    core: Core
    log: NotificationLog
    prefs: PreferenceService
    users: dict[str, str] = field(default_factory=dict)
    conversation: str = ""
    sent: list[PersistMessageResult] = field(default_factory=list)

    async def user(
        self,
        handle: str,
        *,
        device: bool = False,
        prefs: NotificationPreferences | None = None,
        **details: str,
    ) -> str:
        uid = await self.core.directory.create_user(NewUser(handle=handle, **details))
        self.users[handle] = uid
        if device:
            await self.prefs.register_device(uid, "android", f"token-{handle}")
        if prefs is not None:
            await self.prefs.set_user(uid, prefs)
        return uid

    async def group(self, title: str = "ops") -> str:
        self.conversation = await self.core.directory.create_conversation(
            kind=ConversationKind.GROUP, members=list(self.users.values()), title=title
        )
        return self.conversation

    async def send(self, sender: str = "ana", body: str = "hello") -> PersistMessageResult:
        sent = await self.core.messages.persist(
            PersistMessageInput(self.conversation, self.users[sender], f"c-{len(self.sent)}", body)
        )
        self.sent.append(sent)
        return sent

    def plan_input(
        self,
        sent: PersistMessageResult,
        *,
        sender: str = "ana",
        mentions: tuple[str, ...] = (),
        created_at: datetime = T0,
        now: datetime | None = None,
    ) -> PlanNotificationsInput:
        return PlanNotificationsInput(
            NotifyMessageInput(
                message_id=sent.message_id,
                conversation_id=sent.conversation_id,
                sender_id=self.users[sender],
                seq=sent.seq,
                created_at=created_at,
                mentions=[self.users[m] for m in mentions],
                options=OPTIONS,
            ),
            now=now or created_at,
        )

    async def dispatch(self, sent: PersistMessageResult, now: datetime):  # type: ignore[no-untyped-def]
        return await self.log.dispatch_due(DispatchDueInput(sent.message_id, OPTIONS, now))

    async def receipt(self, handle: str, status: ReceiptStatus, up_to_seq: int) -> None:
        await self.core.receipts.apply(
            ReceiptInput(self.users[handle], self.conversation, status, up_to_seq=up_to_seq)
        )

    def handle(self, user_id: str) -> str:
        return next(h for h, u in self.users.items() if u == user_id)

    async def table(self, sent: PersistMessageResult) -> dict[tuple[str, Channel], NotificationRow]:
        """The message's rows by (handle, channel)."""
        rows = await self.log.rows(message_id=sent.message_id)
        return {(self.handle(r.recipient_id), r.channel): r for r in rows}

    async def sql(self, statement: str, **params: object) -> None:
        async with self.core.engine.begin() as conn:
            await conn.execute(text(statement), params)


@pytest.fixture
def world(core: Core) -> World:
    sessions = session_factory(core.engine)
    return World(core=core, log=NotificationLog(sessions), prefs=PreferenceService(sessions))


def summary(
    table: dict[tuple[str, Channel], NotificationRow],
) -> dict[tuple[str, Channel], tuple[NotificationStatus, str | None, datetime]]:
    return {k: (r.status, r.reason, r.due_at) for k, r in table.items()}


# --- plan ---


async def test_plan_writes_the_agenda_and_records_why_a_channel_is_skipped(world: World) -> None:
    await world.user("ana", device=True, email="ana@example.com")
    await world.user("ben", device=True, email="ben@example.com")
    await world.user("cy")
    await world.user(
        "dee",
        device=True,
        email="dee@example.com",
        phone="0612345678",
        prefs=NotificationPreferences(sms=True),
    )
    await world.user(
        "eve", email="eve@example.com", prefs=NotificationPreferences(push=False, sms=True)
    )
    await world.user(
        "fay",
        device=True,
        email="fay@example.com",
        prefs=NotificationPreferences(in_app=False, push=False, email=False),
    )
    await world.user("gus", device=True, email="gus@example.com")
    await world.user(
        "hal",
        device=True,
        email="hal@example.com",
        prefs=NotificationPreferences(mentions_only=True),
    )
    await world.user(
        "ivy", email="ivy@example.com", prefs=NotificationPreferences(mentions_only=True)
    )
    await world.user("jo", device=True, email="jo@example.com")
    await world.user(
        "kim",
        device=True,
        email="kim@example.com",
        phone="+14155550100",
        prefs=NotificationPreferences(sms=True),
    )
    conv = await world.group()
    await world.prefs.set_conversation(
        world.users["gus"], conv, ConversationPreferences(muted=True)
    )
    sent = await world.send()
    await world.receipt("jo", ReceiptStatus.READ, 1)

    result, notices = await world.log.plan(world.plan_input(sent, mentions=("ivy",)))

    t = T0
    assert summary(await world.table(sent)) == {
        ("ben", IN_APP): (SENT, None, t),
        ("ben", PUSH): (PENDING, None, t + GRACE),
        ("ben", EMAIL): (PENDING, None, t + EMAIL_DELAY),
        ("cy", IN_APP): (SENT, None, t),
        ("cy", PUSH): (SKIPPED, REASON_NO_DEVICE, t),
        ("cy", EMAIL): (SKIPPED, REASON_NO_EMAIL, t),
        ("dee", IN_APP): (SENT, None, t),
        ("dee", PUSH): (PENDING, None, t + GRACE),
        ("dee", EMAIL): (PENDING, None, t + EMAIL_DELAY),
        ("dee", SMS): (
            SKIPPED,
            "phone number '0612345678' is not E.164 (+ then 7-15 digits)",
            t,
        ),
        ("eve", IN_APP): (SENT, None, t),
        ("eve", EMAIL): (PENDING, None, t + EMAIL_DELAY),
        ("eve", SMS): (SKIPPED, "no phone number", t),
        ("fay", IN_APP): (SKIPPED, REASON_ALL_OFF, t),
        ("ivy", IN_APP): (SENT, None, t),
        ("ivy", PUSH): (SKIPPED, REASON_NO_DEVICE, t),
        ("ivy", EMAIL): (PENDING, None, t + EMAIL_DELAY),
        ("kim", IN_APP): (SENT, None, t),
        ("kim", PUSH): (PENDING, None, t + GRACE),
        ("kim", EMAIL): (PENDING, None, t + EMAIL_DELAY),
        ("kim", SMS): (PENDING, None, t + SMS_DELAY),
    }
    # Muted (gus), mentions-only not mentioned (hal), already read (jo) and the
    # sender (ana) have no row at all.
    assert (result.planned, result.skipped, result.next_due) == (15, 6, T0 + GRACE)
    # Only the in-app step was due at once: it went out in the same transaction.
    assert result.dispatched is not None and result.dispatched.in_app == 6
    assert sorted(world.handle(n.recipient_id) for n in notices) == [
        "ben",
        "cy",
        "dee",
        "eve",
        "ivy",
        "kim",
    ]
    assert all(n.unread_count == 1 for n in notices)
    rows = await world.table(sent)
    assert all(r.mention == (h == "ivy") for (h, _), r in rows.items())
    assert all(r.conversation_id == conv and r.seq == 1 for r in rows.values())
    assert all(r.dedupe_key == f"message:{sent.message_id}" for r in rows.values())
    ben_push = rows[("ben", PUSH)]
    assert ben_push.id == notification_id(world.users["ben"], PUSH, f"message:{sent.message_id}")


async def test_planning_twice_writes_the_same_rows_once(world: World) -> None:
    for handle in ("ana", "ben", "cy"):
        await world.user(handle, device=True, email=f"{handle}@example.com")
    await world.group()
    sent = await world.send()
    first, notices = await world.log.plan(world.plan_input(sent))
    before = await world.log.rows(message_id=sent.message_id)
    # A rerun (a retried local activity, a replay) with a later clock changes nothing.
    again, renotices = await world.log.plan(world.plan_input(sent, now=T0 + timedelta(seconds=5)))
    assert again.planned == first.planned == 6 and again.skipped == first.skipped == 0
    assert again.next_due == first.next_due == T0 + GRACE
    assert await world.log.rows(message_id=sent.message_id) == before
    assert len(before) == len({r.id for r in before}) == 6
    # It announces the same in-app notifications again (clients drop the repeat by id)...
    assert sorted(n.notification_id for n in renotices) == sorted(
        n.notification_id for n in notices
    )
    assert len(notices) == 2 and all(n.unread_count == 1 for n in renotices)
    # ...except those read meanwhile.
    await world.receipt("cy", ReceiptStatus.READ, 1)
    await world.log.settle(
        SettleNotificationsInput(world.users["cy"], world.conversation, 1, ReceiptStatus.READ, T0)
    )
    _, late = await world.log.plan(world.plan_input(sent, now=T0 + timedelta(seconds=9)))
    assert [world.handle(n.recipient_id) for n in late] == ["ben"]


async def test_plan_leaves_in_app_to_dispatch_when_more_is_due_at_once(world: World) -> None:
    await world.user("ana")
    await world.user("ben", device=True)
    await world.group()
    sent = await world.send()
    # Planned a whole grace period late (a worker was down): the push is due too.
    result, notices = await world.log.plan(world.plan_input(sent, now=T0 + GRACE))
    assert notices == [] and result.dispatched is None and result.next_due == T0 + GRACE
    rows = await world.table(sent)
    assert (rows[("ben", IN_APP)].status, rows[("ben", PUSH)].status) == (PENDING, PENDING)
    due, notices = await world.dispatch(sent, T0 + GRACE)
    assert due.in_app == 1 and due.push == [rows[("ben", PUSH)].id]
    assert [n.notification_id for n in notices] == [rows[("ben", IN_APP)].id]


# --- dispatch ---


async def test_dispatch_sends_in_app_queues_push_and_digests_and_cancels_or_defers(
    world: World,
) -> None:
    await world.user("ana")
    await world.user("ben", device=True, email="ben@example.com")
    await world.user("cy", device=True, email="cy@example.com")
    await world.user("dee", device=True, email="dee@example.com")
    night = NotificationPreferences(quiet_start="21:00", quiet_end="07:00")
    await world.user(
        "eve", device=True, email="eve@example.com", timezone="Asia/Tokyo", prefs=night
    )
    await world.user("fay", device=True, prefs=night)  # the same night, but in UTC
    await world.group(title="ops")
    sent = await world.send()

    # T0: planning sends the in-app notifications at once, with the unread count.
    planned, notices = await world.log.plan(world.plan_input(sent))
    assert planned.dispatched is not None and planned.dispatched.in_app == 5
    assert planned.next_due == T0 + GRACE
    assert sorted(world.handle(n.recipient_id) for n in notices) == [
        "ben",
        "cy",
        "dee",
        "eve",
        "fay",
    ]
    notice = notices[0]
    assert notice.unread_count == 1
    assert notice.message.message_id == sent.message_id and notice.message.seq == 1
    assert notice.message.sender_name == "ana" and notice.message.conversation_title == "ops"
    assert notice.message.conversation_kind == "group" and not notice.message.e2e
    rows = await world.table(sent)
    assert rows[("ben", IN_APP)].status is SENT and rows[("ben", IN_APP)].sent_at == T0

    # T0 + grace: cy got the message (no push), eve is asleep in Tokyo.
    await world.receipt("cy", ReceiptStatus.DELIVERED, 1)
    result, notices = await world.dispatch(sent, T0 + GRACE)
    rows = await world.table(sent)
    assert notices == []
    assert sorted(result.push) == sorted(rows[(h, PUSH)].id for h in ("ben", "dee", "fay"))
    assert (result.cancelled, result.deferred) == (1, 1)
    assert rows[("cy", PUSH)].status is CANCELLED and rows[("cy", PUSH)].reason == REASON_DELIVERED
    assert rows[("eve", PUSH)].status is PENDING
    assert rows[("eve", PUSH)].due_at == TOKYO_MORNING
    assert rows[("eve", PUSH)].reason == f"quiet hours until {TOKYO_MORNING.isoformat()}"
    assert rows[("fay", PUSH)].status is QUEUED
    assert result.next_due == T0 + EMAIL_DELAY

    # T0 + email delay: dee read it; cy's delivered-but-unread email goes to the digest.
    await world.receipt("dee", ReceiptStatus.READ, 1)
    result, _ = await world.dispatch(sent, T0 + EMAIL_DELAY)
    rows = await world.table(sent)
    assert sorted(result.digests, key=lambda d: d.recipient_id) == sorted(
        [DigestItem(rows[(h, EMAIL)].id, world.users[h], EMAIL) for h in ("ben", "cy")],
        key=lambda d: d.recipient_id,
    )
    assert rows[("dee", EMAIL)].status is CANCELLED and rows[("dee", EMAIL)].reason == REASON_READ
    assert rows[("eve", EMAIL)].due_at == TOKYO_MORNING and result.deferred == 1
    assert result.next_due == TOKYO_MORNING

    # Morning in Tokyo: eve's deferred push and email go out; nothing is left.
    result, _ = await world.dispatch(sent, TOKYO_MORNING)
    assert result.push == [rows[("eve", PUSH)].id]
    assert result.digests == [DigestItem(rows[("eve", EMAIL)].id, world.users["eve"], EMAIL)]
    assert result.next_due is None
    # A rerun of that same call (same workflow time) hands out the same rows again.
    rerun, _ = await world.dispatch(sent, TOKYO_MORNING)
    assert (rerun.push, rerun.digests) == (result.push, result.digests)
    # A later call finds nothing due.
    later, _ = await world.dispatch(sent, TOKYO_MORNING + timedelta(hours=1))
    assert (later.push, later.digests, later.in_app) == ([], [], 0)


async def test_quiet_hours_in_an_unknown_timezone_are_taken_in_utc(world: World) -> None:
    await world.user("ana")
    lunch = NotificationPreferences(quiet_start="12:00", quiet_end="13:00")
    gil = await world.user("gil", device=True, prefs=lunch)
    await world.sql("UPDATE users SET timezone = 'Mars/Olympus' WHERE id = :id", id=gil)
    await world.group()
    sent = await world.send()
    await world.log.plan(world.plan_input(sent))
    result, _ = await world.dispatch(sent, T0 + GRACE)
    one_pm = T0 + timedelta(hours=1)
    assert (result.push, result.deferred, result.next_due) == ([], 1, one_pm)
    row = (await world.table(sent))[("gil", PUSH)]
    assert (row.status, row.due_at) == (PENDING, one_pm)
    assert row.reason == (
        f"quiet hours until {one_pm.isoformat()}"
        " (unknown timezone 'Mars/Olympus': quiet hours taken in UTC)"
    )


async def test_dispatch_cancels_what_preferences_now_forbid_and_counts_unread(
    world: World,
) -> None:
    await world.user("ana")
    await world.user("ben", device=True, email="ben@example.com")
    await world.user("cy", device=True, email="cy@example.com")
    conv = await world.group()
    first = await world.send()
    second = await world.send(body="again")
    await world.log.plan(world.plan_input(first))
    _, notices = await world.log.plan(world.plan_input(second))
    assert {world.handle(n.recipient_id): n.unread_count for n in notices} == {"ben": 2, "cy": 2}
    assert await world.log.unread_count(world.users["ben"]) == 2

    # ben mutes the conversation, cy turns push off: their pending rows are dropped.
    await world.prefs.set_conversation(
        world.users["ben"], conv, ConversationPreferences(muted=True)
    )
    await world.prefs.set_user(world.users["cy"], NotificationPreferences(push=False))
    result, _ = await world.dispatch(first, T0 + EMAIL_DELAY)
    rows = await world.table(first)
    assert result.push == [] and [world.handle(d.recipient_id) for d in result.digests] == ["cy"]
    assert result.cancelled == 3
    for key in (("ben", PUSH), ("ben", EMAIL), ("cy", PUSH)):
        assert (rows[key].status, rows[key].reason) == (CANCELLED, REASON_PREFERENCES)


# --- rows a lost attempt left ---


async def test_dispatch_hands_out_again_what_a_lost_dispatch_queued(world: World) -> None:
    await world.user("ana")
    for handle in ("ben", "cy"):
        await world.user(handle, device=True, email=f"{handle}@example.com")
    await world.group()
    sent = await world.send()
    await world.log.plan(world.plan_input(sent))
    lost_at = T0 + GRACE  # a dispatch whose workflow task was lost: nobody got its result
    lost, _ = await world.log.dispatch_due(DispatchDueInput(sent.message_id, OPTIONS, lost_at))
    assert len(lost.push) == 2
    rows = await world.table(sent)
    ben_push, cy_push = rows[("ben", PUSH)].id, rows[("cy", PUSH)].id

    # The replacement task dispatches at its own time: without the agenda's times (as
    # before) it finds nothing; with them, it takes the rows nobody holds.
    again_at = lost_at + timedelta(seconds=11)
    before, _ = await world.log.dispatch_due(DispatchDueInput(sent.message_id, OPTIONS, again_at))
    assert (before.push, before.recovered) == ([], 0)
    # ...one of them meanwhile claimed by a sender (a live one holds it): never handed out.
    claimed, _ = await world.log.claim([cy_push], PUSH, now=again_at)
    assert [c.id for c in claimed] == [cy_push]
    took = DispatchDueInput(sent.message_id, OPTIONS, again_at, handed_out_at=[T0])
    recovered, _ = await world.log.dispatch_due(took)
    assert (recovered.push, recovered.recovered) == ([ben_push], 1)
    assert (await world.table(sent))[("ben", PUSH)].updated_at == again_at
    # A rerun of that call (same time) hands them out again; a later dispatch that
    # knows that time does not.
    assert (await world.log.dispatch_due(took))[0].push == [ben_push]
    later = DispatchDueInput(
        sent.message_id, OPTIONS, again_at + timedelta(seconds=5), handed_out_at=[T0, again_at]
    )
    assert (await world.log.dispatch_due(later))[0].push == []


async def test_a_rerun_plan_dispatches_at_once_when_a_lost_dispatch_left_rows_queued(
    world: World,
) -> None:
    await world.user("ana")
    await world.user("ben", device=True, email="ben@example.com")
    await world.group()
    sent = await world.send()
    first, _ = await world.log.plan(world.plan_input(sent))
    assert first.next_due == T0 + GRACE
    # A rerun before anything was dispatched: the next due time, as before.
    rerun_at = T0 + timedelta(seconds=5)
    rerun, _ = await world.log.plan(world.plan_input(sent, now=rerun_at))
    assert rerun.next_due == T0 + GRACE
    await world.dispatch(sent, T0 + GRACE)  # lost: the push row stays queued
    late = T0 + GRACE + timedelta(seconds=30)
    replanned, _ = await world.log.plan(world.plan_input(sent, now=late))
    assert replanned.next_due == late


async def test_overdue_counts_open_rows_long_past_their_due_time(world: World) -> None:
    await world.user("ana")
    await world.user("ben", device=True, email="ben@example.com")
    await world.user("cy", device=True)
    await world.group()
    sent = await world.send()
    await world.log.plan(world.plan_input(sent))
    minute, hour = timedelta(minutes=1), timedelta(hours=1)
    # Push due at T0 + GRACE, email at T0 + EMAIL_DELAY, all pending (none sent).
    assert (await world.log.overdue(before=T0)).count == 0
    found = await world.log.overdue(before=T0 + GRACE + minute, examples=1)
    assert (found.count, found.oldest_due) == (2, T0 + GRACE)
    [example] = found.examples
    assert (example.channel, example.status, example.due_at) == (PUSH, PENDING, T0 + GRACE)
    everything = await world.log.overdue(before=T0 + EMAIL_DELAY + minute)
    assert everything.count == 3 and {r.channel for r in everything.examples} == {PUSH, EMAIL}
    # Settled rows are not overdue, whatever their age.
    await world.receipt("ben", ReceiptStatus.READ, 1)
    await world.receipt("cy", ReceiptStatus.READ, 1)
    await world.dispatch(sent, T0 + EMAIL_DELAY)
    assert (await world.log.overdue(before=T0 + 10 * hour)).count == 0
    with pytest.raises(InvalidInput, match="examples must be"):
        await world.log.overdue(before=T0, examples=-1)


# --- claim / record ---


async def _queued_pushes(world: World) -> dict[str, str]:
    """ana sends to ben, cy, dee (all with a device); their pushes are queued."""
    await world.user("ana")
    for handle in ("ben", "cy", "dee"):
        await world.user(handle, device=True, email=f"{handle}@example.com")
    await world.group(title="ops")
    sent = await world.send()
    await world.log.plan(world.plan_input(sent))
    result, _ = await world.dispatch(sent, T0 + GRACE)
    rows = await world.table(sent)
    assert sorted(result.push) == sorted(rows[(h, PUSH)].id for h in ("ben", "cy", "dee"))
    return {h: rows[(h, PUSH)].id for h in ("ben", "cy", "dee")}


async def test_claim_and_record_never_send_a_row_twice(world: World) -> None:
    ids = await _queued_pushes(world)
    now = T0 + GRACE + timedelta(seconds=1)

    claimed, cancelled = await world.log.claim(list(ids.values()), PUSH, now=now)
    assert cancelled == 0 and len(claimed) == 3
    ben = next(c for c in claimed if c.id == ids["ben"])
    assert ben.channel is PUSH and ben.attempts == 1 and not ben.mention
    assert ben.recipient.user_id == world.users["ben"]
    assert ben.recipient.display_name == "ben" and ben.recipient.email == "ben@example.com"
    assert ben.devices == ["token-ben"]
    [message] = ben.messages
    assert message.sender_name == "ana" and message.conversation_title == "ops"
    assert message.message_id == world.sent[0].message_id
    rows = await world.table(world.sent[0])
    assert {rows[(h, PUSH)].status for h in ids} == {SENDING}

    # ben: sent. cy: a transient error, back to queued. dee: the attempt died mid-call.
    await world.log.record(
        [
            Outcome(ids["ben"], SENT, provider_ref="projects/p/messages/1"),
            Outcome(ids["cy"], QUEUED, reason="FCM unavailable (HTTP 503)"),
        ],
        now=now,
    )
    rows = await world.table(world.sent[0])
    assert (rows[("ben", PUSH)].status, rows[("ben", PUSH)].sent_at) == (SENT, now)
    assert rows[("ben", PUSH)].provider_ref == "projects/p/messages/1"
    assert (rows[("cy", PUSH)].status, rows[("cy", PUSH)].reason) == (
        QUEUED,
        "FCM unavailable (HTTP 503)",
    )
    assert rows[("dee", PUSH)].status is SENDING

    # A retry claims cy (queued) again, never ben (sent), and not yet dee: its claim
    # may belong to an attempt still sending it.
    again, _ = await world.log.claim(list(ids.values()), PUSH, now=now)
    assert {c.id: c.attempts for c in again} == {ids["cy"]: 2}
    # Both are held now: dee by the attempt that died, cy by this retry.
    held = await world.log.held(list(ids.values()), PUSH, now=now)
    assert sorted(held) == sorted([ids["cy"], ids["dee"]])
    # Once dee's claim lapsed, a retry takes it over.
    later = now + CLAIM_LEASE
    assert await world.log.held(list(ids.values()), PUSH, now=later) == []
    taken, _ = await world.log.claim([ids["dee"]], PUSH, now=later)
    assert {c.id: c.attempts for c in taken} == {ids["dee"]: 2}
    await world.log.record(
        [
            Outcome(ids["cy"], FAILED, reason="push token is invalid", claim=2),
            Outcome(ids["dee"], SENT, provider_ref="projects/p/messages/2", claim=2),
            # An outcome for a row that is not being sent is ignored.
            Outcome(ids["ben"], FAILED, reason="late duplicate"),
        ],
        now=later,
    )
    assert await world.log.claim(list(ids.values()), PUSH, now=later) == ([], 0)
    rows = await world.table(world.sent[0])
    assert rows[("ben", PUSH)].status is SENT and rows[("ben", PUSH)].reason is None
    assert rows[("cy", PUSH)].status is FAILED and rows[("dee", PUSH)].attempts == 2

    with pytest.raises(InvalidInput, match="outcome status must be"):
        await world.log.record([Outcome(ids["ben"], PENDING)], now=now)
    # A claim for another channel leaves push rows alone.
    assert await world.log.claim([ids["cy"]], EMAIL, now=now) == ([], 0)


async def test_claim_cancels_pushes_already_delivered_or_read(world: World) -> None:
    ids = await _queued_pushes(world)
    await world.receipt("ben", ReceiptStatus.DELIVERED, 1)
    await world.receipt("cy", ReceiptStatus.READ, 1)
    claimed, cancelled = await world.log.claim(list(ids.values()), PUSH, now=T0 + GRACE)
    assert cancelled == 2 and [c.id for c in claimed] == [ids["dee"]]
    rows = await world.table(world.sent[0])
    assert (rows[("ben", PUSH)].status, rows[("ben", PUSH)].reason) == (CANCELLED, "delivered")
    assert (rows[("cy", PUSH)].status, rows[("cy", PUSH)].reason) == (CANCELLED, "read")


async def test_invalid_tokens_are_removed(world: World) -> None:
    await _queued_pushes(world)
    assert await world.prefs.remove_tokens(["token-ben", "token-cy", "token-unknown"]) == 2
    claimed, _ = await world.log.claim(
        [(await world.table(world.sent[0]))[("ben", PUSH)].id], PUSH, now=T0 + GRACE
    )
    assert claimed[0].devices == []


# --- fall back ---


async def test_fall_back_moves_down_push_email_sms_to_what_each_recipient_takes(
    world: World,
) -> None:
    await world.user("ana")
    sms = NotificationPreferences(sms=True)
    await world.user("ben", device=True, email="ben@example.com", phone="+14155550100", prefs=sms)
    await world.user("cy", device=True, phone="+14155550101", prefs=sms)  # no email
    await world.user("dee", device=True)  # neither email nor SMS
    await world.user(
        "eve", device=True, email="eve@example.com", prefs=NotificationPreferences(email=True)
    )
    conv = await world.group()
    await world.prefs.set_conversation(
        world.users["eve"], conv, ConversationPreferences(email=False)
    )  # eve takes no email here, and no SMS: nothing left
    sent = await world.send()
    await world.log.plan(world.plan_input(sent))
    pushed, _ = await world.dispatch(sent, T0 + GRACE)
    now = T0 + timedelta(minutes=11)

    moved = await world.log.fall_back(
        FallBackInput(pushed.push, PUSH, "FCM unavailable for 10 minutes", now)
    )

    fb = "fallback:{}".format
    rows = await world.log.rows(message_id=sent.message_id)
    by_key = {(world.handle(r.recipient_id), r.channel, r.dedupe_key): r for r in rows}
    push_of = {
        h: by_key[(h, PUSH, f"message:{sent.message_id}")] for h in world.users if h != "ana"
    }
    assert moved.channel is EMAIL and (moved.fell_back, moved.failed) == (2, 2)
    ben_email = by_key[("ben", EMAIL, fb(push_of["ben"].id))]
    cy_sms = by_key[("cy", SMS, fb(push_of["cy"].id))]
    assert moved.notification_ids == [ben_email.id]
    assert moved.sms_notification_ids == [cy_sms.id]
    for row in (ben_email, cy_sms):
        assert (row.status, row.due_at, row.message_id, row.seq) == (
            QUEUED,
            now,
            sent.message_id,
            1,
        )
    assert ben_email.source_id == push_of["ben"].id
    # ben's email planned for later is replaced by the fallback: one email, not two.
    planned = by_key[("ben", EMAIL, f"message:{sent.message_id}")]
    assert (planned.status, planned.reason) == (CANCELLED, REASON_SENT_AS_FALLBACK)
    assert (push_of["ben"].status, push_of["ben"].reason) == (
        NotificationStatus.FELL_BACK,
        "FCM unavailable for 10 minutes",
    )
    for handle in ("dee", "eve"):
        assert push_of[handle].status is FAILED
        assert push_of[handle].reason == f"FCM unavailable for 10 minutes; {REASON_NO_FALLBACK}"

    # A rerun computes the same rows.
    rerun = await world.log.fall_back(
        FallBackInput(pushed.push, PUSH, "FCM unavailable for 10 minutes", now)
    )
    assert (rerun.channel, rerun.notification_ids) == (EMAIL, moved.notification_ids)
    assert rerun.sms_notification_ids == moved.sms_notification_ids

    # The email fallback is sent as a single-message email...
    claimed, _ = await world.log.claim(moved.notification_ids, EMAIL, now=now)
    assert [m.message_id for m in claimed[0].messages] == [sent.message_id]
    await world.log.record([Outcome(ben_email.id, QUEUED, reason="SMTP 421")], now=now)
    # ...and when email stays down too, SMS is next; after SMS nothing is left.
    then = now + timedelta(minutes=30)
    to_sms = await world.log.fall_back(FallBackInput([ben_email.id], EMAIL, "SMTP down", then))
    assert to_sms.channel is SMS and to_sms.fell_back == 1 and len(to_sms.notification_ids) == 1
    last = await world.log.fall_back(
        FallBackInput(to_sms.notification_ids, SMS, "Twilio down", then)
    )
    assert (last.channel, last.notification_ids, last.failed) == (None, [], 1)


# --- digests ---


async def _digest_items(world: World, count: int, **ben: object) -> list[str]:
    """ana sends ``count`` messages; ben's email rows are due and handed to his digest."""
    await world.user("ana")
    await world.user("ben", email="ben@example.com", **ben)  # type: ignore[arg-type]
    await world.group(title="ops")
    items = []
    for i in range(count):
        sent = await world.send(body=f"message {i}")
        await world.log.plan(world.plan_input(sent))
        result, _ = await world.dispatch(sent, T0 + EMAIL_DELAY)
        items += [d.notification_id for d in result.digests]
    assert len(items) == count
    return items


async def test_items_given_to_the_replacement_of_a_lost_prepare_join_its_digest(
    world: World,
) -> None:
    items = await _digest_items(world, 3)
    ben = world.users["ben"]
    # A lost attempt prepared the first two (its result went nowhere); the attempt that
    # replaces it was also given the third, which arrived meanwhile.
    lost_at = T0 + EMAIL_DELAY + timedelta(minutes=5)
    lost = await world.log.prepare_digest(PrepareDigestInput(ben, EMAIL, items[:2], lost_at))
    again = await world.log.prepare_digest(
        PrepareDigestInput(ben, EMAIL, items, lost_at + timedelta(seconds=11))
    )
    assert (again.notification_id, again.items) == (lost.notification_id, 3)
    rows = {r.id: r for r in await world.log.rows(recipient_id=ben)}
    assert {(rows[i].status, rows[i].digest_id) for i in items} == {
        (DIGESTED, lost.notification_id)
    }
    assert lost.notification_id is not None
    [claimed], _ = await world.log.claim([lost.notification_id], EMAIL, now=lost_at)
    assert len(claimed.messages) == 3 and rows[lost.notification_id].item_count == 3


async def test_prepare_digest_folds_unread_items_into_one_row(world: World) -> None:
    items = await _digest_items(world, 3)
    await world.receipt("ben", ReceiptStatus.READ, 1)  # read after it was handed over
    now = T0 + EMAIL_DELAY + timedelta(minutes=5)
    prepared = await world.log.prepare_digest(
        PrepareDigestInput(world.users["ben"], EMAIL, items, now)
    )
    assert prepared.notification_id is not None
    assert (prepared.items, prepared.cancelled, prepared.skipped) == (2, 1, 0)
    assert prepared.defer_until is None

    rows = {r.id: r for r in await world.log.rows(recipient_id=world.users["ben"])}
    digest = rows[prepared.notification_id]
    assert (digest.channel, digest.status, digest.item_count) == (EMAIL, QUEUED, 2)
    assert digest.message_id is None and digest.dedupe_key == f"digest:{sorted(items[1:])[0]}"
    assert (rows[items[0]].status, rows[items[0]].reason) == (CANCELLED, REASON_READ)
    assert [(rows[i].status, rows[i].digest_id) for i in items[1:]] == [
        (DIGESTED, digest.id),
        (DIGESTED, digest.id),
    ]

    # A rerun returns the same digest while it is unsent.
    again = await world.log.prepare_digest(
        PrepareDigestInput(world.users["ben"], EMAIL, items, now)
    )
    assert (again.notification_id, again.items) == (digest.id, 2)

    # The digest is sent with its unread messages, oldest first.
    claimed, _ = await world.log.claim([digest.id], EMAIL, now=now)
    assert [m.seq for m in claimed[0].messages] == [2, 3]
    assert claimed[0].recipient.email == "ben@example.com"


async def test_a_digest_whose_items_are_all_read_is_cancelled_at_claim(world: World) -> None:
    items = await _digest_items(world, 2)
    now = T0 + EMAIL_DELAY + timedelta(minutes=5)
    prepared = await world.log.prepare_digest(
        PrepareDigestInput(world.users["ben"], EMAIL, items, now)
    )
    assert prepared.notification_id is not None
    await world.receipt("ben", ReceiptStatus.READ, 2)
    assert await world.log.claim([prepared.notification_id], EMAIL, now=now) == ([], 1)


async def test_prepare_digest_waits_for_the_end_of_quiet_hours(world: World) -> None:
    items = await _digest_items(world, 2, timezone="Asia/Tokyo")
    night = NotificationPreferences(quiet_start="22:00", quiet_end="07:00")
    await world.prefs.set_user(world.users["ben"], night)
    late = datetime(2026, 1, 10, 14, 0, tzinfo=UTC)  # 23:00 in Tokyo
    prepared = await world.log.prepare_digest(
        PrepareDigestInput(world.users["ben"], EMAIL, items, late)
    )
    assert prepared.notification_id is None and prepared.defer_until == TOKYO_MORNING
    rows = await world.log.rows(recipient_id=world.users["ben"])
    assert {r.status for r in rows if r.id in items} == {QUEUED}
    # Due in the morning now: not overdue during the night.
    assert {r.due_at for r in rows if r.id in items} == {TOKYO_MORNING}
    assert (await world.log.overdue(before=TOKYO_MORNING - timedelta(minutes=1))).count == 0
    # The next try, in the morning, sends them.
    morning = await world.log.prepare_digest(
        PrepareDigestInput(world.users["ben"], EMAIL, items, TOKYO_MORNING)
    )
    assert morning.notification_id is not None and morning.items == 2


async def test_prepare_digest_skips_items_when_the_address_is_gone(world: World) -> None:
    items = await _digest_items(world, 2)
    await world.sql("UPDATE users SET email = NULL WHERE id = :id", id=world.users["ben"])
    prepared = await world.log.prepare_digest(
        PrepareDigestInput(world.users["ben"], EMAIL, items, T0 + EMAIL_DELAY)
    )
    assert (prepared.notification_id, prepared.skipped) == (None, 2)
    rows = await world.log.rows(recipient_id=world.users["ben"])
    assert {(r.status, r.reason) for r in rows if r.id in items} == {(SKIPPED, REASON_NO_EMAIL)}
    with pytest.raises(InvalidInput, match="digests are for email or sms"):
        await world.log.prepare_digest(
            PrepareDigestInput(world.users["ben"], PUSH, items, T0 + EMAIL_DELAY)
        )


# --- settle ---


async def test_a_read_receipt_settles_cancels_reads_and_clears_once(world: World) -> None:
    await world.user("ana")
    await world.user("ben", device=True, email="ben@example.com")
    await world.user("cy", device=True, email="cy@example.com")
    conv = await world.group()
    first, second, third = [await world.send(body=f"m{i}") for i in range(3)]
    for sent in (first, second, third):
        await world.log.plan(world.plan_input(sent))
    # The first two messages' pushes were sent.
    pushed = []
    for sent in (first, second):
        result, _ = await world.dispatch(sent, T0 + GRACE)
        pushed += result.push
    await world.log.claim(pushed, PUSH, now=T0 + GRACE)
    await world.log.record([Outcome(i, SENT, provider_ref="ok") for i in pushed], now=T0 + GRACE)
    ben = world.users["ben"]
    assert await world.log.unread_count(ben) == 3

    now = T0 + timedelta(minutes=2)
    await world.receipt("ben", ReceiptStatus.READ, 2)
    settled, unread = await world.log.settle(
        SettleNotificationsInput(ben, conv, 2, ReceiptStatus.READ, now)
    )
    # Cancelled: ben's pending emails of messages 1 and 2 (message 3 is unread).
    assert (settled.cancelled, settled.in_app_read, unread) == (2, 2, 1)
    ben_rows = {(r.seq, r.channel): r for r in await world.log.rows(recipient_id=ben)}
    assert sorted(settled.clear_push_ids) == sorted(ben_rows[(s, PUSH)].id for s in (1, 2))
    assert ben_rows[(1, IN_APP)].read_at == now and ben_rows[(3, IN_APP)].read_at is None
    assert (ben_rows[(2, EMAIL)].status, ben_rows[(2, EMAIL)].reason) == (CANCELLED, REASON_READ)
    assert ben_rows[(3, EMAIL)].status is PENDING and ben_rows[(3, PUSH)].status is PENDING
    assert ben_rows[(1, PUSH)].cleared_at == now
    # cy's rows are untouched.
    cy_rows = await world.log.rows(recipient_id=world.users["cy"])
    assert all(r.read_at is None and r.status is not CANCELLED for r in cy_rows)

    # A rerun of the same call (a retry: its first attempt may have committed) returns
    # the same; a first attempt finds only what is still to settle; a later receipt
    # clears nothing again.
    rerun, rerun_unread = await world.log.settle(
        SettleNotificationsInput(ben, conv, 2, ReceiptStatus.READ, now), rerun=True
    )
    assert sorted(rerun.clear_push_ids) == sorted(settled.clear_push_ids)
    assert (rerun.in_app_read, rerun_unread) == (2, 1)
    again, _ = await world.log.settle(
        SettleNotificationsInput(ben, conv, 2, ReceiptStatus.READ, now)
    )
    assert (again.in_app_read, again.clear_push_ids) == (0, [])
    later, later_unread = await world.log.settle(
        SettleNotificationsInput(ben, conv, 2, ReceiptStatus.READ, now + timedelta(seconds=1))
    )
    assert (later.cancelled, later.in_app_read, later.clear_push_ids, later_unread) == (
        0,
        0,
        [],
        None,
    )

    # The clears: one per reader and conversation, up to the newest push shown.
    [clear] = await world.log.push_clears(settled.clear_push_ids)
    assert (clear.recipient_id, clear.conversation_id, clear.up_to_seq) == (ben, conv, 2)
    assert clear.notification_id == ben_rows[(2, PUSH)].id and clear.devices == ["token-ben"]


async def test_a_batch_settle_retried_with_its_time_returns_what_its_first_attempt_did(
    world: World,
) -> None:
    await world.user("ana")
    await world.user("ben", device=True)
    await world.user("cy", device=True)
    conv = await world.group()
    sent = [await world.send(body=f"m{i}") for i in range(2)]
    pushed = []
    for message in sent:
        await world.log.plan(world.plan_input(message))
        result, _ = await world.dispatch(message, T0 + GRACE)
        pushed += result.push
    await world.log.claim(pushed, PUSH, now=T0 + GRACE)
    await world.log.record([Outcome(i, SENT, provider_ref="ok") for i in pushed], now=T0 + GRACE)
    ben, cy = world.users["ben"], world.users["cy"]
    marks = [ReaderWatermark(ben, conv, 2, 2), ReaderWatermark(cy, conv, 1, 1)]
    now = T0 + timedelta(minutes=2)

    first = await world.log.settle_many(marks, now=now)
    assert first.in_app_read == sorted([(ben, conv), (cy, conv)])
    assert first.unread_counts == {ben: 0, cy: 1}
    assert len(first.clear_push_ids) == 3  # ben's two pushes, cy's first

    # The answer was lost: the retry (same time) returns it again; a first attempt
    # looks only at what is still to settle and finds nothing.
    assert await world.log.settle_many(marks, now=now, rerun=True) == first
    again = await world.log.settle_many(marks, now=now)
    assert (again.in_app_read, again.clear_push_ids) == ([], [])
    later = await world.log.settle_many(marks, now=now + timedelta(seconds=1), rerun=True)
    assert (later.in_app_read, later.clear_push_ids) == ([], [])


async def test_a_delivered_receipt_cancels_only_pushes(world: World) -> None:
    await world.user("ana")
    await world.user("ben", device=True, email="ben@example.com")
    conv = await world.group()
    sent = await world.send()
    await world.log.plan(world.plan_input(sent))
    ben = world.users["ben"]
    settled, unread = await world.log.settle(
        SettleNotificationsInput(ben, conv, 1, ReceiptStatus.DELIVERED, T0)
    )
    assert (settled.cancelled, settled.in_app_read, settled.clear_push_ids, unread) == (
        1,
        0,
        [],
        None,
    )
    rows = await world.table(sent)
    assert (rows[("ben", PUSH)].status, rows[("ben", PUSH)].reason) == (CANCELLED, "delivered")
    # The in-app notification (sent at planning) stays unread; only a read clears it.
    assert rows[("ben", IN_APP)].status is SENT and rows[("ben", IN_APP)].read_at is None
    assert rows[("ben", EMAIL)].status is PENDING


# --- preferences ---


async def test_preferences_round_trip_and_refuse_bad_input(world: World) -> None:
    ana = await world.user("ana")
    ben = await world.user("ben")
    outsider = await world.user("eve")
    conv = await world.core.directory.create_conversation(
        kind=ConversationKind.DIRECT, members=[ana, ben]
    )
    assert await world.prefs.get_user(ana) == NotificationPreferences()
    chosen = NotificationPreferences(
        push=False, sms=True, quiet_start="22:30", quiet_end="06:45", quiet_mentions=True
    )
    await world.prefs.set_user(ana, chosen)
    assert await world.prefs.get_user(ana) == chosen
    await world.prefs.set_user(ana, NotificationPreferences(mentions_only=True))
    assert await world.prefs.get_user(ana) == NotificationPreferences(mentions_only=True)

    assert await world.prefs.get_conversation(ana, conv) == ConversationPreferences()
    override = ConversationPreferences(muted=True, email=False)
    await world.prefs.set_conversation(ana, conv, override)
    assert await world.prefs.get_conversation(ana, conv) == override

    missing = "00000000-0000-0000-0000-000000000000"
    with pytest.raises(UserNotFound, match=missing):
        await world.prefs.get_user(missing)
    with pytest.raises(UserNotFound):
        await world.prefs.set_user(missing, NotificationPreferences())
    with pytest.raises(NotAMember, match=outsider):
        await world.prefs.set_conversation(outsider, conv, override)
    with pytest.raises(NotAMember):
        await world.prefs.get_conversation(outsider, conv)
    with pytest.raises(ConversationNotFound):
        await world.prefs.set_conversation(ana, missing, override)
    with pytest.raises(InvalidInput, match="quiet_end must be a 24-hour time HH:MM, got '7am'"):
        await world.prefs.set_user(
            ana, NotificationPreferences(quiet_start="22:00", quiet_end="7am")
        )
    with pytest.raises(InvalidInput, match="both quiet_start and quiet_end"):
        await world.prefs.set_user(ana, NotificationPreferences(quiet_end="07:00"))
    assert await world.prefs.get_user(ana) == NotificationPreferences(mentions_only=True)


async def test_timezone_and_devices(world: World) -> None:
    ana = await world.user("ana")
    ben = await world.user("ben")
    await world.prefs.set_timezone(ana, "America/Sao_Paulo")
    with pytest.raises(InvalidInput, match="timezone 'Mars/Olympus' does not exist"):
        await world.prefs.set_timezone(ana, "Mars/Olympus")
    with pytest.raises(UserNotFound):
        await world.prefs.set_timezone("00000000-0000-0000-0000-000000000000", "UTC")

    first = await world.prefs.register_device(ana, "ios", "apns-token-1")
    # Registering again refreshes the same device; another user taking it moves it.
    assert await world.prefs.register_device(ana, "ios", "apns-token-1") == first
    assert await world.prefs.register_device(ben, "android", "apns-token-1") == first
    with pytest.raises(InvalidInput, match="push token 'bad token' is malformed"):
        await world.prefs.register_device(ana, "ios", "bad token")
    with pytest.raises(InvalidInput, match="platform must be one of"):
        await world.prefs.register_device(ana, "blackberry", "tok")
    with pytest.raises(UserNotFound):
        await world.prefs.register_device("00000000-0000-0000-0000-000000000000", "web", "tok")
    async with world.core.engine.connect() as conn:
        rows = (await conn.execute(text("SELECT user_id::text, platform::text FROM devices"))).all()
        zone = (
            await conn.execute(text("SELECT timezone FROM users WHERE id = :id"), {"id": ana})
        ).scalar_one()
    assert [tuple(r) for r in rows] == [(ben, "android")] and zone == "America/Sao_Paulo"
    # A client can unregister only its own device: the token is ben's now.
    assert await world.prefs.remove_device("apns-token-1", user_id=ana) is False
    assert await world.prefs.remove_device("apns-token-1", user_id=ben) is True
    assert await world.prefs.register_device(ben, "android", "apns-token-1")
    assert await world.prefs.remove_device("apns-token-1") is True
    assert await world.prefs.remove_device("apns-token-1") is False


async def test_unread_count_stops_at_its_cap(world: World) -> None:
    await world.user("ben")
    ben = world.users["ben"]
    async with world.core.engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO notifications (id, recipient_id, channel, dedupe_key, status,"
                " due_at, sent_at) SELECT gen_random_uuid(), :ben, 'in_app', 'n:' || i, 'sent',"
                " now(), now() FROM generate_series(1, :n) AS i"
            ),
            {"ben": ben, "n": UNREAD_COUNT_CAP + 20},
        )
    assert await world.log.unread_count(ben) == UNREAD_COUNT_CAP  # a badge shows "99+"
    async with world.core.engine.begin() as conn:
        await conn.execute(
            text("UPDATE notifications SET read_at = now() WHERE recipient_id = :ben"),
            {"ben": ben},
        )
    assert await world.log.unread_count(ben) == 0


async def test_the_bell_pages_are_the_newest_shown_rows_read_or_not(world: World) -> None:
    """Its pages come from two indexes (read, unread) merged: the order and the limit
    must be those of one sort over every shown in-app row, ties on the time included."""
    await world.user("ben")
    await world.user("cy")
    ben = world.users["ben"]
    base = datetime(2026, 12, 8, tzinfo=UTC)
    async with world.core.engine.begin() as conn:
        # 40 shown rows, a third unread, created in pairs at the same instant (the
        # id breaks the tie); besides, rows the bell never shows and another user's.
        await conn.execute(
            text(
                "INSERT INTO notifications (id, recipient_id, channel, dedupe_key, status,"
                " due_at, sent_at, created_at, read_at)"
                " SELECT gen_random_uuid(), :ben, 'in_app', 'n:' || i, 'sent', b.t, b.t,"
                " b.t + (i / 2) * interval '1 second',"
                " CASE WHEN i % 3 = 0 THEN NULL ELSE b.t + interval '1 hour' END"
                " FROM generate_series(1, 40) AS i, (SELECT CAST(:base AS timestamptz) AS t) AS b"
            ),
            {"ben": ben, "base": base},
        )
        await conn.execute(
            text(
                "INSERT INTO notifications (id, recipient_id, channel, dedupe_key, status,"
                " due_at, created_at) VALUES"
                " (gen_random_uuid(), :ben, 'in_app', 'pending', 'pending', :late, :late),"
                " (gen_random_uuid(), :ben, 'push', 'push', 'sent', :late, :late),"
                " (gen_random_uuid(), :cy, 'in_app', 'cy', 'sent', :late, :late)"
            ),
            {"ben": ben, "cy": world.users["cy"], "late": base + timedelta(days=1)},
        )
        everything = (
            await conn.execute(
                text(
                    "SELECT id::text, read_at IS NULL AS unread FROM notifications"
                    " WHERE recipient_id = :ben AND channel = 'in_app' AND status = 'sent'"
                    " ORDER BY created_at DESC, notifications.id DESC"
                ),
                {"ben": ben},
            )
        ).all()
    assert len(everything) == 40
    for limit in (1, 7, 25, 40, 100):
        page = await world.log.in_app(ben, limit=limit)
        assert [n.id for n in page] == [r.id for r in everything][:limit]
        unread = await world.log.in_app(ben, limit=limit, unread_only=True)
        assert [n.id for n in unread] == [r.id for r in everything if r.unread][:limit]
        assert all(n.read_at is None for n in unread)
