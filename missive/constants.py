"""Task queues, workflow-id builders, search attribute and Socket.IO names, in one place."""

from __future__ import annotations

import hashlib
import uuid

# --- task queues (every one worker.py serves; ``starter health`` checks each) ---
TASK_QUEUE_MESSAGES = "missive-messages"
"""Lifecycle and receipt workflows, and the local activities on their hot path."""

TASK_QUEUE_MAINTENANCE = "missive-maintenance"
"""Key rotations and reports: long, heartbeating, kept off the messages hot path."""

TASK_QUEUE_BATCH = "missive-batch"
"""Batch and retention workflows and their (long, heartbeating) activities."""

TASK_QUEUE_SEARCH = "missive-search"
"""Search indexer, rebuild, check and key workflows (the default of SEARCH_TASK_QUEUE)."""

TASK_QUEUE_NOTIFY = "missive-notify"
"""Notification workflows and their database activities (plan, dispatch, digests)."""

TASK_QUEUE_PUSH = "missive-notify-push"
TASK_QUEUE_EMAIL = "missive-notify-email"
TASK_QUEUE_SMS = "missive-notify-sms"
"""One task queue per provider, each capped at the provider account's rate
(``max_task_queue_activities_per_second``), so a burst never exceeds it."""


# Workflow ids come from business keys so a duplicate start is refused or joins.
MESSAGE_WORKFLOW_PREFIX = "message"
RECEIPT_WORKFLOW_PREFIX = "receipt"

# Namespace for deterministic message ids: the same (sender, client_message_id)
# always names the same message, so a resend can never mint a second one.
MESSAGE_ID_NAMESPACE = uuid.UUID("6f1c1d1e-4f7a-4c55-9a53-2b5b7d0f1a10")

# Socket.IO rooms and events.
EVENT_MESSAGE_NEW = "message:new"
EVENT_MESSAGE_RECEIPT = "message:receipt"
EVENT_MESSAGE_SEND = "message:send"
EVENT_MESSAGE_DELIVERED = "message:delivered"
EVENT_MESSAGE_READ = "message:read"


def message_id_for(sender_id: str, client_message_id: str) -> str:
    """The server id of the message a sender names with its client_message_id."""
    return str(uuid.uuid5(MESSAGE_ID_NAMESPACE, f"{sender_id}:{client_message_id}"))


def message_workflow_id(sender_id: str, client_message_id: str) -> str:
    """The lifecycle workflow id: one per (sender, client_message_id)."""
    return f"{MESSAGE_WORKFLOW_PREFIX}-{message_id_for(sender_id, client_message_id)}"


def receipt_workflow_id(user_id: str, conversation_id: str, status: str, up_to: str) -> str:
    """The receipt workflow id: one per (reader, conversation, status, watermark)."""
    return f"{RECEIPT_WORKFLOW_PREFIX}-{user_id}-{conversation_id}-{status}-{up_to}"


CLEAR_PUSHES_WORKFLOW_PREFIX = "clear-pushes"


def clear_pushes_workflow_id(notification_ids: list[str]) -> str:
    """One clear per set of shown pushes (a retried batch joins the same workflow)."""
    digest = hashlib.sha256(",".join(sorted(notification_ids)).encode()).hexdigest()[:32]
    return f"{CLEAR_PUSHES_WORKFLOW_PREFIX}-{digest}"


def conversation_room(conversation_id: str) -> str:
    """The Socket.IO room every participant of a conversation is in."""
    return f"conversation:{conversation_id}"


def user_room(user_id: str) -> str:
    """The Socket.IO room of one user's connections (all devices)."""
    return f"user:{user_id}"


# --- key rotation ---
MASTER_KEY_ROTATION_PREFIX = "keys-master-rotation"
DATA_KEY_ROTATION_PREFIX = "keys-data-rotation"
KEY_REPORT_PREFIX = "keys-report"


def master_key_rotation_workflow_id(master_key_version: int | None) -> str:
    """One master-key rotation per target version: a second request joins it."""
    return f"{MASTER_KEY_ROTATION_PREFIX}-{master_key_version or 'current'}"


def data_key_rotation_workflow_id(conversation_id: str) -> str:
    """One data-key rotation per conversation at a time: a second request joins it."""
    return f"{DATA_KEY_ROTATION_PREFIX}-{conversation_id}"


# --- search ---
SEARCH_INDEXER_WORKFLOW_PREFIX = "search-indexer"
SEARCH_REBUILD_WORKFLOW_PREFIX = "search-rebuild"
SEARCH_KEY_WORKFLOW_PREFIX = "search-key"
SEARCH_CHECK_WORKFLOW_PREFIX = "search-check"
EVENT_MESSAGE_SEARCH = "message:search"


def search_indexer_workflow_id(alias: str) -> str:
    """The one indexer workflow of an index alias."""
    return f"{SEARCH_INDEXER_WORKFLOW_PREFIX}-{alias}"


def search_rebuild_workflow_id(alias: str) -> str:
    """The rebuild of an index alias: one at a time."""
    return f"{SEARCH_REBUILD_WORKFLOW_PREFIX}-{alias}"


# --- batch and retention jobs ---
BATCH_WORKFLOW_PREFIX = "batch"
RETENTION_WORKFLOW_PREFIX = "retention"

RETENTION_SCHEDULE_ID = "missive-retention"
"""The Temporal Schedule that runs the retention cleanup."""

SEARCH_ATTRIBUTE_PROGRESS = "MissiveBatchProgress"
"""Int: percent of a batch's items finished (for the Web UI's list and filters)."""
SEARCH_ATTRIBUTE_STATUS = "MissiveBatchStatus"
"""Keyword: running, paused, completed, failed or cancelled."""

EVENT_MESSAGES_BATCH = "messages:batch"
"""Compact event: many messages of one conversation were stored by a batch."""


def batch_workflow_id(batch_id: str) -> str:
    """The batch workflow id: one per batch."""
    return f"{BATCH_WORKFLOW_PREFIX}-{batch_id}"


def batch_client_message_id(batch_id: str, item_no: int) -> str:
    """The client_message_id of a batch item that names none: stable across reruns."""
    return f"batch:{batch_id}:{item_no}"


# --- notifications ---
NOTIFY_MESSAGE_WORKFLOW_PREFIX = "notify-message"
NOTIFY_DIGEST_WORKFLOW_PREFIX = "notify-digest"
NOTIFY_DIGEST_WORKFLOW = "NotificationDigestWorkflow"
"""The digest workflow's type: workflows/notify_digest.py registers it under this name and
queue_digests starts it by it (activities do not import workflows)."""
NOTIFY_DIGEST_SIGNAL = "add_items"
"""The digest workflow's signal carrying more rows (DigestItems)."""
EVENT_NOTIFICATION_NEW = "notification:new"
EVENT_NOTIFICATION_UNREAD = "notification:unread"


def notify_message_workflow_id(message_id: str) -> str:
    """The one notification workflow of a message."""
    return f"{NOTIFY_MESSAGE_WORKFLOW_PREFIX}-{message_id}"


def notify_digest_workflow_id(channel: str, user_id: str) -> str:
    """The digest gathering one recipient's notifications on one channel."""
    return f"{NOTIFY_DIGEST_WORKFLOW_PREFIX}-{channel}-{user_id}"


# --- notification settings and the bell (gateway events a client emits) ---
EVENT_NOTIFICATION_PREFERENCES = "notification:preferences"
EVENT_NOTIFICATION_LIST = "notification:list"
EVENT_DEVICE_REGISTER = "device:register"
EVENT_DEVICE_UNREGISTER = "device:unregister"

EVENT_TOKEN_REFRESH = "token:refresh"
"""Client -> gateway: ``{"token"}``, a newer token of the same user for an open socket."""

EVENT_SESSION_CLOSED = "session:closed"
"""Gateway -> one socket, just before it is disconnected: ``{"reason"}`` (``token expired``,
``token revoked``)."""


# --- the conversation as a client sees it: history, edits, deletes, membership ---
EVENT_MESSAGE_SYNC = "message:sync"
"""Client -> gateway: a page of a conversation's messages (catch-up and history)."""
EVENT_MESSAGE_EDIT = "message:edit"
EVENT_MESSAGE_EDITED = "message:edited"
EVENT_MESSAGE_DELETE = "message:delete"
EVENT_MESSAGE_DELETED = "message:deleted"
EVENT_CONVERSATION_LIST = "conversation:list"
EVENT_CONVERSATION_CREATE = "conversation:create"
EVENT_CONVERSATION_ADD_MEMBERS = "conversation:add_members"
EVENT_CONVERSATION_REMOVE_MEMBER = "conversation:remove_member"
EVENT_CONVERSATION_LEAVE = "conversation:leave"
EVENT_CONVERSATION_SET_ROLE = "conversation:set_role"
EVENT_CONVERSATION_MEMBER_ADDED = "conversation:member_added"
EVENT_CONVERSATION_MEMBER_REMOVED = "conversation:member_removed"
EVENT_CONVERSATION_ROLE_CHANGED = "conversation:role_changed"

EDIT_WORKFLOW_PREFIX = "message-edit"
DELETE_WORKFLOW_PREFIX = "message-delete"
MEMBERSHIP_WORKFLOW_PREFIX = "membership"
USER_WORKFLOW_PREFIX = "user"

CONVERSATION_ID_NAMESPACE = uuid.UUID("0b9f5a3e-1d2c-4e8b-a6f7-3c4d5e6f7a81")
"""Namespace of conversation ids a creator names (``client_conversation_id``)."""
USER_ID_NAMESPACE = uuid.UUID("9e2d7c4b-5a6f-4b3e-8d1c-2f3a4b5c6d7e")
"""Namespace of user ids a provisioning service names (``client_user_id``)."""


def _digest(*parts: str) -> str:
    # surrogatepass: a body with a lone surrogate gets an id, and then its clear refusal.
    return hashlib.sha256("\x1f".join(parts).encode("utf-8", "surrogatepass")).hexdigest()[:24]


def edit_workflow_id(message_id: str, body: str) -> str:
    """One edit of a message to one text: a resend of the same edit joins it."""
    return f"{EDIT_WORKFLOW_PREFIX}-{message_id}-{_digest(body)}"


def delete_workflow_id(message_id: str) -> str:
    """A message is deleted once: a second delete joins (or re-answers) the first."""
    return f"{DELETE_WORKFLOW_PREFIX}-{message_id}"


def membership_workflow_id(action: str, actor: str, conversation: str, *subjects: str) -> str:
    """One membership change: the same request resent joins the running one."""
    return f"{MEMBERSHIP_WORKFLOW_PREFIX}-{action}-{_digest(actor, conversation, *subjects)}"


def user_workflow_id(key: str) -> str:
    """One user provisioning request (by user id, or by the caller's client id)."""
    return f"{USER_WORKFLOW_PREFIX}-{_digest(key)}"


def conversation_id_for(creator: str, client_conversation_id: str) -> str:
    """The conversation a creator names: the same pair always names the same one."""
    return str(uuid.uuid5(CONVERSATION_ID_NAMESPACE, f"{creator}:{client_conversation_id}"))


def user_id_for(client_user_id: str) -> str:
    """The user a provisioning service names by its own id."""
    return str(uuid.uuid5(USER_ID_NAMESPACE, client_user_id))
