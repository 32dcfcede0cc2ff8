"""The notification settings a send or a receipt carries to the notification workflows."""

# Annotations are evaluated, not postponed: see missive/schemas/__init__.py.

from dataclasses import dataclass


@dataclass(frozen=True)
class NotifyOptions:
    """Notification settings a message's lifecycle passes to its notifications.

    Taken from Settings when the message is sent (workflows cannot read the
    environment); see the NOTIFY_* settings for what each means.
    """

    grace_seconds: int = 60
    """Push after this long if still not delivered."""
    email_delay_seconds: int = 900
    """Email (digest) after this long if still unread."""
    sms_delay_seconds: int = 3_600
    """SMS (digest, opted-in recipients only) after this long if still unread."""
    digest_window_seconds: int = 300
    """A digest gathers for this long after its first message."""
    push_deadline_seconds: int = 600
    """Push retries this long, then falls back."""
    email_deadline_seconds: int = 1_800
    """Email retries this long, then falls back."""
    sms_deadline_seconds: int = 1_800
    """SMS retries this long, then gives up."""
    push_batch_size: int = 100
    """Pushes per send activity."""
    task_queue: str = "missive-notify"
    """Queue of the notification workflows and their database activities."""
    push_task_queue: str = "missive-notify-push"
    """Queue of send_push / clear_pushes."""
    email_task_queue: str = "missive-notify-email"
    """Queue of send_email."""
    sms_task_queue: str = "missive-notify-sms"
    """Queue of send_sms."""
