"""SQLAlchemy 2 models: the schema the Alembic migrations create."""

from __future__ import annotations

import enum
import uuid
from datetime import datetime, time

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Enum,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    SmallInteger,
    String,
    Text,
    Time,
    UniqueConstraint,
    false,
    func,
    text,
    true,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    """Declarative base; its metadata is what Alembic compares against."""


def _enum(cls: type[enum.Enum], name: str) -> Enum:
    return Enum(cls, name=name, values_callable=lambda e: [m.value for m in e])


class ConversationKind(enum.StrEnum):
    """What kind of conversation: one-to-one, a group, or a broadcast channel."""

    DIRECT = "direct"
    GROUP = "group"
    CHANNEL = "channel"


class EncryptionMode(enum.StrEnum):
    """standard: the server can decrypt (search, previews); e2e: it never can."""

    STANDARD = "standard"
    E2E = "e2e"


class ParticipantRole(enum.StrEnum):
    """A participant's rights in a conversation."""

    OWNER = "owner"
    ADMIN = "admin"
    MEMBER = "member"


class DevicePlatform(enum.StrEnum):
    """Where a push token came from."""

    IOS = "ios"
    ANDROID = "android"
    WEB = "web"


class DeliveryStatus(enum.IntEnum):
    """Per-recipient status; it only ever moves forward (sent < delivered < read)."""

    SENT = 0
    DELIVERED = 1
    READ = 2


class User(Base):
    """Someone who chats."""

    __tablename__ = "users"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    handle: Mapped[str] = mapped_column(String(64), unique=True)
    display_name: Mapped[str] = mapped_column(String(128))
    email: Mapped[str | None] = mapped_column(String(320))
    phone: Mapped[str | None] = mapped_column(String(32))
    timezone: Mapped[str] = mapped_column(String(64), server_default="UTC")
    locale: Mapped[str] = mapped_column(String(16), server_default="en")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    tokens_valid_after: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    """Gateway tokens issued before this instant are refused ("logout everywhere")."""


class Device(Base):
    """A device that can receive push notifications."""

    __tablename__ = "devices"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    platform: Mapped[DevicePlatform] = mapped_column(_enum(DevicePlatform, "device_platform"))
    push_token: Mapped[str] = mapped_column(Text, unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    last_seen_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Conversation(Base):
    """A direct chat, a group or a channel; holds the per-conversation sequence."""

    __tablename__ = "conversations"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    kind: Mapped[ConversationKind] = mapped_column(_enum(ConversationKind, "conversation_kind"))
    title: Mapped[str | None] = mapped_column(String(200))
    encryption_mode: Mapped[EncryptionMode] = mapped_column(
        _enum(EncryptionMode, "encryption_mode"), server_default=EncryptionMode.STANDARD.value
    )
    retention_days: Mapped[int | None] = mapped_column(Integer)
    legal_hold: Mapped[bool] = mapped_column(Boolean, server_default=false())
    last_seq: Mapped[int] = mapped_column(BigInteger, server_default="0")
    key_version: Mapped[int] = mapped_column(Integer, server_default="1")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (
        CheckConstraint("retention_days IS NULL OR retention_days > 0", name="retention_positive"),
    )


class ConversationKey(Base):
    """A conversation's data key, wrapped (encrypted) by a master key."""

    __tablename__ = "conversation_keys"

    conversation_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("conversations.id", ondelete="CASCADE"), primary_key=True
    )
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    master_key_version: Mapped[int] = mapped_column(Integer)
    wrapped_key: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (Index("ix_conversation_keys_master_version", "master_key_version"),)


class Participant(Base):
    """A user's membership in a conversation, with its receipt watermarks."""

    __tablename__ = "participants"

    conversation_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("conversations.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    role: Mapped[ParticipantRole] = mapped_column(
        _enum(ParticipantRole, "participant_role"), server_default=ParticipantRole.MEMBER.value
    )
    muted_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    delivered_seq: Mapped[int] = mapped_column(BigInteger, server_default="0")
    read_seq: Mapped[int] = mapped_column(BigInteger, server_default="0")
    joined_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (CheckConstraint("read_seq <= delivered_seq", name="read_implies_delivered"),)


class Message(Base):
    """One message; its body exists only as AES-256-GCM ciphertext."""

    __tablename__ = "messages"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    conversation_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("conversations.id", ondelete="CASCADE")
    )
    seq: Mapped[int] = mapped_column(BigInteger)
    sender_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"))
    client_message_id: Mapped[str] = mapped_column(String(128))
    body_ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    key_version: Mapped[int] = mapped_column(Integer)
    # e2e conversations: the client's key metadata; the body is its opaque ciphertext.
    e2e_header: Mapped[dict[str, object] | None] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    edited_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Search: NULL while the message waits for the indexer (new, edited or deleted).
    indexed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        Index("ix_messages_search_pending", "created_at", postgresql_where="indexed_at IS NULL"),
        UniqueConstraint("conversation_id", "seq", name="uq_messages_conversation_seq"),
        UniqueConstraint("sender_id", "client_message_id", name="uq_messages_sender_client_id"),
        Index("ix_messages_conversation_created", "conversation_id", "created_at"),
        # Unread counts subtract a conversation's deleted messages (few) instead of
        # joining every pending delivery to its message.
        Index("ix_messages_deleted", "conversation_id", postgresql_where="deleted_at IS NOT NULL"),
    )


class Delivery(Base):
    """One recipient's status for one message (sent -> delivered -> read)."""

    __tablename__ = "deliveries"

    message_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("messages.id", ondelete="CASCADE"), primary_key=True
    )
    recipient_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    # Denormalised from the message so a watermark receipt is one indexed UPDATE.
    conversation_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    seq: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[int] = mapped_column(SmallInteger, server_default="0")
    sent_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    read_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        CheckConstraint("status IN (0, 1, 2)", name="status_known"),
        Index(
            "ix_deliveries_pending",
            "recipient_id",
            "conversation_id",
            "seq",
            postgresql_where="status < 2",
        ),
    )


class BroadcastOutbox(Base):
    """A Socket.IO broadcast too large for a NOTIFY payload, passed by reference."""

    __tablename__ = "broadcast_outbox"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


# --- batch and retention ---


class Batch(Base):
    """A staged batch (import or announcement); its items are in batch_items."""

    __tablename__ = "batches"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    total: Mapped[int] = mapped_column(Integer)
    source_sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (CheckConstraint("total > 0", name="batch_not_empty"),)


class BatchItem(Base):
    """One staged item; state 0 pending, 1 stored, 2 failed (reason says why)."""

    __tablename__ = "batch_items"

    batch_id: Mapped[str] = mapped_column(
        ForeignKey("batches.id", ondelete="CASCADE"), primary_key=True
    )
    item_no: Mapped[int] = mapped_column(Integer, primary_key=True)
    line_no: Mapped[int] = mapped_column(Integer)
    payload: Mapped[dict[str, object]] = mapped_column(JSONB)
    state: Mapped[int] = mapped_column(SmallInteger, server_default="0")
    reason: Mapped[str | None] = mapped_column(Text)
    message_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))

    __table_args__ = (CheckConstraint("state IN (0, 1, 2)", name="batch_item_state_known"),)


class ArchivedMessage(Base):
    """An expired message, restorable until purged (its deliveries are not archived:
    a restore rebuilds them from the participants' watermarks).

    Keyed by (conversation_id, seq), which a restore looks up and archiving inserts
    in order (a sequence number is never reused in a conversation); archived_at
    grows with insertion order, so the purge finds old rows through a BRIN index.
    """

    __tablename__ = "archived_messages"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    conversation_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    sender_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    client_message_id: Mapped[str] = mapped_column(String(128))
    body_ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    key_version: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    edited_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    extra: Mapped[dict[str, object]] = mapped_column(JSONB, server_default="{}")
    archived_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        Index("ix_archived_messages_archived_at", "archived_at", postgresql_using="brin"),
    )


# --- search ---


class SearchDeletion(Base):
    """A hard-deleted message the search index must forget (written by a trigger)."""

    __tablename__ = "search_deletions"

    message_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    deleted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    processed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        Index("ix_search_deletions_pending", "deleted_at", postgresql_where="processed_at IS NULL"),
    )


# --- notifications ---

NOTIFICATION_CHANNELS = ("in_app", "push", "email", "sms")
"""Values of notifications.channel (missive.schemas.Channel)."""

NOTIFICATION_STATUSES = (
    "pending",
    "queued",
    "sending",
    "sent",
    "digested",
    "cancelled",
    "skipped",
    "failed",
    "fell_back",
)
"""Values of notifications.status (missive.schemas.NotificationStatus)."""


def _one_of(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Notification(Base):
    """One notification a recipient may get on one channel: the intent, then its outcome.

    Written before anything is sent; (recipient_id, channel, dedupe_key) is unique and
    the id is a UUID5 of the three, so every step of the pipeline is idempotent.
    """

    __tablename__ = "notifications"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    recipient_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    channel: Mapped[str] = mapped_column(String(8))
    dedupe_key: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(12))
    # No foreign key: retention may purge a message while its log rows age out later.
    message_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    conversation_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    seq: Mapped[int | None] = mapped_column(BigInteger)
    mention: Mapped[bool] = mapped_column(Boolean, server_default=false())
    due_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    reason: Mapped[str | None] = mapped_column(Text)
    provider_ref: Mapped[str | None] = mapped_column(Text)
    # Item rows: the digest row they were folded into. A fallback of a digest row:
    # that digest's id, so its items are found the same way.
    digest_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    source_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    item_count: Mapped[int] = mapped_column(Integer, server_default="1")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    read_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    cleared_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        UniqueConstraint(
            "recipient_id", "channel", "dedupe_key", name="uq_notifications_recipient_channel_key"
        ),
        CheckConstraint(_one_of("status", NOTIFICATION_STATUSES), name="notification_status_known"),
        CheckConstraint(
            _one_of("channel", NOTIFICATION_CHANNELS), name="notification_channel_known"
        ),
        Index(
            "ix_notifications_due",
            "message_id",
            "due_at",
            postgresql_where="status = 'pending'",
        ),
        # Rows still to send (migration 0015: it held every sent row too, which the
        # planner then scanned to settle a receipt).
        Index(
            "ix_notifications_open",
            "recipient_id",
            "conversation_id",
            "seq",
            postgresql_where="status IN ('pending', 'queued')",
        ),
        # What a read receipt still has to settle (and the bell's unread count): only
        # these rows, not the reader's whole history (migration 0014).
        Index(
            "ix_notifications_unread",
            "recipient_id",
            "conversation_id",
            "seq",
            postgresql_where="channel = 'in_app' AND read_at IS NULL AND status = 'sent'",
        ),
        # The bell's full page: the newest read rows in its order (migration 0016).
        # Not the unread ones: such an index could stand in for ix_notifications_unread
        # in a settle, reading the reader's unread rows of every conversation.
        Index(
            "ix_notifications_bell_read",
            "recipient_id",
            text("created_at DESC"),
            text("id DESC"),
            postgresql_where="channel = 'in_app' AND status = 'sent' AND read_at IS NOT NULL",
        ),
        Index(
            "ix_notifications_uncleared",
            "recipient_id",
            "conversation_id",
            "seq",
            postgresql_where="channel = 'push' AND cleared_at IS NULL AND status = 'sent'",
        ),
        Index(
            "ix_notifications_message",
            "message_id",
            postgresql_where="message_id IS NOT NULL",
        ),
        Index(
            "ix_notifications_digest",
            "digest_id",
            postgresql_where="digest_id IS NOT NULL",
        ),
    )


class NotificationPreference(Base):
    """A user's notification preferences; no row means the defaults."""

    __tablename__ = "notification_preferences"

    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    in_app: Mapped[bool] = mapped_column(Boolean, server_default=true())
    push: Mapped[bool] = mapped_column(Boolean, server_default=true())
    email: Mapped[bool] = mapped_column(Boolean, server_default=true())
    sms: Mapped[bool] = mapped_column(Boolean, server_default=false())
    mentions_only: Mapped[bool] = mapped_column(Boolean, server_default=false())
    quiet_start: Mapped[time | None] = mapped_column(Time)
    quiet_end: Mapped[time | None] = mapped_column(Time)
    quiet_mentions: Mapped[bool] = mapped_column(Boolean, server_default=false())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (
        CheckConstraint("(quiet_start IS NULL) = (quiet_end IS NULL)", name="quiet_hours_complete"),
    )


class ConversationNotificationPreference(Base):
    """One user's overrides for one conversation; NULL inherits the user's choice."""

    __tablename__ = "conversation_notification_preferences"

    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    conversation_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("conversations.id", ondelete="CASCADE"), primary_key=True
    )
    muted: Mapped[bool] = mapped_column(Boolean, server_default=false())
    mentions_only: Mapped[bool | None] = mapped_column(Boolean)
    in_app: Mapped[bool | None] = mapped_column(Boolean)
    push: Mapped[bool | None] = mapped_column(Boolean)
    email: Mapped[bool | None] = mapped_column(Boolean)
    sms: Mapped[bool | None] = mapped_column(Boolean)
