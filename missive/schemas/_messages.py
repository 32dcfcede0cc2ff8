"""A message's lifecycle: the send, persisting and announcing it, the sender's ack, its status."""

# Annotations are evaluated, not postponed: see missive/schemas/__init__.py.

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from missive.schemas._notifications import PlanNotificationsInput
from missive.schemas._notify_options import NotifyOptions
from missive.schemas._receipts import LIFECYCLE_WINDOW_BOUNDS, RECEIPT_DETAIL_BOUNDS
from missive.validation import bounds


class LifecyclePhase(StrEnum):
    """Where a message's lifecycle is."""

    VALIDATING = "validating"
    REJECTED = "rejected"
    PERSISTED = "persisted"
    FOLLOWING_RECEIPTS = "following_receipts"
    ALL_READ = "all_read"
    WINDOW_ELAPSED = "window_elapsed"


@dataclass(frozen=True)
class SendMessageInput:
    """Input of MessageLifecycleWorkflow: one message as its sender sent it."""

    conversation_id: str
    """The conversation (UUID)."""
    sender_id: str
    """The sending user (UUID); must take part in the conversation."""
    client_message_id: str
    """The sender's own id for this message; a resend with it is recognised."""
    body: str
    """The text. It travels only through the payload codec (encrypted) and is
    stored only encrypted; it never reaches a log."""
    max_body_bytes: int = field(default=16_384, metadata=bounds(1))
    """Largest body accepted, in UTF-8 bytes (the sender's MAX_BODY_BYTES). It can
    only lower the limit: the persisting worker enforces its own MAX_BODY_BYTES."""
    lifecycle_window_seconds: int = field(default=86_400, metadata=LIFECYCLE_WINDOW_BOUNDS)
    """How long the lifecycle follows receipts before it ends unread (1 s to 30 days)."""
    receipt_detail_max_recipients: int = field(default=32, metadata=RECEIPT_DETAIL_BOUNDS)
    """Up to this many recipients the workflow tracks each one (at most 1,024)."""
    request_id: str = ""
    """A random id of the send request that started the lifecycle: a later
    request with the same client_message_id is acked as a duplicate."""
    e2e_header: dict[str, Any] | None = None
    """End-to-end encrypted conversations only: the client's key metadata, stored
    and relayed untouched; ``body`` is then the client's base64 ciphertext."""
    mentions: list[str] = field(default_factory=list)
    """User ids the sender mentioned (the client names them, so e2e messages can
    mention too); mentions-only preferences and quiet-hours break-through use them."""
    notify: NotifyOptions | None = None
    """Notification settings at send time; None: this message notifies nobody."""


@dataclass(frozen=True)
class PersistMessageInput:
    """Input of the persist_message activity."""

    conversation_id: str
    """The conversation (UUID)."""
    sender_id: str
    """The sender (UUID)."""
    client_message_id: str
    """The sender's id for the message."""
    body: str
    """The plaintext body; encrypted before it touches the database."""
    max_body_bytes: int = field(default=16_384, metadata=bounds(1))
    """Size limit in UTF-8 bytes; the service's own MAX_BODY_BYTES caps it."""
    receipt_detail_max_recipients: int = field(default=32, metadata=RECEIPT_DETAIL_BOUNDS)
    """Return recipient ids only up to this many."""
    request_id: str = ""
    """The send request that started the lifecycle (see SendMessageInput)."""
    e2e_header: dict[str, Any] | None = None
    """The key metadata of an end-to-end encrypted message (see SendMessageInput)."""


@dataclass(frozen=True)
class PersistMessageResult:
    """What persisting a message produced (ids only, never the body)."""

    message_id: str
    """Server id (deterministic from sender and client_message_id)."""
    conversation_id: str
    """The conversation."""
    seq: int
    """Position in the conversation; total order."""
    created_at: datetime
    """When the server stored it."""
    created: bool
    """False when the message already existed (a resend): nothing was written."""
    recipient_count: int
    """How many delivery rows the message has."""
    recipient_ids: list[str] = field(default_factory=list)
    """The recipients, when there are at most receipt_detail_max_recipients."""


@dataclass(frozen=True)
class BroadcastMessageInput:
    """Input of the broadcast_message activity: the id, never the body."""

    message_id: str
    """The message to announce as message:new to its conversation's room."""
    plan: PlanNotificationsInput | None = None
    """Also plan the message's notifications once it is announced (one local
    activity for both); the result then carries the plan, or None when planning
    failed and is left to the agenda's own plan_notifications."""


@dataclass(frozen=True)
class AcceptInput:
    """Argument of the ``accepted`` update: which send is asking."""

    fingerprint: str = ""
    """``send_fingerprint`` of the asking send. A resend that joins a running
    lifecycle with another body or conversation is refused by it; empty skips
    the check (an operator reading the ack)."""
    request_id: str = ""
    """The asking send's request id; another than the starting one's means the
    asking send is a resend, acked with ``duplicate=True``."""


@dataclass(frozen=True)
class MessageAccepted:
    """Result of the ``accepted`` update: what the sender's client is acked with."""

    message_id: str
    """Server id."""
    conversation_id: str
    """The conversation."""
    seq: int
    """Sequence number in the conversation."""
    created_at: datetime
    """When the server stored it."""
    duplicate: bool = False
    """True when this send repeated an earlier one with the same body."""


@dataclass(frozen=True)
class Acceptance:
    """Result of the ``acceptance`` query: the ack, or why there is none.

    A query cannot fail with a typed error through an encrypting failure
    converter, so the refusal travels as data.
    """

    accepted: MessageAccepted | None = None
    """The ack, once the message is stored."""
    error_type: str | None = None
    """The domain error's name when the message was refused."""
    error_message: str | None = None
    """Why it was refused."""


@dataclass
class RecipientState:
    """One recipient's status as the lifecycle knows it."""

    status: str = "sent"
    """sent, delivered or read."""
    delivered_at: datetime | None = None
    """When it was delivered."""
    read_at: datetime | None = None
    """When it was read."""


@dataclass
class MessageStatus:
    """Result of the ``status`` query of MessageLifecycleWorkflow."""

    phase: LifecyclePhase = LifecyclePhase.VALIDATING
    """Where the lifecycle is."""
    message_id: str | None = None
    """Server id, once persisted."""
    conversation_id: str | None = None
    """The conversation."""
    seq: int | None = None
    """Sequence number, once persisted."""
    recipient_count: int = 0
    """Recipients in all."""
    delivered_count: int = 0
    """Delivered (or read)."""
    read_count: int = 0
    """Read."""
    recipients: dict[str, RecipientState] = field(default_factory=dict)
    """Per recipient, when the conversation is small enough to track each one."""
    per_recipient: bool = True
    """False for large groups: only the counts are kept (the database has the rest)."""
    error: str | None = None
    """Why the message was rejected, when it was."""
    created_at: datetime | None = None
    """When the message was stored, once persisted."""
    duplicate: bool = False
    """Whether the row already existed when this lifecycle persisted it."""


@dataclass(frozen=True)
class MessageLifecycleResult:
    """Result of MessageLifecycleWorkflow."""

    message_id: str
    """Server id."""
    seq: int
    """Sequence number."""
    phase: LifecyclePhase
    """all_read or window_elapsed."""
    recipient_count: int
    """Recipients in all."""
    delivered_count: int
    """Delivered (or read) when it ended."""
    read_count: int
    """Read when it ended."""
