"""The notification settings a send or a receipt carries to the notification workflows."""

# Annotations are evaluated, not postponed: see missive/schemas/__init__.py.

from dataclasses import dataclass, field

from missive.validation import MAX_NOTIFY_SECONDS, bounds

DELAY = bounds(0, MAX_NOTIFY_SECONDS)
"""Field metadata of a delay or a window: 0 s to 30 days."""
DEADLINE = bounds(1, MAX_NOTIFY_SECONDS)
"""Field metadata of a deadline: 1 s to 30 days."""


@dataclass(frozen=True)
class NotifyOptions:
    """Notification settings a message's lifecycle passes to its notifications.

    Taken from Settings when the message is sent (workflows cannot read the
    environment); see the NOTIFY_* settings for what each means.
    """

    grace_seconds: int = field(default=60, metadata=DELAY)
    """Push after this long if still not delivered."""
    email_delay_seconds: int = field(default=900, metadata=DELAY)
    """Email (digest) after this long if still unread."""
    sms_delay_seconds: int = field(default=3_600, metadata=DELAY)
    """SMS (digest, opted-in recipients only) after this long if still unread."""
    digest_window_seconds: int = field(default=300, metadata=DELAY)
    """A digest gathers for this long after its first message."""
    push_deadline_seconds: int = field(default=600, metadata=DEADLINE)
    """Push retries this long, then falls back."""
    email_deadline_seconds: int = field(default=1_800, metadata=DEADLINE)
    """Email retries this long, then falls back."""
    sms_deadline_seconds: int = field(default=1_800, metadata=DEADLINE)
    """SMS retries this long, then gives up."""
    push_batch_size: int = field(default=100, metadata=bounds(1, 1_000))
    """Pushes per send activity."""
    task_queue: str = "missive-notify"
    """Queue of the notification workflows and their database activities."""
    push_task_queue: str = "missive-notify-push"
    """Queue of send_push / clear_pushes."""
    email_task_queue: str = "missive-notify-email"
    """Queue of send_email."""
    sms_task_queue: str = "missive-notify-sms"
    """Queue of send_sms."""
