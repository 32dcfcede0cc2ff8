"""Builds the parts every Missive process shares, closing them through one exit stack."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

from socketio.async_pubsub_manager import AsyncPubSubManager
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.worker import UnsandboxedWorkflowRunner, WorkflowRunner
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

from activities.conversations import ConversationActivities
from activities.messages import MessageActivities, PersistListener
from activities.notify import NotifyActivities
from missive.broadcast import Broadcaster, Emitter
from missive.config import Settings
from missive.crypto import MessageCipher, StagingCipher
from missive.db import create_engine, describe, session_factory
from missive.errors import ProviderUnavailable
from missive.metrics import Metrics
from missive.notify.log import NotificationLog
from missive.notify.preferences import PreferenceService
from missive.services.directory import DirectoryService
from missive.services.edits import EditService
from missive.services.history import HistoryService
from missive.services.membership import MembershipService
from missive.services.messages import MessageService
from missive.services.receipts import ReceiptService
from missive.services.users import UserService
from runtime.converter import InputCheckingRunner
from workflows.clear_pushes import ClearPushesWorkflow
from workflows.delete_message import DeleteMessageWorkflow
from workflows.edit_message import EditMessageWorkflow
from workflows.membership import MembershipWorkflow
from workflows.message_lifecycle import MessageLifecycleWorkflow
from workflows.receipts import ReceiptWorkflow
from workflows.user_profile import UserProfileWorkflow

SOCKETIO_CHANNEL = "missive"
WORKFLOWS = [
    MessageLifecycleWorkflow,
    ReceiptWorkflow,
    ClearPushesWorkflow,
    EditMessageWorkflow,
    DeleteMessageWorkflow,
    MembershipWorkflow,
    UserProfileWorkflow,
]


@dataclass
class Core:
    """The database-backed services of one process."""

    engine: AsyncEngine
    cipher: MessageCipher
    messages: MessageService
    receipts: ReceiptService
    directory: DirectoryService
    notifications: NotificationLog
    preferences: PreferenceService
    """Users' notification preferences, timezones and push devices (the gateway's API)."""
    history: HistoryService
    """Pages of conversations and a user's conversation list (reads, no workflow)."""
    membership: MembershipService
    """Membership changes by their rules."""
    edits: EditService
    """Edits and deletes of messages."""
    users: UserService
    """User provisioning."""
    max_body_bytes: int = 16_384
    """This process's MAX_BODY_BYTES: the most any input may ask its services to store."""
    staging: StagingCipher | None = None
    """Seals staged batch items: keys derived from CODEC_KEYS (None without them)."""


async def open_core(settings: Settings, stack: AsyncExitStack, *, pool_size: int = 10) -> Core:
    """Creates the engine (checking it answers), the cipher and the services.

    Raises:
        ProviderUnavailable: PostgreSQL at DATABASE_URL did not answer.
    """
    url = settings.require_database_url()
    cipher = MessageCipher(settings.master_keyring, current_version=settings.master_key_version)
    engine = create_engine(url, pool_size=pool_size)
    stack.push_async_callback(engine.dispose)
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    except (SQLAlchemyError, OSError) as err:
        reason = str(getattr(err, "orig", None) or err).splitlines()[0][:200]
        raise ProviderUnavailable(f"cannot reach PostgreSQL at {describe(url)}: {reason}") from None
    sessions = session_factory(engine)
    return Core(
        engine=engine,
        cipher=cipher,
        messages=MessageService(sessions, cipher, max_body_bytes=settings.max_body_bytes),
        receipts=ReceiptService(sessions),
        directory=DirectoryService(sessions, cipher),
        notifications=NotificationLog(sessions),
        preferences=PreferenceService(sessions),
        history=HistoryService(engine, cipher),
        membership=MembershipService(sessions, cipher),
        edits=EditService(
            sessions,
            cipher,
            max_body_bytes=settings.max_body_bytes,
            edit_window_seconds=settings.message_edit_window_seconds,
        ),
        users=UserService(sessions),
        max_body_bytes=settings.max_body_bytes,
        staging=staging_cipher(settings),
    )


def staging_cipher(settings: Settings) -> StagingCipher | None:
    """The staging keys the worker and the starter share: derived from CODEC_KEYS."""
    if not settings.codec_keys:
        return None
    return StagingCipher.derive(
        settings.codec_keyring, source="codec", current_version=settings.codec_key_version
    )


def client_manager(settings: Settings, *, write_only: bool) -> AsyncPubSubManager:
    """Socket.IO's cross-process manager: Redis when REDIS_URL is set, else PostgreSQL."""
    from missive.pubsub import PostgresPubSubManager, RedisManager

    if settings.redis_url:
        return RedisManager(settings.redis_url, channel=SOCKETIO_CHANNEL, write_only=write_only)
    return PostgresPubSubManager(
        settings.require_database_url(), channel=SOCKETIO_CHANNEL, write_only=write_only
    )


def workflow_runner(settings: Settings) -> WorkflowRunner:
    """The sandboxed runner when WORKFLOW_SANDBOX is on, else the unsandboxed one.

    Either way a start with no input or several fails as InvalidInput
    (runtime.converter.InputCheckingRunner) instead of retrying its first task.
    """
    if settings.workflow_sandbox:
        return InputCheckingRunner(SandboxedWorkflowRunner())
    return InputCheckingRunner(UnsandboxedWorkflowRunner())


@dataclass
class MessageQueueActivities:
    """The activity objects of the messages task queue."""

    messages: MessageActivities
    """The lifecycle's and the receipts' activities."""
    notify: NotifyActivities
    """settle_notifications (receipts) and the agenda's plan / dispatch / fall_back
    (lifecycles): local activities of workflows on this queue."""
    conversations: ConversationActivities
    """Membership, edits, deletes and users: local activities of their workflows."""


def message_activities(
    core: Core,
    emitter: Emitter,
    *,
    persist_listener: PersistListener | None = None,
    metrics: Metrics | None = None,
) -> MessageQueueActivities:
    """The lifecycle's and receipts' activities over this process's services and emitter."""
    notify = NotifyActivities(core.notifications, emitter=emitter, metrics=metrics)
    return MessageQueueActivities(
        messages=MessageActivities(
            core.messages,
            core.receipts,
            Broadcaster(emitter),
            persist_listener=persist_listener,
            planner=notify.plan,
            metrics=metrics,
        ),
        notify=notify,
        conversations=ConversationActivities(
            core.membership, core.edits, core.users, core.notifications, emitter
        ),
    )


def activity_methods(acts: MessageQueueActivities) -> list[Callable[..., Any]]:
    """The bound activity methods a messages-queue worker registers."""
    return [
        acts.messages.persist_message,
        acts.messages.broadcast_message,
        acts.messages.apply_receipt,
        acts.messages.broadcast_receipts,
        acts.notify.settle_notifications,
        # A lifecycle runs its notification agenda; these are its local activities.
        acts.notify.plan_notifications,
        acts.notify.dispatch_due,
        acts.notify.fall_back,
        acts.conversations.apply_membership,
        acts.conversations.announce_membership,
        acts.conversations.edit_message,
        acts.conversations.announce_edit,
        acts.conversations.delete_message,
        acts.conversations.announce_delete,
        acts.conversations.withdraw_notifications,
        acts.conversations.apply_user_profile,
    ]
