"""Notifications: the per-message agenda, dispatch and fallback, digests, sends, settling."""

# Annotations are evaluated, not postponed: see missive/schemas/__init__.py.

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from missive.schemas._notify_options import NotifyOptions
from missive.schemas._receipts import ReceiptStatus


class Channel(StrEnum):
    """A way to reach a recipient, in escalation (and fallback) order."""

    IN_APP = "in_app"
    PUSH = "push"
    EMAIL = "email"
    SMS = "sms"


DIGEST_CHANNELS = (Channel.EMAIL, Channel.SMS)
"""Channels whose due notifications are gathered into digests."""


class NotificationStatus(StrEnum):
    """Where one row of the notification log is. Only the first three move on."""

    PENDING = "pending"
    """Planned; waits for its due time."""
    QUEUED = "queued"
    """Due; handed to a sender or to the recipient's digest."""
    SENDING = "sending"
    """The intent is recorded and the provider call is in flight."""
    SENT = "sent"
    """The provider accepted it (provider_ref says what it answered)."""
    DIGESTED = "digested"
    """Folded into a digest notification (digest_id names it)."""
    CANCELLED = "cancelled"
    """Not needed any more: the recipient read (or, for push, received) the message."""
    SKIPPED = "skipped"
    """Nothing to send to or allowed (no device, no address, every channel off)."""
    FAILED = "failed"
    """A permanent provider error (reason names it); not retried."""
    FELL_BACK = "fell_back"
    """The channel stayed down past its deadline; the next allowed channel got it."""


@dataclass(frozen=True)
class NotifyMessageInput:
    """Input of NotifyMessageWorkflow: one stored message to notify its recipients of."""

    message_id: str
    """The message."""
    conversation_id: str
    """Its conversation."""
    sender_id: str
    """Its sender (never notified of their own message)."""
    seq: int
    """Its sequence number in the conversation."""
    created_at: datetime
    """When it was stored; every step's delay counts from here."""
    mentions: list[str] = field(default_factory=list)
    """Mentioned user ids."""
    options: NotifyOptions = field(default_factory=NotifyOptions)
    """Delays, deadlines, batch size and queues."""


@dataclass(frozen=True)
class NotifyMessageResult:
    """What a message's notifications came to (counts of log rows)."""

    planned: int = 0
    """Rows planned (every channel, every recipient)."""
    in_app: int = 0
    """In-app notifications created."""
    pushed: int = 0
    """Pushes sent (one per recipient, to all their devices)."""
    digested: int = 0
    """Handed to recipients' email / SMS digests."""
    cancelled: int = 0
    """Cancelled because the recipient received or read the message first."""
    skipped: int = 0
    """Skipped, with a recorded reason."""
    failed: int = 0
    """Permanent failures, recorded."""
    fell_back: int = 0
    """Moved to the next channel after a channel stayed down."""
    fallback_sent: int = 0
    """Sent by email / SMS at once as a push's fallback (no digest window)."""


@dataclass(frozen=True)
class PlanNotificationsInput:
    """Input of plan_notifications."""

    message: NotifyMessageInput
    """The message and options."""
    now: datetime
    """The workflow's time (so timers and time-skipping agree)."""


@dataclass(frozen=True)
class DigestItem:
    """One due email / SMS notification handed to the recipient's digest."""

    notification_id: str
    """The log row."""
    recipient_id: str
    """Who gets the digest."""
    channel: Channel
    """email or sms."""


@dataclass(frozen=True)
class DispatchDueInput:
    """Input of dispatch_due."""

    message_id: str
    """The message whose due rows to handle."""
    options: NotifyOptions
    """Options (quiet hours are read from the database)."""
    now: datetime
    """The workflow's time."""
    handed_out_at: list[datetime] | None = None
    """When the caller's earlier dispatches of this message ran (and its plan, if that
    dispatched): rows queued at any other time were queued by a dispatch whose result
    was lost, and are handed out again. None: no such recovery (callers before it)."""


@dataclass(frozen=True)
class DispatchDueResult:
    """What dispatch_due did with the rows due by ``now``."""

    push: list[str] = field(default_factory=list)
    """Push rows now queued for send_push."""
    digests: list[DigestItem] = field(default_factory=list)
    """Email / SMS rows now queued for the recipients' digests."""
    in_app: int = 0
    """In-app notifications created (and emitted) here."""
    cancelled: int = 0
    """Rows cancelled: received / read meanwhile, muted, or no longer wanted."""
    skipped: int = 0
    """Rows skipped with a reason."""
    deferred: int = 0
    """Rows moved to the end of the recipient's quiet hours."""
    next_due: datetime | None = None
    """Earliest due time of a row still pending; None: none left."""
    recovered: int = 0
    """Of ``push`` and ``digests``, rows a dispatch whose result was lost had queued."""


@dataclass(frozen=True)
class PlanNotificationsResult:
    """The agenda written for a message."""

    planned: int
    """Pending rows written."""
    skipped: int
    """Rows recorded as skipped (reason)."""
    next_due: datetime | None
    """Earliest due time of a pending row; None: nothing to do."""
    dispatched: DispatchDueResult | None = None
    """What was due at once (the in-app step), dispatched by the same activity;
    ``next_due`` is then what is pending after it."""


@dataclass(frozen=True)
class QueueDigestsInput:
    """Input of queue_digests: signal-with-start each recipient's digest."""

    items: list[DigestItem]
    """The due email / SMS rows."""
    options: NotifyOptions
    """Window, deadlines and queues for the digest workflows."""


@dataclass(frozen=True)
class QueueDigestsResult:
    """How many digest workflows were signalled."""

    signalled: int


@dataclass(frozen=True)
class SendNotificationsInput:
    """Input of send_push / send_email / send_sms / clear_pushes: log row ids."""

    notification_ids: list[str]
    """Rows to send (rows already sent, cancelled or failed are left alone)."""


@dataclass(frozen=True)
class ClearPushesInput:
    """Input of ClearPushesWorkflow: pushes already shown that the reader has now read."""

    notification_ids: list[str]
    """The push rows to clear on the reader's devices (each row is cleared once)."""
    push_task_queue: str
    """The push provider's task queue (NotifyOptions.push_task_queue)."""


@dataclass(frozen=True)
class SendNotificationsResult:
    """Outcomes of one send activity."""

    sent: int = 0
    """Accepted by the provider."""
    failed: int = 0
    """Permanent errors, recorded on the rows."""
    cancelled: int = 0
    """Found read / received just before sending."""
    skipped: int = 0
    """Nothing to send to (no device / address / number), recorded."""
    removed_tokens: int = 0
    """Device tokens FCM called invalid, deleted."""


@dataclass(frozen=True)
class FallBackInput:
    """Input of fall_back: rows whose channel stayed down past its deadline."""

    notification_ids: list[str]
    """The rows that could not be sent."""
    channel: Channel
    """The channel that failed."""
    reason: str
    """The last error, recorded on the rows."""
    now: datetime
    """The workflow's time."""


@dataclass(frozen=True)
class FallBackResult:
    """Where the rows went."""

    channel: Channel | None = None
    """The next channel (None: no other channel allowed for anyone)."""
    notification_ids: list[str] = field(default_factory=list)
    """New rows on ``channel``, queued to send now."""
    failed: int = 0
    """Rows with no further channel, recorded as failed."""
    fell_back: int = 0
    """Rows moved on."""
    sms_notification_ids: list[str] = field(default_factory=list)
    """When ``channel`` is email: new SMS rows, queued, for recipients who take no
    email but do take SMS (a push fallback skips straight to SMS for them); send
    them with send_sms as well."""


@dataclass(frozen=True)
class NotificationDigestInput:
    """Input of NotificationDigestWorkflow (one per recipient and channel)."""

    recipient_id: str
    """Who gets the digest."""
    channel: Channel
    """email or sms."""
    options: NotifyOptions = field(default_factory=NotifyOptions)
    """Window, deadlines and queues."""
    pending: list[str] = field(default_factory=list)
    """Rows carried over by continue-as-new."""


@dataclass(frozen=True)
class DigestItems:
    """Signal of NotificationDigestWorkflow: more rows for the digest."""

    notification_ids: list[str]


@dataclass(frozen=True)
class PrepareDigestInput:
    """Input of prepare_digest."""

    recipient_id: str
    """The recipient."""
    channel: Channel
    """email or sms."""
    notification_ids: list[str]
    """The gathered rows."""
    now: datetime
    """The workflow's time."""


@dataclass(frozen=True)
class PrepareDigestResult:
    """The digest row to send, or why not now."""

    notification_id: str | None = None
    """The digest row (queued) to send; None: nothing to send now."""
    items: int = 0
    """Messages it covers."""
    cancelled: int = 0
    """Gathered rows dropped because read meanwhile (or no longer wanted)."""
    skipped: int = 0
    """Rows skipped with a reason (no address / number)."""
    defer_until: datetime | None = None
    """Quiet hours: try again then with the same rows."""


@dataclass(frozen=True)
class NotificationDigestResult:
    """What one digest workflow run sent."""

    digests: int = 0
    """Digest notifications sent."""
    items: int = 0
    """Messages they covered."""
    cancelled: int = 0
    """Rows dropped because read first."""


@dataclass(frozen=True)
class SettleNotificationsInput:
    """Input of settle_notifications: a receipt moved a reader's watermark."""

    user_id: str
    """The reader."""
    conversation_id: str
    """The conversation."""
    up_to_seq: int
    """The watermark."""
    status: ReceiptStatus
    """delivered cancels pending pushes; read cancels everything and reads in-app rows."""
    now: datetime
    """The workflow's time."""


@dataclass(frozen=True)
class SettleNotificationsResult:
    """What a receipt did to the reader's notifications."""

    cancelled: int = 0
    """Pending / queued rows cancelled."""
    in_app_read: int = 0
    """In-app notifications marked read."""
    clear_push_ids: list[str] = field(default_factory=list)
    """Pushes already shown that a data message should now clear."""
