"""A message collection's schema and documents, with times in epoch milliseconds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any


def collection_schema(name: str) -> dict[str, Any]:
    """The Typesense schema of a message collection."""
    return {
        "name": name,
        "fields": [
            {"name": "conversation_id", "type": "string", "facet": True},
            {"name": "sender_id", "type": "string", "facet": True},
            {"name": "seq", "type": "int64"},
            {"name": "created_at", "type": "int64"},
            {"name": "edited_at", "type": "int64", "optional": True},
            {"name": "text", "type": "string"},
        ],
        "default_sorting_field": "created_at",
    }


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def ms(value: datetime) -> int:
    """Epoch milliseconds, floored in integers (as the rebuild's SQL does): no float
    rounding, so the indexer and a rebuild write the same value."""
    return (value - _EPOCH) // timedelta(milliseconds=1)


def from_ms(value: int) -> datetime:
    """The UTC time of epoch milliseconds."""
    return datetime.fromtimestamp(value / 1000, UTC)


def search_document(
    mid: str,
    cid: str,
    sender: str,
    seq: int,
    created_ms: int,
    edited_ms: int | None,
    text_: str,
) -> dict[str, Any]:
    """A message's Typesense document (the collection's fields; edited_at only if edited)."""
    document: dict[str, Any] = {
        "id": mid,
        "conversation_id": cid,
        "sender_id": sender,
        "seq": seq,
        "created_at": created_ms,
        "text": text_,
    }
    if edited_ms is not None:
        document["edited_at"] = edited_ms
    return document
