"""Delivery: rows claimed for a send or held by another attempt, outcomes, push clears."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import text

from missive.errors import InvalidInput
from missive.notify.log._shared import (
    REASON_DELIVERED,
    REASON_GONE,
    REASON_READ,
    LogPart,
    NoticeMessage,
    _channel,
    _Decisions,
    _notice_messages,
)
from missive.schemas import Channel, NotificationStatus
from missive.validation import require_uuid

CLAIM_LEASE = timedelta(seconds=120)
"""How long a claim (``sending``) belongs to the attempt that made it. Only after this
may another attempt claim the row again: the attempt that made it stops starting
provider calls and recording outcomes well before (see missive.notify.dispatch), so a
row is never sent by two live attempts at once. Four times a send activity's
start_to_close (PROVIDER_CALL_TIMEOUT, 30 s): past that Temporal has retried it."""

_OUTCOMES = frozenset(
    {
        NotificationStatus.SENT,
        NotificationStatus.FAILED,
        NotificationStatus.SKIPPED,
        NotificationStatus.CANCELLED,
        NotificationStatus.QUEUED,
    }
)


@dataclass(frozen=True)
class Recipient:
    """Who a notification goes to, as senders and renderers need them."""

    user_id: str
    """The user."""
    display_name: str
    """Their shown name."""
    email: str | None
    """Their email address, if any."""
    phone: str | None
    """Their phone number, if any."""
    locale: str
    """Their language tag."""
    timezone: str
    """Their IANA timezone name."""


@dataclass(frozen=True)
class ClaimedNotification:
    """A row claimed for sending (status ``sending``), with what it takes to send it."""

    id: str
    """The log row."""
    channel: Channel
    """Its channel."""
    recipient: Recipient
    """Who gets it."""
    devices: list[str]
    """The recipient's push tokens (push rows only; empty otherwise)."""
    messages: list[NoticeMessage]
    """One for a message row; a digest row's unread items, oldest first."""
    mention: bool
    """Whether it is (or, for a digest, includes) a mention."""
    attempts: int
    """Claims so far, this one included."""


@dataclass(frozen=True)
class Outcome:
    """What sending one claimed row came to."""

    notification_id: str
    """The row."""
    status: NotificationStatus
    """SENT, FAILED, SKIPPED, CANCELLED, or QUEUED (a transient error: send again)."""
    reason: str | None = None
    """Why (the error), for anything but SENT."""
    provider_ref: str | None = None
    """What the provider answered (FCM message name, Message-ID, Twilio SID)."""
    claim: int | None = None
    """The row's ``attempts`` when it was claimed for this send: the outcome is recorded
    only while that claim holds (None: whatever claim holds it)."""


@dataclass(frozen=True)
class PushClear:
    """Pushes already shown on a reader's devices that a data message should clear."""

    notification_id: str
    """The newest push row of the conversation being cleared."""
    recipient_id: str
    """The reader."""
    conversation_id: str
    """The conversation (pushes share its collapse key)."""
    up_to_seq: int
    """Messages up to this sequence number are read."""
    devices: list[str]
    """The reader's push tokens."""


# Whether each row still needs sending: a message row's delivery, a digest row's items.
_CLAIM_STATE = text(
    """
    SELECT n.id::text AS id, n.message_id IS NOT NULL AS is_message,
           d.status AS delivery_status,
           m.id IS NULL OR m.deleted_at IS NOT NULL AS message_gone,
           CASE WHEN n.message_id IS NULL THEN EXISTS (
               SELECT 1 FROM notifications i
                 JOIN deliveries di ON di.message_id = i.message_id
                                   AND di.recipient_id = i.recipient_id
                 JOIN messages mi ON mi.id = i.message_id
                WHERE i.digest_id = COALESCE(n.digest_id, n.id) AND i.status = 'digested'
                  AND di.status < 2 AND mi.deleted_at IS NULL) END AS has_unread_items
      FROM notifications n
      LEFT JOIN deliveries d ON d.message_id = n.message_id AND d.recipient_id = n.recipient_id
      LEFT JOIN messages m ON m.id = n.message_id
     WHERE n.id = ANY(CAST(:ids AS uuid[])) AND n.channel = :channel
       AND (n.status = 'queued' OR (n.status = 'sending' AND n.updated_at <= :stale_before))
    """
)

# Queued rows, and rows whose claim lapsed (CLAIM_LEASE): a live attempt's claim is
# never taken over.
_CLAIM = text(
    """
    UPDATE notifications
       SET status = 'sending', attempts = attempts + 1, updated_at = :now
     WHERE id = ANY(CAST(:ids AS uuid[])) AND channel = :channel
       AND (status = 'queued' OR (status = 'sending' AND updated_at <= :stale_before))
    RETURNING id::text AS id, recipient_id::text AS recipient_id,
              message_id::text AS message_id,
              CASE WHEN message_id IS NULL THEN COALESCE(digest_id, id)::text END AS items_of,
              mention, attempts
    """
)

# Rows another attempt's claim still holds (see CLAIM_LEASE).
_HELD = text(
    """
    SELECT id::text AS id FROM notifications
     WHERE id = ANY(CAST(:ids AS uuid[])) AND channel = :channel
       AND status = 'sending' AND updated_at > :stale_before
    """
)

_RECIPIENTS = text(
    """
    SELECT id::text AS user_id, display_name, email, phone, locale, timezone
      FROM users WHERE id = ANY(CAST(:ids AS uuid[]))
    """
)

_DEVICES = text(
    """
    SELECT user_id::text AS user_id, push_token FROM devices
     WHERE user_id = ANY(CAST(:ids AS uuid[])) ORDER BY created_at, push_token
    """
)

_UNREAD_ITEMS = text(
    """
    SELECT i.digest_id::text AS digest_id, i.message_id::text AS message_id
      FROM notifications i
      JOIN deliveries d ON d.message_id = i.message_id AND d.recipient_id = i.recipient_id
     WHERE i.digest_id = ANY(CAST(:ids AS uuid[])) AND i.status = 'digested' AND d.status < 2
     ORDER BY i.created_at, i.seq
    """
)

_RECORD = text(
    """
    UPDATE notifications n
       SET status = u.status, reason = u.reason,
           provider_ref = COALESCE(u.provider_ref, n.provider_ref),
           sent_at = CASE WHEN u.status = 'sent' THEN :now ELSE n.sent_at END,
           updated_at = :now
      FROM unnest(CAST(:ids AS uuid[]), CAST(:statuses AS text[]), CAST(:reasons AS text[]),
                  CAST(:refs AS text[]), CAST(:claims AS int[]))
           AS u(id, status, reason, provider_ref, claim)
     WHERE n.id = u.id AND n.status = 'sending' AND (u.claim IS NULL OR n.attempts = u.claim)
    """
)

_PUSH_CLEARS = text(
    """
    SELECT DISTINCT ON (n.recipient_id, n.conversation_id)
           n.id::text AS id, n.recipient_id::text AS recipient_id,
           n.conversation_id::text AS conversation_id, n.seq
      FROM notifications n
     WHERE n.id = ANY(CAST(:ids AS uuid[])) AND n.channel = 'push' AND n.status = 'sent'
       AND n.conversation_id IS NOT NULL AND n.seq IS NOT NULL
     ORDER BY n.recipient_id, n.conversation_id, n.seq DESC
    """
)


def _claim_cancel_reason(state: Any, channel: Channel) -> str | None:
    """Why a row about to be claimed needs no sending any more (None: send it)."""
    if not state.is_message:
        return None if state.has_unread_items else REASON_READ
    if state.message_gone or state.delivery_status is None:
        return REASON_GONE
    if state.delivery_status >= 2:
        return REASON_READ
    if channel is Channel.PUSH and state.delivery_status >= 1:
        return REASON_DELIVERED
    return None


class Delivery(LogPart):
    """Claims rows for the channel senders and records what sending them came to."""

    async def claim(
        self, ids: list[str], channel: Channel, *, now: datetime
    ) -> tuple[list[ClaimedNotification], int]:
        """Marks rows ``sending`` (one UPDATE) and loads what it takes to send them.

        Only rows still queued, or left ``sending`` by an attempt whose claim is older
        than CLAIM_LEASE (it died, or gave up), are claimed: rows already sent, failed
        or cancelled are never sent again, and a row a live attempt is sending is left
        to it (see ``held``). Just before, push rows whose message was delivered / read
        and digest rows whose items are all read are cancelled.

        Returns:
            The claimed rows, and how many rows were cancelled here.

        Raises:
            InvalidInput: a malformed id or channel.
        """
        wanted = sorted({require_uuid(i, "notification_id") for i in ids})
        ch = _channel(channel)
        if not wanted:
            return [], 0
        stale_before = now - CLAIM_LEASE
        async with self._sessions() as session, session.begin():
            states = (
                await session.execute(
                    _CLAIM_STATE,
                    {"ids": wanted, "channel": ch.value, "stale_before": stale_before},
                )
            ).all()
            cancel = _Decisions.empty()
            for s in states:
                reason = _claim_cancel_reason(s, ch)
                if reason is not None:
                    cancel.add(s.id, NotificationStatus.CANCELLED, reason)
            cancelled = await cancel.apply(session, now=now, from_statuses=["queued", "sending"])
            to_cancel = set(cancel.ids)
            claimable = [s.id for s in states if s.id not in to_cancel]
            if not claimable:
                return [], len(cancelled)
            claimed = (
                await session.execute(
                    _CLAIM,
                    {
                        "ids": claimable,
                        "channel": ch.value,
                        "now": now,
                        "stale_before": stale_before,
                    },
                )
            ).all()
            if not claimed:
                return [], len(cancelled)
            rids = sorted({r.recipient_id for r in claimed})
            recipients = {
                r.user_id: Recipient(**r._mapping)
                for r in await session.execute(_RECIPIENTS, {"ids": rids})
            }
            devices: dict[str, list[str]] = defaultdict(list)
            if ch is Channel.PUSH:
                for r in await session.execute(_DEVICES, {"ids": rids}):
                    devices[r.user_id].append(r.push_token)
            items: dict[str, list[str]] = defaultdict(list)
            digest_keys = sorted({r.items_of for r in claimed if r.items_of})
            if digest_keys:
                for r in await session.execute(_UNREAD_ITEMS, {"ids": digest_keys}):
                    items[r.digest_id].append(r.message_id)
            message_ids = [r.message_id for r in claimed if r.message_id]
            message_ids += [m for ms in items.values() for m in ms]
            notices = await _notice_messages(session, message_ids)
        result = []
        for r in sorted(claimed, key=lambda r: r.id):
            wanted_ids = [r.message_id] if r.message_id else items.get(r.items_of, [])
            result.append(
                ClaimedNotification(
                    id=r.id,
                    channel=ch,
                    recipient=recipients[r.recipient_id],
                    devices=list(devices.get(r.recipient_id, [])),
                    messages=[notices[m] for m in wanted_ids if m in notices],
                    mention=bool(r.mention),
                    attempts=int(r.attempts),
                )
            )
        return result, len(cancelled)

    async def held(self, ids: list[str], channel: Channel, *, now: datetime) -> list[str]:
        """The rows among ``ids`` another attempt's claim still holds (CLAIM_LEASE).

        Raises:
            InvalidInput: a malformed id or channel.
        """
        wanted = sorted({require_uuid(i, "notification_id") for i in ids})
        ch = _channel(channel)
        if not wanted:
            return []
        params = {"ids": wanted, "channel": ch.value, "stale_before": now - CLAIM_LEASE}
        async with self._sessions() as session:
            return [r.id for r in await session.execute(_HELD, params)]

    async def record(self, outcomes: list[Outcome], *, now: datetime) -> None:
        """Records what sending claimed rows came to, in one statement.

        SENT sets provider_ref and sent_at; FAILED / SKIPPED / CANCELLED set the
        reason; QUEUED (a transient error) puts the row back with the error as reason,
        so the next attempt claims it again. Only rows still ``sending`` change, and
        with an outcome's ``claim``, only while that claim holds (another attempt that
        claimed the row since, its lease lapsed, owns its outcome).

        Raises:
            InvalidInput: an outcome status other than those five, a malformed id.
        """
        latest: dict[str, Outcome] = {}
        for outcome in outcomes:
            status = NotificationStatus(outcome.status)
            if status not in _OUTCOMES:
                raise InvalidInput(
                    f"outcome status must be sent, failed, skipped, cancelled or queued, "
                    f"got {status.value!r}"
                )
            latest[require_uuid(outcome.notification_id, "notification_id")] = outcome
        if not latest:
            return
        params = {
            "ids": list(latest),
            "statuses": [NotificationStatus(o.status).value for o in latest.values()],
            "reasons": [o.reason for o in latest.values()],
            "refs": [o.provider_ref for o in latest.values()],
            "claims": [o.claim for o in latest.values()],
            "now": now,
        }
        async with self._sessions() as session, session.begin():
            await session.execute(_RECORD, params)

    async def push_clears(self, ids: list[str]) -> list[PushClear]:
        """The clears to send for sent push rows: one per reader and conversation.

        Pushes of a conversation share one collapse key, so a single data message
        up to the newest of them clears what is shown; ``notification_id`` names that
        newest row.

        Raises:
            InvalidInput: a malformed id.
        """
        wanted = sorted({require_uuid(i, "notification_id") for i in ids})
        if not wanted:
            return []
        async with self._sessions() as session:
            rows = (await session.execute(_PUSH_CLEARS, {"ids": wanted})).all()
            if not rows:
                return []
            devices: dict[str, list[str]] = defaultdict(list)
            rids = sorted({r.recipient_id for r in rows})
            for d in await session.execute(_DEVICES, {"ids": rids}):
                devices[d.user_id].append(d.push_token)
        return [
            PushClear(
                notification_id=r.id,
                recipient_id=r.recipient_id,
                conversation_id=r.conversation_id,
                up_to_seq=int(r.seq),
                devices=list(devices.get(r.recipient_id, [])),
            )
            for r in rows
        ]
