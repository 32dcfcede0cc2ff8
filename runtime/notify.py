"""Wiring of notifications: the channel senders and one worker per notification task queue."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from typing import Any

from temporalio.client import Client
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.worker import Worker

from activities.notify import ChannelActivities, NotifyActivities
from missive.broadcast import Emitter
from missive.config import Settings
from missive.constants import (
    notify_message_workflow_id,
)
from missive.db import session_factory
from missive.metrics import Metrics
from missive.notify.dispatch import ChannelSenders
from missive.notify.log import NotificationLog
from missive.notify.mail import EmailSender
from missive.notify.options import notify_options
from missive.notify.push import PushSender
from missive.notify.quota import ProviderQuota
from missive.notify.sms import SmsSender
from missive.schemas import BatchKind, Channel, NotifyMessageInput, NotifyOptions
from missive.stored import StoredMessage
from runtime.wiring import Core, workflow_runner

log = logging.getLogger("missive.notify")

MAX_CONCURRENT_NOTIFY_ACTIVITIES = 16
"""Planning / dispatch / digest activities one worker runs at once: each holds a
database connection briefly, so this stays within the pool."""


START_CONCURRENCY = 16
"""Notification workflows an announcement chunk starts at once."""


def open_notify(
    settings: Settings, core: Core, stack: AsyncExitStack, *, metrics: Metrics | None = None
) -> ChannelSenders:
    """The push, email and SMS senders the settings describe (dev sinks without credentials),
    each held to its NOTIFY_*_PER_SECOND quota in rows (ProviderQuota, shared by workers).

    Contacts nothing: a provider that is down fails its sends (retried, then the
    channel falls back), never a process start.

    Raises:
        InvalidInput: a provider setting is malformed (credentials file, EMAIL_FROM,
            TWILIO_FROM), named in the message.
    """
    push = PushSender.from_settings(settings)
    email = EmailSender.from_settings(settings)
    sms = SmsSender.from_settings(settings)
    stack.push_async_callback(sms.close)
    return ChannelSenders(
        core.notifications,
        core.messages,
        push=push,
        email=email,
        sms=sms,
        devices=core.preferences,
        quota=ProviderQuota.per_second(
            session_factory(core.engine),
            {
                Channel.PUSH: settings.notify_push_per_second,
                Channel.EMAIL: settings.notify_email_per_second,
                Channel.SMS: settings.notify_sms_per_second,
            },
        ),
        metrics=metrics,
    )


def notify_workers(
    settings: Settings,
    client: Client,
    core: Core,
    emitter: Emitter | None,
    senders: ChannelSenders,
    *,
    metrics: Metrics | None = None,
    queues: NotifyOptions | None = None,
) -> list[Worker]:
    """The notification workers: the workflows' queue and one rate-capped queue per provider.

    ``queues`` names the four task queues (default: those notify_options(settings)
    puts into every send, so senders and workers cannot disagree; tests pass their own).

    The provider's quota is counted in rows by the senders' ProviderQuota, which every
    worker process shares. Each queue's ``max_task_queue_activities_per_second``, which
    the Temporal server enforces across every worker, is the quota too: every activity
    sends at least one row, so it never binds first, and a backlog waits in the
    server's queue rather than in worker slots.
    """
    from workflows.notify_digest import NotificationDigestWorkflow
    from workflows.notify_message import NotifyMessageWorkflow

    queues = queues or notify_options(settings)
    shutdown = timedelta(seconds=settings.graceful_shutdown_seconds)
    notify = NotifyActivities(core.notifications, client=client, emitter=emitter, metrics=metrics)
    channels = ChannelActivities(senders, metrics=metrics)

    def provider_worker(
        task_queue: str, activities: Sequence[Callable[..., Any]], per_second: float
    ) -> Worker:
        return Worker(
            client,
            task_queue=task_queue,
            activities=activities,
            max_task_queue_activities_per_second=per_second,
            graceful_shutdown_timeout=shutdown,
        )

    return [
        Worker(
            client,
            task_queue=queues.task_queue,
            workflows=[NotifyMessageWorkflow, NotificationDigestWorkflow],
            activities=[
                notify.plan_notifications,
                notify.dispatch_due,
                notify.fall_back,
                notify.prepare_digest,
                notify.queue_digests,
            ],
            workflow_runner=workflow_runner(settings),
            max_concurrent_activities=MAX_CONCURRENT_NOTIFY_ACTIVITIES,
            graceful_shutdown_timeout=shutdown,
        ),
        provider_worker(
            queues.push_task_queue,
            [channels.send_push, channels.clear_pushes],
            settings.notify_push_per_second,
        ),
        provider_worker(
            queues.email_task_queue, [channels.send_email], settings.notify_email_per_second
        ),
        provider_worker(queues.sms_task_queue, [channels.send_sms], settings.notify_sms_per_second),
    ]


async def watch_overdue(
    settings: Settings,
    log_: NotificationLog,
    metrics: Metrics,
    *,
    clock: Callable[[], datetime] | None = None,
) -> None:
    """Sets the overdue-notification gauges every NOTIFY_OVERDUE_CHECK_SECONDS, forever.

    One indexed count per look (see NotificationLog.overdue). A failed look (the
    database restarting) keeps the last values and is logged; the next one tries again.
    Overdue rows are also logged as a warning, at most once a minute while any remain.
    """
    now = clock or (lambda: datetime.now(UTC))
    margin = timedelta(seconds=settings.notify_overdue_seconds)
    warned_at: datetime | None = None
    while True:
        at = now()
        try:
            summary = await log_.overdue(before=at - margin, examples=0)
        except Exception as err:
            log.warning("counting overdue notifications failed: %s: %s", type(err).__name__, err)
        else:
            oldest = (at - summary.oldest_due).total_seconds() if summary.oldest_due else 0.0
            metrics.observe_overdue(overdue=summary.count, oldest_seconds=oldest)
            if summary.count and (warned_at is None or at - warned_at >= timedelta(minutes=1)):
                warned_at = at
                log.warning(
                    "%d notification row(s) open more than %d s past due (oldest: %d s);"
                    " see `python -m starter stuck`",
                    summary.count,
                    settings.notify_overdue_seconds,
                    oldest,
                )
        await asyncio.sleep(settings.notify_overdue_check_seconds)


class AnnouncementNotifier:
    """Notifies the recipients of a batch announcement (the batch's StoredMessagesSink).

    Each stored message gets its notification agenda as a NotifyMessageWorkflow
    of its own (id ``notify-message-<message id>``: a repeated call, after a
    chunk's retry, is refused by the id and changes nothing). Imports are
    history and notify nobody.
    """

    def __init__(
        self, client: Client, options: NotifyOptions, *, concurrency: int = START_CONCURRENCY
    ) -> None:
        """Keeps the client and the options the agendas run with."""
        self._client = client
        self._options = options
        self._limit = asyncio.Semaphore(concurrency)

    async def messages_stored(self, messages: Sequence[StoredMessage], *, kind: str) -> None:
        """Starts one agenda per announced message (bounded concurrency)."""
        if kind != BatchKind.ANNOUNCEMENT:
            return
        await asyncio.gather(*(self._start(m) for m in messages))

    async def _start(self, message: StoredMessage) -> None:
        from workflows.notify_message import NotifyMessageWorkflow

        # Already started by an earlier attempt of this chunk: nothing to add.
        async with self._limit:
            with contextlib.suppress(WorkflowAlreadyStartedError):
                await self._client.start_workflow(
                    NotifyMessageWorkflow.run,
                    NotifyMessageInput(
                        message_id=message.message_id,
                        conversation_id=message.conversation_id,
                        sender_id=message.sender_id,
                        seq=message.seq,
                        created_at=message.created_at,
                        options=self._options,
                    ),
                    id=notify_message_workflow_id(message.message_id),
                    task_queue=self._options.task_queue,
                    id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                )
