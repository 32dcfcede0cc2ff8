"""Receipts: a recipient's delivered / read watermark, what it changed, the lifecycles' signal."""

# Annotations are evaluated, not postponed: see missive/schemas/__init__.py.

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from missive.schemas._notify_options import NotifyOptions
from missive.validation import MAX_LIFECYCLE_WINDOW_SECONDS, MAX_RECEIPT_DETAIL_RECIPIENTS, bounds

LIFECYCLE_WINDOW_BOUNDS = bounds(1, MAX_LIFECYCLE_WINDOW_SECONDS)
"""Field metadata of lifecycle_window_seconds, on sends and receipts alike."""
RECEIPT_DETAIL_BOUNDS = bounds(0, MAX_RECEIPT_DETAIL_RECIPIENTS)
"""Field metadata of receipt_detail_max_recipients, on sends and receipts alike."""


class ReceiptStatus(StrEnum):
    """What a recipient says about a message."""

    DELIVERED = "delivered"
    READ = "read"


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
    lifecycle_window_seconds: int = field(default=86_400, metadata=LIFECYCLE_WINDOW_BOUNDS)
    """Messages older than this have no running lifecycle to tell."""
    receipt_detail_max_recipients: int = field(default=32, metadata=RECEIPT_DETAIL_BOUNDS)
    """Lifecycles of messages with more recipients hear only of milestones."""
    notify: NotifyOptions | None = None
    """Notification settings (as for a send); set, the receipt also settles the reader's
    notifications (cancels what is no longer needed, clears pushes already shown)."""


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

    def lifecycle_reacts(self, detail_max_recipients: int) -> bool:
        """Whether the message's lifecycle is told of this change: in small
        conversations every receipt, in large ones only the milestones (everyone has
        it delivered, everyone has read it)."""
        if self.recipient_count <= detail_max_recipients:
            return True
        if self.read_count >= self.recipient_count:
            return True
        return (
            self.status is ReceiptStatus.DELIVERED and self.delivered_count >= self.recipient_count
        )


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
class RecipientReceipt:
    """One recipient's new status of a message, in a ReceiptsChanged signal."""

    recipient_id: str
    """The recipient."""
    status: ReceiptStatus
    """Their new status (read implies delivered)."""
    at: datetime
    """When it changed."""


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
    recipients: list[RecipientReceipt] = field(default_factory=list)
    """Several recipients' receipts at once (small conversations only): the gateway's
    receipt batcher tells a lifecycle of everything in its window in one signal."""
