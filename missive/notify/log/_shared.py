"""What every part of the log uses: row ids, reasons, notices, bulk row builders, sessions."""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from missive.db import autocommit, engine_of
from missive.errors import InvalidInput
from missive.notify.log._sql import _APPLY_DECISIONS, _NOTICE_MESSAGES
from missive.notify.preferences import (
    allowed_channels,
    conversation_preferences,
    phone_problem,
    user_preferences,
)
from missive.schemas import Channel, NotificationStatus

OPEN_STATUSES = (
    NotificationStatus.PENDING,
    NotificationStatus.QUEUED,
    NotificationStatus.SENDING,
)
"""Rows still to be sent (or decided); the others are settled."""

NOTIFICATION_NAMESPACE = uuid.UUID("5d0c7a52-8f0e-4f4e-9a57-1f4f2b0c6e31")
"""Namespace of notification ids (UUID5); never change it, or reruns stop matching."""

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


_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_NAMESPACE_BYTES = NOTIFICATION_NAMESPACE.bytes


def notification_id(recipient_id: str, channel: Channel | str, dedupe_key: str) -> str:
    """The id of a log row: UUID5 of ``recipient:channel:dedupe_key``.

    ``uuid.uuid5``'s result, computed without its UUID objects: a 50-member
    group's plan makes 49 of these, and through ``uuid`` they were a quarter of the
    plan's CPU (tests/unit/test_notification_ids.py checks both agree).
    """
    if _CANONICAL_UUID.fullmatch(recipient_id) is None:
        recipient_id = str(uuid.UUID(recipient_id))
    kind = channel.value if isinstance(channel, Channel) else Channel(channel).value
    name = f"{recipient_id}:{kind}:{dedupe_key}".encode()
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + name, usedforsecurity=False).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def message_dedupe_key(message_id: str) -> str:
    """The dedupe key of a message's notifications."""
    return f"message:{message_id}"


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


async def _notice_messages(session: AsyncSession, ids: Iterable[str]) -> dict[str, NoticeMessage]:
    wanted = sorted(set(ids))
    if not wanted:
        return {}
    rows = await session.execute(_NOTICE_MESSAGES, {"ids": wanted})
    return {r.message_id: _notice(r) for r in rows}


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


class LogPart:
    """The session factory every part of NotificationLog works with."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]):
        self._sessions = sessions
        self._autocommit = autocommit(sessions)
        self._engine = engine_of(sessions)
