"""Task queues, workflow-id builders and Socket.IO names, in one place."""

from __future__ import annotations

import uuid

TASK_QUEUE_MESSAGES = "missive-messages"
"""Lifecycle and receipt workflows, and the local activities on their hot path."""

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


def conversation_room(conversation_id: str) -> str:
    """The Socket.IO room every participant of a conversation is in."""
    return f"conversation:{conversation_id}"


def user_room(user_id: str) -> str:
    """The Socket.IO room of one user's connections (all devices)."""
    return f"user:{user_id}"
