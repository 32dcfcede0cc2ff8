"""Workflow and activity inputs and results: frozen dataclasses, JSON on the wire.

New fields get defaults; a field a running workflow may hold is never renamed or
removed. These types are the contract for services in other languages too
(see the README).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum


class ReceiptStatus(StrEnum):
    """What a recipient says about a message."""

    DELIVERED = "delivered"
    READ = "read"


class LifecyclePhase(StrEnum):
    """Where a message's lifecycle is."""

    VALIDATING = "validating"
    REJECTED = "rejected"
    PERSISTED = "persisted"
    FOLLOWING_RECEIPTS = "following_receipts"
    ALL_READ = "all_read"
    WINDOW_ELAPSED = "window_elapsed"
    DUPLICATE = "duplicate"


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
    max_body_bytes: int = 16_384
    """Largest body accepted, in UTF-8 bytes (from settings at start)."""
    lifecycle_window_seconds: int = 86_400
    """How long the lifecycle follows receipts before it ends unread."""
    receipt_detail_max_recipients: int = 32
    """Up to this many recipients the workflow tracks each one."""
    request_id: str = ""
    """A random id of the send request that started the lifecycle: a later
    request with the same client_message_id is acked as a duplicate."""


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
    max_body_bytes: int = 16_384
    """Size limit in UTF-8 bytes."""
    receipt_detail_max_recipients: int = 32
    """Return recipient ids only up to this many."""
    request_id: str = ""
    """The send request that started the lifecycle (see SendMessageInput)."""


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


@dataclass(frozen=True)
class ReceiptInput:
    """Input of ReceiptWorkflow and of the apply_receipt activity.

    Exactly one of ``up_to_seq`` and ``message_id`` is given: "status up to and
    including this message" in the conversation.
    """

    user_id: str
    """The recipient reporting the receipt."""
    conversation_id: str
    """The conversation."""
    status: ReceiptStatus
    """delivered or read (read implies delivered)."""
    up_to_seq: int | None = None
    """Watermark: every message with seq <= this one."""
    message_id: str | None = None
    """Or a message id, taken as the watermark at its seq."""
    lifecycle_window_seconds: int = 86_400
    """Messages older than this have no running lifecycle to tell."""
    receipt_detail_max_recipients: int = 32
    """Lifecycles of messages with more recipients hear only of milestones."""


@dataclass(frozen=True)
class ReceiptChange:
    """One message whose delivery for the reporting user moved forward."""

    message_id: str
    """The message."""
    sender_id: str
    """Its sender, who receives the receipt event."""
    client_message_id: str
    """With sender_id, names the message's lifecycle workflow."""
    seq: int
    """Its sequence number."""
    status: ReceiptStatus
    """The new status of the reporting user's delivery."""
    at: datetime
    """When it changed."""
    recipient_count: int = 0
    """The message's recipients in all."""
    delivered_count: int = 0
    """How many of them have it delivered (or read), after this change."""
    read_count: int = 0
    """How many have read it, after this change."""
    within_window: bool = True
    """Whether its lifecycle workflow may still be running."""


@dataclass(frozen=True)
class ApplyReceiptResult:
    """What one receipt changed; only forward moves are listed."""

    user_id: str
    """The reporting recipient."""
    conversation_id: str
    """The conversation."""
    status: ReceiptStatus
    """The status applied."""
    up_to_seq: int
    """The watermark applied."""
    changed: int
    """How many deliveries moved forward."""
    changes: list[ReceiptChange] = field(default_factory=list)
    """The changed messages inside the lifecycle window (newest first, capped)."""


@dataclass(frozen=True)
class ReceiptResult:
    """Result of ReceiptWorkflow."""

    changed: int
    """Deliveries that moved forward (0 for a repeated or late receipt)."""
    up_to_seq: int
    """The watermark applied."""
    notified_lifecycles: int = 0
    """Lifecycle workflows signalled about it."""


@dataclass(frozen=True)
class ReceiptsChanged:
    """Signal to a lifecycle workflow: receipts for its message moved forward."""

    recipient_count: int
    """The message's recipients in all."""
    delivered_count: int
    """How many have it delivered (or read)."""
    read_count: int
    """How many have read it."""
    recipient_id: str | None = None
    """The recipient whose receipt this is (small conversations only)."""
    status: ReceiptStatus | None = None
    """That recipient's new status."""
    at: datetime | None = None
    """When it changed."""


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
    """all_read, window_elapsed or duplicate."""
    recipient_count: int
    """Recipients in all."""
    delivered_count: int
    """Delivered (or read) when it ended."""
    read_count: int
    """Read when it ended."""
