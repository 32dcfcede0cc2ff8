"""NotifyOptions from the NOTIFY_* settings, put into each lifecycle input at send time."""

from __future__ import annotations

from missive.config import Settings
from missive.constants import TASK_QUEUE_EMAIL, TASK_QUEUE_NOTIFY, TASK_QUEUE_PUSH, TASK_QUEUE_SMS
from missive.schemas import NotifyOptions


def send_notify_options(settings: Settings) -> NotifyOptions | None:
    """What a send or a receipt carries: the options, or None when NOTIFY_ENABLED is off."""
    return notify_options(settings) if settings.notify_enabled else None


def notify_options(settings: Settings) -> NotifyOptions:
    """The delays, deadlines, batch size and queues a message's notifications use.

    Workflows cannot read the environment, so the sender (gateway, starter)
    takes these from its settings and the lifecycle passes them on.
    """
    return NotifyOptions(
        grace_seconds=settings.notify_grace_seconds,
        email_delay_seconds=settings.notify_email_delay_seconds,
        sms_delay_seconds=settings.notify_sms_delay_seconds,
        digest_window_seconds=settings.notify_digest_window_seconds,
        push_deadline_seconds=settings.notify_push_deadline_seconds,
        email_deadline_seconds=settings.notify_email_deadline_seconds,
        sms_deadline_seconds=settings.notify_sms_deadline_seconds,
        push_batch_size=settings.notify_push_batch_size,
        task_queue=TASK_QUEUE_NOTIFY,
        push_task_queue=TASK_QUEUE_PUSH,
        email_task_queue=TASK_QUEUE_EMAIL,
        sms_task_queue=TASK_QUEUE_SMS,
    )
