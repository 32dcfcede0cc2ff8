"""A staged item's JSON as a checked item to store."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg

from missive.constants import batch_client_message_id, message_id_for
from missive.errors import InvalidInput
from missive.validation import require_body, require_client_message_id, require_uuid

_ITEM_FIELDS = {
    "conversation_id",
    "recipient_id",
    "sender_id",
    "body",
    "client_message_id",
    "created_at",
}


@dataclass(frozen=True)
class Item:
    """One staged item, checked: the message it stores."""

    item_no: int
    mid: str
    cid: str
    """The conversation; empty while a recipient's direct conversation is resolved."""
    sender: str
    cmid: str
    body: bytes
    recipient: str | None = None
    """The user whose direct conversation with the sender the item goes to."""
    created_at: datetime | None = None
    """The item's own creation time (an import of history); None: now."""


def parse_created_at(value: object, *, now: datetime) -> datetime:
    """An item's own ``created_at``: ISO-8601 with a UTC offset, not in the future.

    Raises:
        InvalidInput: naming created_at and what is wrong with it.
    """
    if not isinstance(value, str):
        raise InvalidInput(f"created_at must be an ISO-8601 string, got {type(value).__name__}")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInput(f"created_at {value[:64]!r} is not an ISO-8601 date and time") from None
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise InvalidInput(f"created_at {value[:64]!r} has no UTC offset (add Z or +hh:mm)")
    parsed = parsed.astimezone(UTC)
    if parsed > now:
        raise InvalidInput(f"created_at {value[:64]!r} is in the future")
    return parsed


def parse_item(
    batch_id: str, row: asyncpg.Record, raw: object, max_body_bytes: int, *, now: datetime
) -> Item:
    """The item of a staged row whose payload is ``raw``.

    Raises:
        InvalidInput: naming the missing, unknown or bad field.
    """
    payload = json.loads(raw) if isinstance(raw, str) else raw
    if not isinstance(payload, dict):
        raise InvalidInput("item is not a JSON object")
    unknown = set(payload) - _ITEM_FIELDS
    if unknown:
        raise InvalidInput(f"unknown field(s): {', '.join(sorted(unknown))}")
    if "conversation_id" in payload and "recipient_id" in payload:
        raise InvalidInput("give conversation_id or recipient_id, not both")
    if "conversation_id" not in payload and "recipient_id" not in payload:
        raise InvalidInput("conversation_id (or recipient_id) is missing")
    for name in ("sender_id", "body"):
        if name not in payload:
            raise InvalidInput(f"{name} is missing")
    sender = require_uuid(payload["sender_id"], "sender_id")
    cid, recipient = "", None
    if "recipient_id" in payload:
        recipient = require_uuid(payload["recipient_id"], "recipient_id")
        if recipient == sender:
            raise InvalidInput(f"recipient_id {recipient} is the sender")
    else:
        cid = require_uuid(payload["conversation_id"], "conversation_id")
    body = require_body(payload["body"], max_bytes=max_body_bytes)
    created_at = payload.get("created_at")
    cmid = require_client_message_id(
        payload.get("client_message_id") or batch_client_message_id(batch_id, row["item_no"])
    )
    return Item(
        item_no=row["item_no"],
        mid=message_id_for(sender, cmid),
        cid=cid,
        sender=sender,
        cmid=cmid,
        body=body,
        recipient=recipient,
        created_at=None if created_at is None else parse_created_at(created_at, now=now),
    )
