"""The notification log: every notification is a row, written before it is sent.

Each row is one (recipient, channel, dedupe key); its id is a UUID5 of the three, so a
rerun of any step computes the same ids and ``ON CONFLICT DO NOTHING`` / status guards
make it change nothing twice. Every method works on all the rows it is given in a few
bulk statements (``unnest`` arrays, ``UPDATE ... FROM``), whatever the group size.
Times always come from the caller (workflow time), never from the clock here.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from missive.db import autocommit
from missive.errors import InvalidInput
from missive.notify.preferences import (
    allowed_channels,
    conversation_preferences,
    phone_problem,
    quiet_hours_end,
    user_preferences,
)
from missive.schemas import (
    Channel,
    DigestItem,
    DispatchDueInput,
    DispatchDueResult,
    FallBackInput,
    FallBackResult,
    NotificationStatus,
    PlanNotificationsInput,
    PlanNotificationsResult,
    PrepareDigestInput,
    PrepareDigestResult,
    ReceiptStatus,
    SettleNotificationsInput,
    SettleNotificationsResult,
)
from missive.validation import require_seq, require_uuid

CLAIM_LEASE = timedelta(seconds=120)
"""How long a claim (``sending``) belongs to the attempt that made it. Only after this
may another attempt claim the row again: the attempt that made it stops starting
provider calls and recording outcomes well before (see missive.notify.dispatch), so a
row is never sent by two live attempts at once. Four times a send activity's
start_to_close (PROVIDER_CALL_TIMEOUT, 30 s): past that Temporal has retried it."""

OPEN_STATUSES = (
    NotificationStatus.PENDING,
    NotificationStatus.QUEUED,
    NotificationStatus.SENDING,
)
"""Rows still to be sent (or decided); the others are settled."""

NOTIFICATION_NAMESPACE = uuid.UUID("5d0c7a52-8f0e-4f4e-9a57-1f4f2b0c6e31")
"""Namespace of notification ids (UUID5); never change it, or reruns stop matching."""

FALLBACK_ORDER = (Channel.PUSH, Channel.EMAIL, Channel.SMS)
"""Where a channel that stays down falls back to (in-app never falls back)."""

DIGEST_CHANNELS = (Channel.EMAIL, Channel.SMS)
"""Channels whose due notifications are gathered into digests."""

# Reasons recorded on rows (tests and operators match on them).
REASON_ALL_OFF = "every notification channel is off"
REASON_NO_DEVICE = "no push device registered"
REASON_NO_EMAIL = "no email address"
REASON_READ = "read"
REASON_DELIVERED = "delivered"
REASON_PREFERENCES = "preferences"
REASON_LEFT = "no longer a participant"
REASON_GONE = "message deleted"
REASON_QUIET = "quiet hours"
REASON_NO_FALLBACK = "no other channel to fall back to"
REASON_SENT_AS_FALLBACK = "sent earlier as another channel's fallback"

_CHANNEL_ORDER = {c: i for i, c in enumerate(Channel)}
_OUTCOMES = frozenset(
    {
        NotificationStatus.SENT,
        NotificationStatus.FAILED,
        NotificationStatus.SKIPPED,
        NotificationStatus.CANCELLED,
        NotificationStatus.QUEUED,
    }
)


def notification_id(recipient_id: str, channel: Channel | str, dedupe_key: str) -> str:
    """The id of a log row: UUID5 of ``recipient:channel:dedupe_key``."""
    name = f"{uuid.UUID(recipient_id)}:{Channel(channel).value}:{dedupe_key}"
    return str(uuid.uuid5(NOTIFICATION_NAMESPACE, name))


def message_dedupe_key(message_id: str) -> str:
    """The dedupe key of a message's notifications."""
    return f"message:{message_id}"


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
class NoticeMessage:
    """What a notification says about one message (never its text)."""

    message_id: str
    """The message."""
    conversation_id: str
    """Its conversation."""
    seq: int
    """Its sequence number."""
    sender_id: str
    """Its sender."""
    sender_name: str
    """The sender's display name."""
    conversation_title: str | None
    """The conversation's title (None for most direct chats)."""
    conversation_kind: str
    """direct, group or channel."""
    e2e: bool
    """End-to-end encrypted: the server cannot read it, so no preview."""


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
class InAppNotice:
    """An in-app notification just created, to emit to the recipient's room."""

    recipient_id: str
    """Who it is for."""
    notification_id: str
    """The log row."""
    message: NoticeMessage
    """What it is about."""
    unread_count: int
    """The recipient's unread in-app notifications, this one included."""


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


@dataclass(frozen=True)
class OverdueSummary:
    """Open notification rows past their due time by more than a margin."""

    count: int
    """How many."""
    oldest_due: datetime | None
    """The earliest due time among them (None: none)."""
    examples: list[NotificationRow]
    """The oldest few, every column."""


@dataclass(frozen=True)
class NotificationRow:
    """Every column of one log row (tests, operations)."""

    id: str
    """The row (UUID5 of recipient, channel and dedupe key)."""
    recipient_id: str
    """Who it is for."""
    channel: Channel
    """How."""
    dedupe_key: str
    """``message:{id}``, ``digest:{first item id}`` or ``fallback:{source id}``."""
    status: NotificationStatus
    """Where it is."""
    message_id: str | None
    """The message (None for a digest row)."""
    conversation_id: str | None
    """The message's conversation."""
    seq: int | None
    """The message's sequence number."""
    mention: bool
    """Whether it is for a mention."""
    due_at: datetime
    """When it is (or was) due."""
    attempts: int
    """Send attempts (claims)."""
    reason: str | None
    """Why it was cancelled, skipped, deferred, failed or fell back; the last error."""
    provider_ref: str | None
    """What the provider answered."""
    digest_id: str | None
    """The digest it was folded into (a fallback of a digest: that digest)."""
    source_id: str | None
    """The row this fallback row replaces."""
    item_count: int
    """Messages it covers (a digest: its items)."""
    created_at: datetime
    """When it was written."""
    updated_at: datetime
    """Its last change."""
    sent_at: datetime | None
    """When the provider accepted it (in-app: when it was created)."""
    read_at: datetime | None
    """In-app: when the recipient read the message."""
    cleared_at: datetime | None
    """Push: when a clear was asked for."""


# --- SQL ---

# Preferences of a recipient for a conversation: user row (np), overrides (cp) and
# the membership (p, with its temporary mute). {r} / {c}: recipient / conversation.
_PREF_COLUMNS = """
    np.user_id AS np_user_id, np.in_app AS np_in_app, np.push AS np_push,
    np.email AS np_email, np.sms AS np_sms, np.mentions_only AS np_mentions_only,
    np.quiet_start AS np_quiet_start, np.quiet_end AS np_quiet_end,
    np.quiet_mentions AS np_quiet_mentions,
    cp.user_id AS cp_user_id, cp.muted AS cp_muted, cp.mentions_only AS cp_mentions_only,
    cp.in_app AS cp_in_app, cp.push AS cp_push, cp.email AS cp_email, cp.sms AS cp_sms,
    p.user_id IS NOT NULL AS is_member, p.muted_until
"""
_PREF_JOINS = """
    LEFT JOIN notification_preferences np ON np.user_id = {r}
    LEFT JOIN conversation_notification_preferences cp
           ON cp.user_id = {r} AND cp.conversation_id = {c}
    LEFT JOIN participants p ON p.user_id = {r} AND p.conversation_id = {c}
"""


def _prefs_sql(recipient: str, conversation: str) -> str:
    return _PREF_JOINS.format(r=recipient, c=conversation)


UNREAD_COUNT_CAP = 100
"""Unread in-app counts stop at this (a badge shows "99+"): counting stays an index
probe of at most this many entries per user, however many notifications pile up."""

# The message's unread recipients with what planning needs of each; with
# :in_app, also what an in-app notification says (the message's sender and
# conversation) and each recipient's unread count before it (capped, see
# UNREAD_COUNT_CAP), so planning sends the in-app step without more statements.
_PLAN_RECIPIENTS = text(
    f"""
    SELECT d.recipient_id::text AS recipient_id, u.email, u.phone,
           EXISTS (SELECT 1 FROM devices dv WHERE dv.user_id = d.recipient_id) AS has_device,
           {_PREF_COLUMNS},
           m.deleted_at IS NULL AS message_live, m.sender_id::text AS sender_id,
           s.display_name AS sender_name, c.title AS conversation_title,
           c.kind::text AS conversation_kind, c.encryption_mode::text = 'e2e' AS e2e,
           CASE WHEN CAST(:in_app AS boolean) THEN (
               SELECT count(*) FROM (
                      SELECT 1 FROM notifications
                       WHERE recipient_id = d.recipient_id AND channel = 'in_app'
                         AND status = 'sent' AND read_at IS NULL
                       LIMIT {UNREAD_COUNT_CAP}) AS capped) END AS unread_before
      FROM deliveries d
      JOIN users u ON u.id = d.recipient_id
      JOIN messages m ON m.id = d.message_id
      JOIN users s ON s.id = m.sender_id
      JOIN conversations c ON c.id = m.conversation_id
      {_prefs_sql("d.recipient_id", "d.conversation_id")}
     WHERE d.message_id = :mid AND d.recipient_id <> :sender AND d.status < 2
    """
)

_INSERT_ROWS = text(
    """
    INSERT INTO notifications (id, recipient_id, channel, dedupe_key, status, message_id,
                               conversation_id, seq, mention, due_at, reason, source_id,
                               digest_id, item_count, created_at, updated_at, sent_at)
    SELECT r.id, r.recipient_id, r.channel, r.dedupe_key, r.status, r.message_id,
           r.conversation_id, r.seq, r.mention, r.due_at, r.reason, r.source_id,
           r.digest_id, r.item_count, :now, :now,
           CASE WHEN r.status = 'sent' THEN CAST(:now AS timestamptz) END
      FROM unnest(CAST(:ids AS uuid[]), CAST(:recipients AS uuid[]), CAST(:channels AS text[]),
                  CAST(:keys AS text[]), CAST(:statuses AS text[]),
                  CAST(:message_ids AS uuid[]), CAST(:conversation_ids AS uuid[]),
                  CAST(:seqs AS bigint[]), CAST(:mentions AS boolean[]),
                  CAST(:dues AS timestamptz[]), CAST(:reasons AS text[]),
                  CAST(:sources AS uuid[]), CAST(:digests AS uuid[]), CAST(:counts AS int[]))
           AS r(id, recipient_id, channel, dedupe_key, status, message_id, conversation_id,
                seq, mention, due_at, reason, source_id, digest_id, item_count)
    ON CONFLICT (recipient_id, channel, dedupe_key) DO NOTHING
    RETURNING id::text AS id
    """
)

# A fallback row replaces the same message's row still planned on that channel:
# the recipient gets the message there now, not again when the planned row falls due.
_CANCEL_PLANNED_BY_FALLBACK = text(
    """
    UPDATE notifications AS n
       SET status = 'cancelled', reason = :reason, updated_at = :now
      FROM unnest(CAST(:recipients AS uuid[]), CAST(:channels AS text[]),
                  CAST(:message_ids AS uuid[])) AS f(recipient_id, channel, message_id)
     WHERE n.recipient_id = f.recipient_id AND n.channel = f.channel
       AND n.message_id = f.message_id AND n.dedupe_key LIKE 'message:%'
       AND n.status = 'pending'
    """
)

# In-app rows a first run of plan created and the recipient has not read: what a
# rerun emits again (the same notification ids, so clients drop the repeat).
_UNREAD_OF = text(
    """
    SELECT id::text AS id FROM notifications
     WHERE id = ANY(CAST(:ids AS uuid[])) AND status = 'sent' AND read_at IS NULL
    """
)

# Rows a lost dispatch queued, now handed out by this one: stamped with its time, so
# a rerun of this call finds them again and a later dispatch knows they are taken.
_ADOPT = text(
    """
    UPDATE notifications SET updated_at = :now
     WHERE id = ANY(CAST(:ids AS uuid[])) AND status = 'queued' AND attempts = 0
    RETURNING id::text AS id
    """
)

# A digest deferred to the end of quiet hours: its items are due then (due_at says
# when a row is expected to go out, which the overdue check reads). updated_at is
# left alone: it tells which dispatch queued the row (see _DUE_ROWS).
_DEFER_ITEMS = text(
    """
    UPDATE notifications SET due_at = :until
     WHERE id = ANY(CAST(:ids AS uuid[])) AND status = 'queued' AND due_at < :until
    """
)

# Open rows past their due time by more than the caller's margin: the count, the
# oldest due time and a few examples (oldest first). ix_notifications_overdue
# (due_at, open rows only) keeps this a range scan of the overdue rows alone.
_OVERDUE_SUMMARY = text(
    """
    SELECT count(*) AS overdue, min(due_at) AS oldest_due
      FROM notifications
     WHERE status IN ('pending', 'queued', 'sending') AND due_at < :before
    """
)
_OVERDUE_ROWS = text(
    """
    SELECT id::text AS id FROM notifications
     WHERE status IN ('pending', 'queued', 'sending') AND due_at < :before
     ORDER BY due_at, id LIMIT :limit
    """
)

_NEXT_DUE = text(
    "SELECT min(due_at) FROM notifications WHERE message_id = :mid AND status = 'pending'"
)

# A rerun of plan: the next due time, or now when a dispatch whose result was lost left
# rows queued that no sender claimed (the agenda dispatches at once and takes them).
_NEXT_DUE_ON_RERUN = text(
    """
    SELECT LEAST(
               min(due_at) FILTER (WHERE status = 'pending'),
               CASE WHEN bool_or(status = 'queued' AND attempts = 0 AND source_id IS NULL
                                 AND channel <> 'in_app')
                    THEN CAST(:now AS timestamptz) END)
      FROM notifications WHERE message_id = :mid AND status IN ('pending', 'queued')
    """
)

# Rows due now; (a rerun of the same call: same workflow time) the rows that call
# already queued or sent, so a retried dispatch hands them out again; and, when the
# caller lists the times of its own earlier dispatches (:adopt), the rows a dispatch
# whose result was lost queued: still queued, never claimed (attempts = 0), queued
# at none of those times. No sender holds those (an agenda starts sends only from
# results it received), so this dispatch hands them out again.
_DUE_ROWS = text(
    f"""
    SELECT n.id::text AS id, n.recipient_id::text AS recipient_id, n.channel, n.status,
           n.updated_at, n.mention, d.status AS delivery_status, u.email, u.phone, u.timezone,
           n.channel = 'push' AND EXISTS (
               SELECT 1 FROM devices dv WHERE dv.user_id = n.recipient_id) AS has_device,
           {_PREF_COLUMNS}
      FROM notifications n
      JOIN users u ON u.id = n.recipient_id
      LEFT JOIN deliveries d ON d.message_id = n.message_id AND d.recipient_id = n.recipient_id
      {_prefs_sql("n.recipient_id", "n.conversation_id")}
     WHERE n.message_id = :mid
       AND ((n.status = 'pending' AND n.due_at <= :now)
            OR (n.status IN ('queued', 'sent') AND n.updated_at = :now AND n.source_id IS NULL)
            OR (CAST(:adopt AS boolean) AND n.status = 'queued' AND n.attempts = 0
                AND n.source_id IS NULL AND n.channel <> 'in_app'
                AND n.updated_at <> ALL(CAST(:handed_out_at AS timestamptz[]))))
    """
)

# Moves rows on; only rows still in the status they were read in (a receipt may
# have settled them meanwhile).
_APPLY_DECISIONS = text(
    """
    UPDATE notifications n
       SET status = u.status,
           reason = COALESCE(u.reason, n.reason),
           due_at = COALESCE(u.due_at, n.due_at),
           sent_at = CASE WHEN u.status = 'sent' THEN :now ELSE n.sent_at END,
           updated_at = :now
      FROM unnest(CAST(:ids AS uuid[]), CAST(:statuses AS text[]), CAST(:reasons AS text[]),
                  CAST(:dues AS timestamptz[])) AS u(id, status, reason, due_at)
     WHERE n.id = u.id AND n.status = ANY(CAST(:from_statuses AS text[]))
    RETURNING n.id::text AS id
    """
)

# Each recipient's unread in-app notifications, capped (see UNREAD_COUNT_CAP).
_UNREAD_COUNTS = text(
    f"""
    SELECT r.rid::text AS recipient_id, c.unread
      FROM unnest(CAST(:rids AS uuid[])) AS r(rid)
     CROSS JOIN LATERAL (
           SELECT count(*) AS unread FROM (
                  SELECT 1 FROM notifications
                   WHERE recipient_id = r.rid AND channel = 'in_app'
                     AND status = 'sent' AND read_at IS NULL
                   LIMIT {UNREAD_COUNT_CAP}) AS capped) AS c
    """
)

_NOTICE_MESSAGES = text(
    """
    SELECT m.id::text AS message_id, m.conversation_id::text AS conversation_id, m.seq,
           m.sender_id::text AS sender_id, s.display_name AS sender_name,
           c.title AS conversation_title, c.kind::text AS conversation_kind,
           c.encryption_mode::text = 'e2e' AS e2e
      FROM messages m
      JOIN users s ON s.id = m.sender_id
      JOIN conversations c ON c.id = m.conversation_id
     WHERE m.id = ANY(CAST(:ids AS uuid[])) AND m.deleted_at IS NULL
    """
)

_FALLBACK_SOURCES = text(
    f"""
    SELECT n.id::text AS id, n.recipient_id::text AS recipient_id, n.status, n.mention,
           n.message_id::text AS message_id, n.conversation_id::text AS conversation_id,
           n.seq, n.digest_id::text AS digest_id, n.item_count, u.email, u.phone,
           EXISTS (SELECT 1 FROM devices dv WHERE dv.user_id = n.recipient_id) AS has_device,
           {_PREF_COLUMNS}
      FROM notifications n
      JOIN users u ON u.id = n.recipient_id
      {_prefs_sql("n.recipient_id", "n.conversation_id")}
     WHERE n.id = ANY(CAST(:ids AS uuid[])) AND n.channel = :channel
       AND n.status IN ('queued', 'sending', 'fell_back')
    """
)

_DIGEST_ITEMS = text(
    f"""
    SELECT n.id::text AS id, n.status, n.mention, n.digest_id::text AS digest_id,
           d.status AS delivery_status, m.deleted_at IS NOT NULL AS message_deleted,
           u.email, u.phone, u.timezone,
           {_PREF_COLUMNS}
      FROM notifications n
      JOIN users u ON u.id = n.recipient_id
      LEFT JOIN deliveries d ON d.message_id = n.message_id AND d.recipient_id = n.recipient_id
      LEFT JOIN messages m ON m.id = n.message_id
      {_prefs_sql("n.recipient_id", "n.conversation_id")}
     WHERE n.id = ANY(CAST(:ids AS uuid[])) AND n.recipient_id = :rid AND n.channel = :channel
    """
)

_OPEN_DIGESTS = text(
    """
    SELECT id::text AS id, item_count, status FROM notifications
     WHERE id = ANY(CAST(:ids AS uuid[])) AND status IN ('queued', 'sending')
     ORDER BY id LIMIT 1
    """
)

# Items that joined a digest a lost attempt prepared and nobody has claimed yet: it
# renders its items when claimed, so they go out with it.
_GROW_DIGEST = text(
    """
    UPDATE notifications SET item_count = item_count + :n, updated_at = :now
     WHERE id = :digest AND status = 'queued'
    RETURNING item_count
    """
)

_FOLD_ITEMS = text(
    """
    UPDATE notifications SET status = 'digested', digest_id = :digest, updated_at = :now
     WHERE id = ANY(CAST(:ids AS uuid[])) AND status = 'queued'
    """
)

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

# One statement: the three updates touch disjoint rows (pending/queued, sent in-app,
# sent push). Rows this same call (same workflow time) changed count again on a rerun.
_SETTLE = text(
    """
    WITH cancelled AS (
        UPDATE notifications
           SET status = 'cancelled', reason = :reason, updated_at = :now
         WHERE recipient_id = :uid AND conversation_id = :cid AND seq <= :seq
           AND status IN ('pending', 'queued') AND (:read OR channel = 'push')
        RETURNING 1
    ), read AS (
        UPDATE notifications SET read_at = :now, updated_at = :now
         WHERE :read AND recipient_id = :uid AND conversation_id = :cid AND seq <= :seq
           AND channel = 'in_app' AND status = 'sent' AND (read_at IS NULL OR read_at = :now)
        RETURNING 1
    ), cleared AS (
        UPDATE notifications SET cleared_at = :now, updated_at = :now
         WHERE :read AND recipient_id = :uid AND conversation_id = :cid AND seq <= :seq
           AND channel = 'push' AND status = 'sent'
           AND (cleared_at IS NULL OR cleared_at = :now)
        RETURNING id::text AS id, seq
    )
    SELECT (SELECT count(*) FROM cancelled) AS cancelled,
           (SELECT count(*) FROM read) AS in_app_read,
           (SELECT array_agg(id ORDER BY seq, id) FROM cleared) AS cleared
    """
)

# settle for many (reader, conversation) watermarks at once (see settle_many); the
# three updates touch disjoint rows (pending/queued, sent in-app, sent push).
_SETTLE_MANY = text(
    """
    WITH w AS (
        SELECT * FROM unnest(CAST(:uids AS uuid[]), CAST(:cids AS uuid[]),
                             CAST(:dseqs AS bigint[]), CAST(:rseqs AS bigint[]))
               AS w(uid, cid, dseq, rseq)
    ), cancelled AS (
        UPDATE notifications n
           SET status = 'cancelled', updated_at = :now,
               reason = CASE WHEN n.seq <= w.rseq THEN :read_reason ELSE :delivered_reason END
          FROM w
         WHERE n.recipient_id = w.uid AND n.conversation_id = w.cid
           AND n.status IN ('pending', 'queued')
           AND (n.seq <= w.rseq OR (n.seq <= w.dseq AND n.channel = 'push'))
        RETURNING 1
    ), read AS (
        UPDATE notifications n SET read_at = :now, updated_at = :now
          FROM w
         WHERE n.recipient_id = w.uid AND n.conversation_id = w.cid AND n.seq <= w.rseq
           AND n.channel = 'in_app' AND n.status = 'sent'
           AND (n.read_at IS NULL OR n.read_at = :now)
        RETURNING n.recipient_id, n.conversation_id
    ), cleared AS (
        UPDATE notifications n SET cleared_at = :now, updated_at = :now
          FROM w
         WHERE n.recipient_id = w.uid AND n.conversation_id = w.cid AND n.seq <= w.rseq
           AND n.channel = 'push' AND n.status = 'sent'
           AND (n.cleared_at IS NULL OR n.cleared_at = :now)
        RETURNING n.id
    )
    SELECT 'cancelled' AS kind, NULL AS uid, NULL AS cid, NULL AS id FROM cancelled
    UNION ALL
    SELECT DISTINCT 'read', recipient_id::text, conversation_id::text, NULL FROM read
    UNION ALL
    SELECT 'cleared', NULL, NULL, id::text FROM cleared
    """
)


@dataclass(frozen=True)
class ReaderWatermark:
    """One reader's coalesced receipt in one conversation, for settle_many."""

    user_id: str
    conversation_id: str
    delivered_seq: int
    read_seq: int
    """0: nothing read in this batch."""


@dataclass(frozen=True)
class SettledMany:
    """What settle_many did."""

    cancelled: int = 0
    """Pending / queued rows cancelled."""
    in_app_read: list[tuple[str, str]] = field(default_factory=list)
    """(reader, conversation) pairs whose in-app rows were marked read."""
    unread_counts: dict[str, int] = field(default_factory=dict)
    """Those readers' unread in-app counts now (for notification:unread)."""
    clear_push_ids: list[str] = field(default_factory=list)
    """Pushes already shown that a data message should now clear."""


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

_ROW_COLUMNS = """
    id::text AS id, recipient_id::text AS recipient_id, channel, dedupe_key, status,
    message_id::text AS message_id, conversation_id::text AS conversation_id, seq, mention,
    due_at, attempts, reason, provider_ref, digest_id::text AS digest_id,
    source_id::text AS source_id, item_count, created_at, updated_at, sent_at, read_at,
    cleared_at
"""


# --- helpers ---


@dataclass
class _NewRows:
    """Column arrays for one bulk INSERT of log rows."""

    ids: list[str]
    recipients: list[str]
    channels: list[str]
    keys: list[str]
    statuses: list[str]
    message_ids: list[str | None]
    conversation_ids: list[str | None]
    seqs: list[int | None]
    mentions: list[bool]
    dues: list[datetime]
    reasons: list[str | None]
    sources: list[str | None]
    digests: list[str | None]
    counts: list[int]

    @classmethod
    def empty(cls) -> _NewRows:
        return cls([], [], [], [], [], [], [], [], [], [], [], [], [], [])

    def add(
        self,
        *,
        recipient_id: str,
        channel: Channel,
        dedupe_key: str,
        status: NotificationStatus,
        due_at: datetime,
        message_id: str | None = None,
        conversation_id: str | None = None,
        seq: int | None = None,
        mention: bool = False,
        reason: str | None = None,
        source_id: str | None = None,
        digest_id: str | None = None,
        item_count: int = 1,
    ) -> str:
        row_id = notification_id(recipient_id, channel, dedupe_key)
        self.ids.append(row_id)
        self.recipients.append(recipient_id)
        self.channels.append(channel.value)
        self.keys.append(dedupe_key)
        self.statuses.append(status.value)
        self.message_ids.append(message_id)
        self.conversation_ids.append(conversation_id)
        self.seqs.append(seq)
        self.mentions.append(mention)
        self.dues.append(due_at)
        self.reasons.append(reason)
        self.sources.append(source_id)
        self.digests.append(digest_id)
        self.counts.append(item_count)
        return row_id

    def params(self, now: datetime) -> dict[str, Any]:
        return {**self.__dict__, "now": now}


@dataclass
class _Decisions:
    """Column arrays for one bulk UPDATE moving rows on."""

    ids: list[str]
    statuses: list[str]
    reasons: list[str | None]
    dues: list[datetime | None]

    @classmethod
    def empty(cls) -> _Decisions:
        return cls([], [], [], [])

    def add(
        self,
        row_id: str,
        status: NotificationStatus,
        reason: str | None = None,
        due_at: datetime | None = None,
    ) -> None:
        self.ids.append(row_id)
        self.statuses.append(status.value)
        self.reasons.append(reason)
        self.dues.append(due_at)

    async def apply(
        self, session: AsyncSession, *, now: datetime, from_statuses: Iterable[str]
    ) -> set[str]:
        """Runs the UPDATE; returns the ids it changed."""
        if not self.ids:
            return set()
        params = {**self.__dict__, "now": now, "from_statuses": list(from_statuses)}
        rows = await session.execute(_APPLY_DECISIONS, params)
        return {r.id for r in rows}


def _reach_problem(channel: Channel, row: Mapping[Any, Any]) -> str | None:
    """Why ``channel`` cannot reach the row's recipient (None: it can)."""
    if channel is Channel.PUSH and not row["has_device"]:
        return REASON_NO_DEVICE
    if channel is Channel.EMAIL and not (row["email"] or "").strip():
        return REASON_NO_EMAIL
    if channel is Channel.SMS:
        return phone_problem(row["phone"])
    return None


def _allowed(row: Mapping[Any, Any], *, mention: bool, now: datetime) -> frozenset[Channel] | None:
    return allowed_channels(
        user_preferences(row, prefix="np_"),
        conversation_preferences(row, prefix="cp_"),
        mention=mention,
        muted_until=row["muted_until"],
        now=now,
    )


def _notice(row: Any) -> NoticeMessage:
    return NoticeMessage(
        message_id=row.message_id,
        conversation_id=row.conversation_id,
        seq=row.seq,
        sender_id=row.sender_id,
        sender_name=row.sender_name,
        conversation_title=row.conversation_title,
        conversation_kind=row.conversation_kind,
        e2e=bool(row.e2e),
    )


def _plan_notice(row: Mapping[Any, Any], mid: str, cid: str, seq: int) -> NoticeMessage:
    return NoticeMessage(
        message_id=mid,
        conversation_id=cid,
        seq=seq,
        sender_id=row["sender_id"],
        sender_name=row["sender_name"],
        conversation_title=row["conversation_title"],
        conversation_kind=row["conversation_kind"],
        e2e=bool(row["e2e"]),
    )


async def _notice_messages(session: AsyncSession, ids: Iterable[str]) -> dict[str, NoticeMessage]:
    wanted = sorted(set(ids))
    if not wanted:
        return {}
    rows = await session.execute(_NOTICE_MESSAGES, {"ids": wanted})
    return {r.message_id: _notice(r) for r in rows}


def _quiet_reason(note: str | None, until: datetime) -> str:
    text_ = f"{REASON_QUIET} until {until.isoformat()}"
    return f"{text_} ({note})" if note else text_


# --- the log ---


class NotificationLog:
    """Writes and moves notification rows; holds no state between calls."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]):
        self._sessions = sessions
        self._autocommit = autocommit(sessions)

    async def plan(
        self, input: PlanNotificationsInput
    ) -> tuple[PlanNotificationsResult, list[InAppNotice]]:
        """Writes a message's agenda: one row per recipient and wanted channel.

        Recipients are the message's deliveries not yet read, the sender excluded.
        Muted conversations and mentions-only recipients not mentioned get no row;
        a channel they want but cannot get (no device, no address, a bad number) and
        "every channel off" are recorded as skipped with the reason. Idempotent.

        When only the in-app step is due at once (the usual case: push, email and
        SMS wait for their delays), its rows are written as sent by the same
        statement, the unread counts read with the recipients, and returned as notices to emit
        (``dispatched`` says so): what dispatch_due would decide for them a moment
        later was just decided here. A rerun returns the notices again for those
        rows still unread, and ``next_due`` is now when an earlier run's dispatch left
        rows queued that nobody claimed (its result was lost: the agenda dispatches at
        once and takes them). Otherwise the rows are written pending and dispatch_due
        hands out whatever is due.

        Raises:
            InvalidInput: malformed ids.
        """
        msg = input.message
        mid = require_uuid(msg.message_id, "message_id")
        cid = require_uuid(msg.conversation_id, "conversation_id")
        sender = require_uuid(msg.sender_id, "sender_id")
        mentions = {require_uuid(m, "mention") for m in msg.mentions}
        key = message_dedupe_key(mid)
        opts = msg.options
        now = input.now
        due = {
            Channel.IN_APP: now,
            Channel.PUSH: msg.created_at + timedelta(seconds=opts.grace_seconds),
            Channel.EMAIL: msg.created_at + timedelta(seconds=opts.email_delay_seconds),
            Channel.SMS: msg.created_at + timedelta(seconds=opts.sms_delay_seconds),
        }
        send_in_app = all(at > now for channel, at in due.items() if channel is not Channel.IN_APP)
        planned = skipped = 0
        new = _NewRows.empty()
        in_app: dict[str, str] = {}  # row id -> recipient, written sent
        later: list[datetime] = []
        notices: list[InAppNotice] = []
        unread_before: dict[str, int] = {}
        # Autocommit: one write statement; the reads need no snapshot shared with it.
        async with self._autocommit() as session:
            recipients = (
                (
                    await session.execute(
                        _PLAN_RECIPIENTS, {"mid": mid, "sender": sender, "in_app": send_in_app}
                    )
                )
                .mappings()
                .all()
            )
            message = None
            if send_in_app and recipients and recipients[0]["message_live"]:
                message = _plan_notice(recipients[0], mid, cid, msg.seq)
            for row in recipients:
                if not row["is_member"]:
                    continue
                rid = row["recipient_id"]
                mention = rid in mentions
                allowed = _allowed(row, mention=mention, now=now)
                if allowed is None:
                    continue
                common = {
                    "recipient_id": rid,
                    "dedupe_key": key,
                    "message_id": mid,
                    "conversation_id": cid,
                    "seq": msg.seq,
                    "mention": mention,
                }
                if not allowed:
                    new.add(
                        channel=Channel.IN_APP,
                        status=NotificationStatus.SKIPPED,
                        reason=REASON_ALL_OFF,
                        due_at=now,
                        **common,
                    )
                    skipped += 1
                    continue
                for channel in sorted(allowed, key=_CHANNEL_ORDER.__getitem__):
                    problem = _reach_problem(channel, row)
                    if problem is not None:
                        new.add(
                            channel=channel,
                            status=NotificationStatus.SKIPPED,
                            reason=problem,
                            due_at=now,
                            **common,
                        )
                        skipped += 1
                    elif channel is Channel.IN_APP and message is not None:
                        row_id = new.add(
                            channel=channel, status=NotificationStatus.SENT, due_at=now, **common
                        )
                        in_app[row_id] = rid
                        unread_before[rid] = int(row["unread_before"] or 0)
                        planned += 1
                    else:
                        new.add(
                            channel=channel,
                            status=NotificationStatus.PENDING,
                            due_at=due[channel],
                            **common,
                        )
                        later.append(due[channel])
                        planned += 1
            inserted: set[str] = set()
            if new.ids:
                rows = await session.execute(_INSERT_ROWS, new.params(now))
                inserted = {r.id for r in rows}
            rerun = len(inserted) < len(new.ids)
            if rerun and in_app:
                # A rerun: emit again only what the first run made and is still unread.
                unread_ids = await session.execute(_UNREAD_OF, {"ids": sorted(in_app)})
                still = {r.id for r in unread_ids}
                in_app = {row_id: rid for row_id, rid in in_app.items() if row_id in still}
            if rerun:
                next_due = (
                    await session.execute(_NEXT_DUE_ON_RERUN, {"mid": mid, "now": now})
                ).scalar_one()
            else:
                next_due = min(later, default=None)
        if message is not None:
            notices = [
                InAppNotice(
                    recipient_id=rid,
                    notification_id=row_id,
                    message=message,
                    # The count read before this row, plus this row if this run wrote it.
                    unread_count=min(unread_before[rid] + (row_id in inserted), UNREAD_COUNT_CAP),
                )
                for row_id, rid in in_app.items()
            ]
        dispatched = DispatchDueResult(in_app=len(notices), next_due=next_due) if notices else None
        result = PlanNotificationsResult(
            planned=planned, skipped=skipped, next_due=next_due, dispatched=dispatched
        )
        return result, notices

    async def dispatch_due(
        self, input: DispatchDueInput
    ) -> tuple[DispatchDueResult, list[InAppNotice]]:
        """Handles a message's rows due by ``input.now``.

        Read (or, for push, delivered) meanwhile, deleted, left or no longer wanted:
        cancelled. No device / address / number any more: skipped. Push, email and
        SMS inside the recipient's quiet hours: moved to their end, still pending.
        Otherwise in-app rows are sent (returned as notices to emit), push rows
        queued (returned for send_push), email / SMS rows queued (returned as digest
        items). A rerun with the same ``now`` returns what the first run handed out.

        With ``input.handed_out_at`` (the times of the caller's earlier dispatches of
        this message), queued rows no sender ever claimed and queued at none of those
        times are handed out again too (``recovered``): a dispatch queued them and its
        result was lost with the workflow task that ran it, so nobody sends them.

        Raises:
            InvalidInput: a malformed message id.
        """
        mid = require_uuid(input.message_id, "message_id")
        now = input.now
        decisions = _Decisions.empty()
        push: list[str] = []
        digests: list[DigestItem] = []
        in_app: dict[str, str] = {}  # row id -> recipient
        cancelled = skipped = deferred = 0
        adopt = input.handed_out_at is not None
        params = {
            "mid": mid,
            "now": now,
            "adopt": adopt,
            "handed_out_at": list(input.handed_out_at or []),
        }
        async with self._sessions() as session, session.begin():
            rows = (await session.execute(_DUE_ROWS, params)).mappings().all()
            lost = [
                r["id"]
                for r in rows
                if r["status"] == NotificationStatus.QUEUED and r["updated_at"] != now
            ]
            recovered: set[str] = set()
            if lost:
                found = await session.execute(_ADOPT, {"ids": sorted(lost), "now": now})
                recovered = {r.id for r in found}
                rows = [r for r in rows if r["id"] in recovered or r["id"] not in lost]
            notices = await _notice_messages(session, [mid]) if rows else {}
            message = notices.get(mid)
            for row in rows:
                channel = Channel(row["channel"])
                rid = row["recipient_id"]
                if row["status"] != NotificationStatus.PENDING:
                    # Handed out by an earlier run of this same call, or queued by a
                    # dispatch whose result was lost (recovered).
                    if channel is Channel.IN_APP:
                        in_app[row["id"]] = rid
                    elif channel is Channel.PUSH:
                        push.append(row["id"])
                    else:
                        digests.append(DigestItem(row["id"], rid, channel))
                    continue
                verdict = self._due_verdict(row, channel, message is not None, now)
                if verdict is not None:
                    status, reason, until = verdict
                    decisions.add(row["id"], status, reason, until)
                    continue
                decisions.add(
                    row["id"],
                    NotificationStatus.SENT
                    if channel is Channel.IN_APP
                    else NotificationStatus.QUEUED,
                )
            changed = await decisions.apply(session, now=now, from_statuses=["pending"])
            by_id = {row["id"]: row for row in rows}
            for row_id, new_status in zip(decisions.ids, decisions.statuses, strict=True):
                if row_id not in changed:
                    continue
                row = by_id[row_id]
                channel = Channel(row["channel"])
                if new_status == NotificationStatus.CANCELLED:
                    cancelled += 1
                elif new_status == NotificationStatus.SKIPPED:
                    skipped += 1
                elif new_status == NotificationStatus.PENDING:
                    deferred += 1
                elif new_status == NotificationStatus.SENT:
                    in_app[row_id] = row["recipient_id"]
                elif channel is Channel.PUSH:
                    push.append(row_id)
                else:
                    digests.append(DigestItem(row_id, row["recipient_id"], channel))
            unread: dict[str, int] = {}
            if in_app:
                counts = await session.execute(
                    _UNREAD_COUNTS, {"rids": sorted(set(in_app.values()))}
                )
                unread = {r.recipient_id: int(r.unread) for r in counts}
            next_due = (await session.execute(_NEXT_DUE, {"mid": mid})).scalar_one()
        emitted = [
            InAppNotice(
                recipient_id=rid,
                notification_id=row_id,
                message=message,
                unread_count=unread.get(rid, 0),
            )
            for row_id, rid in in_app.items()
            if message is not None
        ]
        result = DispatchDueResult(
            push=push,
            digests=digests,
            in_app=len(in_app),
            cancelled=cancelled,
            skipped=skipped,
            deferred=deferred,
            next_due=next_due,
            recovered=len(recovered),
        )
        return result, emitted

    @staticmethod
    def _due_verdict(
        row: Mapping[Any, Any], channel: Channel, message_exists: bool, now: datetime
    ) -> tuple[NotificationStatus, str, datetime | None] | None:
        """Why a due row is not handed out now (status, reason, new due time), or None."""
        delivery = row["delivery_status"]
        if not message_exists or delivery is None:
            return NotificationStatus.CANCELLED, REASON_GONE, None
        if delivery >= 2:
            return NotificationStatus.CANCELLED, REASON_READ, None
        if channel is Channel.PUSH and delivery >= 1:
            return NotificationStatus.CANCELLED, REASON_DELIVERED, None
        if not row["is_member"]:
            return NotificationStatus.CANCELLED, REASON_LEFT, None
        allowed = _allowed(row, mention=row["mention"], now=now)
        if allowed is None or channel not in allowed:
            return NotificationStatus.CANCELLED, REASON_PREFERENCES, None
        if channel is Channel.IN_APP:
            return None
        problem = _reach_problem(channel, row)
        if problem is not None:
            return NotificationStatus.SKIPPED, problem, None
        until, note = quiet_hours_end(
            user_preferences(row, prefix="np_"), row["timezone"], now, mention=row["mention"]
        )
        if until is not None:
            return NotificationStatus.PENDING, _quiet_reason(note, until), until
        return None

    async def fall_back(self, input: FallBackInput) -> FallBackResult:
        """Moves rows whose channel stayed down to the next channel each recipient takes.

        The order is push -> email -> sms; a channel counts only if the recipient
        allows it (for this conversation) and can get it (an email address; SMS
        opt-in and an E.164 number). The new rows are queued to send now (no digest
        window) with ``fallback:{row id}`` as dedupe key; the old rows become
        ``fell_back``, or ``failed`` when nothing is left. Idempotent: a rerun returns
        the same new rows.

        Raises:
            InvalidInput: a malformed id or channel.
        """
        ids = sorted({require_uuid(i, "notification_id") for i in input.notification_ids})
        failed_channel = _channel(input.channel)
        later = (
            FALLBACK_ORDER[FALLBACK_ORDER.index(failed_channel) + 1 :]
            if failed_channel in FALLBACK_ORDER
            else ()
        )
        now = input.now
        new = _NewRows.empty()
        decisions = _Decisions.empty()
        targets: dict[Channel, list[str]] = defaultdict(list)
        if not ids:
            return FallBackResult()
        async with self._sessions() as session, session.begin():
            rows = (
                (
                    await session.execute(
                        _FALLBACK_SOURCES, {"ids": ids, "channel": failed_channel.value}
                    )
                )
                .mappings()
                .all()
            )
            for row in rows:
                nxt = self._fallback_channel(row, later, now)
                if nxt is None:
                    decisions.add(
                        row["id"],
                        NotificationStatus.FAILED,
                        f"{input.reason}; {REASON_NO_FALLBACK}",
                    )
                    continue
                digest_of = (row["digest_id"] or row["id"]) if row["message_id"] is None else None
                new_id = new.add(
                    recipient_id=row["recipient_id"],
                    channel=nxt,
                    dedupe_key=f"fallback:{row['id']}",
                    status=NotificationStatus.QUEUED,
                    due_at=now,
                    message_id=row["message_id"],
                    conversation_id=row["conversation_id"],
                    seq=row["seq"],
                    mention=row["mention"],
                    source_id=row["id"],
                    digest_id=digest_of,
                    item_count=row["item_count"],
                )
                decisions.add(row["id"], NotificationStatus.FELL_BACK, input.reason)
                targets[nxt].append(new_id)
            if new.ids:
                await session.execute(_INSERT_ROWS, new.params(now))
                planned = [
                    (r, c, m)
                    for r, c, m in zip(new.recipients, new.channels, new.message_ids, strict=True)
                    if m is not None
                ]
                if planned:
                    await session.execute(
                        _CANCEL_PLANNED_BY_FALLBACK,
                        {
                            "recipients": [r for r, _, _ in planned],
                            "channels": [c for _, c, _ in planned],
                            "message_ids": [m for _, _, m in planned],
                            "reason": REASON_SENT_AS_FALLBACK,
                            "now": now,
                        },
                    )
            changed = await decisions.apply(session, now=now, from_statuses=["queued", "sending"])
        moved = [c for c in later if targets.get(c)]
        first = moved[0] if moved else None
        return FallBackResult(
            channel=first,
            notification_ids=targets[first] if first else [],
            failed=sum(
                1
                for i, s in zip(decisions.ids, decisions.statuses, strict=True)
                if i in changed and s == NotificationStatus.FAILED
            ),
            fell_back=sum(
                1
                for i, s in zip(decisions.ids, decisions.statuses, strict=True)
                if i in changed and s == NotificationStatus.FELL_BACK
            ),
            sms_notification_ids=targets[Channel.SMS] if first is Channel.EMAIL else [],
        )

    @staticmethod
    def _fallback_channel(
        row: Mapping[Any, Any], later: tuple[Channel, ...], now: datetime
    ) -> Channel | None:
        """The first of ``later`` the row's recipient allows and can get."""
        if row["message_id"] is not None and not row["is_member"]:
            return None
        allowed = _allowed(row, mention=row["mention"], now=now)
        if not allowed:
            return None
        for channel in later:
            if channel in allowed and _reach_problem(channel, row) is None:
                return channel
        return None

    async def prepare_digest(self, input: PrepareDigestInput) -> PrepareDigestResult:
        """Folds a recipient's gathered email / SMS rows into one digest row, if it may.

        Rows read meanwhile (or deleted, left, no longer wanted) are cancelled; with no
        address / valid number the rest are skipped with the reason. Inside quiet hours
        nothing more happens and ``defer_until`` says when to try again. Otherwise one
        digest row (queued, ``digest:{smallest item id}``, item_count n) is written and
        the items become ``digested`` with its id. A rerun returns the same digest
        while it is unsent.

        Raises:
            InvalidInput: a malformed id, a channel other than email / sms.
        """
        rid = require_uuid(input.recipient_id, "recipient_id")
        channel = _channel(input.channel)
        if channel not in DIGEST_CHANNELS:
            raise InvalidInput(f"digests are for email or sms, not {channel.value}")
        ids = sorted({require_uuid(i, "notification_id") for i in input.notification_ids})
        now = input.now
        if not ids:
            return PrepareDigestResult()
        async with self._sessions() as session, session.begin():
            rows = (
                (
                    await session.execute(
                        _DIGEST_ITEMS, {"ids": ids, "rid": rid, "channel": channel.value}
                    )
                )
                .mappings()
                .all()
            )
            folded = sorted(
                {r["digest_id"] for r in rows if r["status"] == "digested" and r["digest_id"]}
            )
            if folded:
                unsent = (await session.execute(_OPEN_DIGESTS, {"ids": folded})).one_or_none()
                if unsent is not None:
                    # A rerun, or the replacement of a lost attempt, which may have been
                    # given rows that arrived after the lost one prepared: those join
                    # the unsent digest rather than being left queued with no digest.
                    joining = sorted(r["id"] for r in rows if r["status"] == "queued")
                    count = int(unsent.item_count)
                    if joining and unsent.status == NotificationStatus.QUEUED:
                        grown = await session.execute(
                            _GROW_DIGEST, {"digest": unsent.id, "n": len(joining), "now": now}
                        )
                        count = int(grown.scalar_one())
                        await session.execute(
                            _FOLD_ITEMS, {"digest": unsent.id, "ids": joining, "now": now}
                        )
                    return PrepareDigestResult(notification_id=unsent.id, items=count)
            decisions = _Decisions.empty()
            keep: list[Mapping[Any, Any]] = []
            for row in rows:
                if row["status"] != NotificationStatus.QUEUED:
                    continue
                reason = self._item_gone(row, channel, now)
                if reason is None:
                    keep.append(row)
                else:
                    decisions.add(row["id"], NotificationStatus.CANCELLED, reason)
            problem = _reach_problem(channel, keep[0]) if keep else None
            if problem is not None:
                for item in keep:
                    decisions.add(item["id"], NotificationStatus.SKIPPED, problem)
                keep = []
            changed = await decisions.apply(session, now=now, from_statuses=["queued"])
            cancelled = sum(
                1
                for i, s in zip(decisions.ids, decisions.statuses, strict=True)
                if i in changed and s == NotificationStatus.CANCELLED
            )
            skipped = len(changed) - cancelled
            if not keep:
                return PrepareDigestResult(cancelled=cancelled, skipped=skipped)
            mention = any(r["mention"] for r in keep)
            until, _note = quiet_hours_end(
                user_preferences(keep[0], prefix="np_"), keep[0]["timezone"], now, mention=mention
            )
            if until is not None:
                await session.execute(
                    _DEFER_ITEMS, {"ids": sorted(r["id"] for r in keep), "until": until}
                )
                return PrepareDigestResult(cancelled=cancelled, skipped=skipped, defer_until=until)
            item_ids = sorted(r["id"] for r in keep)
            new = _NewRows.empty()
            digest_id = new.add(
                recipient_id=rid,
                channel=channel,
                dedupe_key=f"digest:{item_ids[0]}",
                status=NotificationStatus.QUEUED,
                due_at=now,
                mention=mention,
                item_count=len(item_ids),
            )
            await session.execute(_INSERT_ROWS, new.params(now))
            await session.execute(_FOLD_ITEMS, {"digest": digest_id, "ids": item_ids, "now": now})
        return PrepareDigestResult(
            notification_id=digest_id, items=len(item_ids), cancelled=cancelled, skipped=skipped
        )

    @staticmethod
    def _item_gone(row: Mapping[Any, Any], channel: Channel, now: datetime) -> str | None:
        """Why a gathered digest item is no longer wanted (None: still wanted)."""
        delivery = row["delivery_status"]
        if delivery is None or row["message_deleted"]:
            return REASON_GONE
        if delivery >= 2:
            return REASON_READ
        if not row["is_member"]:
            return REASON_LEFT
        allowed = _allowed(row, mention=row["mention"], now=now)
        if allowed is None or channel not in allowed:
            return REASON_PREFERENCES
        return None

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

    async def remove_tokens(self, tokens: list[str]) -> int:
        """Deletes devices whose push tokens the provider called invalid; returns how many."""
        wanted = sorted({t for t in tokens if isinstance(t, str) and t})
        if not wanted:
            return 0
        async with self._sessions() as session, session.begin():
            result = await session.execute(
                text("DELETE FROM devices WHERE push_token = ANY(CAST(:tokens AS text[]))"),
                {"tokens": wanted},
            )
        return int(result.rowcount or 0)  # type: ignore[attr-defined]

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

    async def unread_count(self, user_id: str) -> int:
        """A user's unread in-app notifications, up to UNREAD_COUNT_CAP."""
        uid = require_uuid(user_id, "user_id")
        async with self._sessions() as session:
            rows = (await session.execute(_UNREAD_COUNTS, {"rids": [uid]})).all()
        return int(rows[0].unread) if rows else 0

    async def in_app(
        self, user_id: str, *, limit: int, unread_only: bool = False
    ) -> list[NotificationRow]:
        """A user's in-app notifications (the bell), newest first: the sent rows only.

        One indexed statement: with ``unread_only`` its predicate is exactly that of
        ``ix_notifications_unread``; otherwise ``ix_notifications_open`` (which
        holds every sent row) finds the user's rows.

        Raises:
            InvalidInput: a malformed id, or a limit below 1.
        """
        uid = require_uuid(user_id, "user_id")
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise InvalidInput(f"limit must be a positive integer, got {limit!r}")
        unread = " AND read_at IS NULL" if unread_only else ""
        sql = text(
            f"SELECT {_ROW_COLUMNS} FROM notifications"
            " WHERE recipient_id = :rid AND channel = 'in_app' AND status = 'sent'"
            f"{unread} ORDER BY created_at DESC, id DESC LIMIT :limit"
        )
        async with self._sessions() as session:
            found = (await session.execute(sql, {"rid": uid, "limit": limit})).mappings().all()
        return [
            NotificationRow(
                **{
                    **row,
                    "channel": Channel(row["channel"]),
                    "status": NotificationStatus(row["status"]),
                }
            )
            for row in found
        ]

    async def overdue(self, *, before: datetime, examples: int = 5) -> OverdueSummary:
        """Open rows (pending, queued, sending) due before ``before``: what an operator
        must see, since the row of a healthy agenda moves on soon after it falls due.

        Two statements on ix_notifications_overdue (open rows only, by due time), so
        the cost grows with the overdue rows, not with the log.

        Raises:
            InvalidInput: ``examples`` below 0.
        """
        if isinstance(examples, bool) or not isinstance(examples, int) or examples < 0:
            raise InvalidInput(f"examples must be a non-negative integer, got {examples!r}")
        async with self._sessions() as session:
            summary = (await session.execute(_OVERDUE_SUMMARY, {"before": before})).one()
            ids: list[str] = []
            if summary.overdue and examples:
                found = await session.execute(_OVERDUE_ROWS, {"before": before, "limit": examples})
                ids = [r.id for r in found]
            rows = await self._rows_by_id(session, ids)
        return OverdueSummary(
            count=int(summary.overdue), oldest_due=summary.oldest_due, examples=rows
        )

    @staticmethod
    async def _rows_by_id(session: AsyncSession, ids: list[str]) -> list[NotificationRow]:
        if not ids:
            return []
        sql = text(
            f"SELECT {_ROW_COLUMNS} FROM notifications WHERE id = ANY(CAST(:ids AS uuid[]))"
            " ORDER BY due_at, id"
        )
        found = (await session.execute(sql, {"ids": ids})).mappings().all()
        return [_notification_row(row) for row in found]

    async def rows(
        self, *, message_id: str | None = None, recipient_id: str | None = None
    ) -> list[NotificationRow]:
        """Every column of the log rows of a message and / or a recipient (all if neither).

        Ordered by recipient, channel (escalation order) and creation.
        """
        where = []
        params: dict[str, str] = {}
        if message_id is not None:
            where.append("message_id = :mid")
            params["mid"] = require_uuid(message_id, "message_id")
        if recipient_id is not None:
            where.append("recipient_id = :rid")
            params["rid"] = require_uuid(recipient_id, "recipient_id")
        sql = (
            f"SELECT {_ROW_COLUMNS} FROM notifications"
            f"{' WHERE ' + ' AND '.join(where) if where else ''}"
            " ORDER BY recipient_id, array_position(ARRAY['in_app','push','email','sms'],"
            " channel::text), created_at, id"
        )
        async with self._sessions() as session:
            found = (await session.execute(text(sql), params)).mappings().all()
        return [
            NotificationRow(
                **{
                    **row,
                    "channel": Channel(row["channel"]),
                    "status": NotificationStatus(row["status"]),
                }
            )
            for row in found
        ]

    async def settle(
        self, input: SettleNotificationsInput
    ) -> tuple[SettleNotificationsResult, int | None]:
        """Applies a reader's receipt to their notifications of one conversation.

        Up to the watermark: a read cancels every pending / queued row, marks sent
        in-app rows read and returns the sent pushes not yet cleared (marking them
        cleared, so each is returned once); a delivered receipt cancels pending /
        queued pushes only. A rerun with the same ``now`` returns the same.

        Returns:
            The result, and the reader's unread in-app count when in-app rows were read
            (for the ``notification:unread`` event), else None.

        Raises:
            InvalidInput: a malformed id, watermark or status.
        """
        uid = require_uuid(input.user_id, "user_id")
        cid = require_uuid(input.conversation_id, "conversation_id")
        seq = require_seq(input.up_to_seq)
        try:
            status = ReceiptStatus(input.status)
        except ValueError:
            raise InvalidInput(
                f"status must be 'delivered' or 'read', got {input.status!r}"
            ) from None
        read = status is ReceiptStatus.READ
        params = {
            "uid": uid,
            "cid": cid,
            "seq": seq,
            "now": input.now,
            "read": read,
            "reason": REASON_READ if read else REASON_DELIVERED,
        }
        unread: int | None = None
        async with self._sessions() as session, session.begin():
            row = (await session.execute(_SETTLE, params)).one()
            if row.in_app_read:
                counts = (await session.execute(_UNREAD_COUNTS, {"rids": [uid]})).all()
                unread = int(counts[0].unread) if counts else 0
        result = SettleNotificationsResult(
            cancelled=int(row.cancelled),
            in_app_read=int(row.in_app_read),
            clear_push_ids=list(row.cleared or []),
        )
        return result, unread

    async def settle_many(
        self, watermarks: Sequence[ReaderWatermark], *, now: datetime
    ) -> SettledMany:
        """Settles many readers' notifications at once: the receipt batcher's settle.

        The same rules as ``settle`` for each (reader, conversation): up to
        ``read_seq`` everything pending is cancelled, sent in-app rows are read and
        sent pushes returned to clear; from there up to ``delivered_seq`` pending
        pushes are cancelled. One transaction of two statements, whatever the batch.
        """
        if not watermarks:
            return SettledMany()
        params = {
            "uids": [w.user_id for w in watermarks],
            "cids": [w.conversation_id for w in watermarks],
            "dseqs": [w.delivered_seq for w in watermarks],
            "rseqs": [w.read_seq for w in watermarks],
            "now": now,
            "read_reason": REASON_READ,
            "delivered_reason": REASON_DELIVERED,
        }
        async with self._sessions() as session, session.begin():
            rows = (await session.execute(_SETTLE_MANY, params)).all()
            read = sorted({(r.uid, r.cid) for r in rows if r.kind == "read"})
            readers = sorted({uid for uid, _ in read})
            unread = {}
            if readers:
                counts = (await session.execute(_UNREAD_COUNTS, {"rids": readers})).all()
                unread = {c.recipient_id: int(c.unread) for c in counts}
        return SettledMany(
            cancelled=sum(1 for r in rows if r.kind == "cancelled"),
            in_app_read=read,
            unread_counts=unread,
            clear_push_ids=sorted(r.id for r in rows if r.kind == "cleared"),
        )


def _notification_row(row: Mapping[Any, Any]) -> NotificationRow:
    return NotificationRow(
        **{
            **row,
            "channel": Channel(row["channel"]),
            "status": NotificationStatus(row["status"]),
        }
    )


def _channel(value: object) -> Channel:
    try:
        return Channel(str(value))
    except ValueError:
        names = ", ".join(c.value for c in Channel)
        raise InvalidInput(f"channel must be one of {names}, got {value!r}") from None


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
