"""The ``message:search`` event's JSON: the request as a checked SearchQuery, the result back."""

from __future__ import annotations

from typing import Any

from missive.errors import InvalidInput
from missive.schemas import SearchQuery, SearchResult
from missive.search import parse_time, search_params
from missive.validation import require_uuid


def _parse_int(value: object, name: str, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"{name} must be an integer, got {type(value).__name__}")
    return value


def parse_search_request(payload: object) -> SearchQuery:
    """A ``message:search`` payload (JSON values) as a checked SearchQuery.

    Accepts ``{"query", "conversation_id"?, "sender_id"?, "since"?, "until"?,
    "page"?, "per_page"?}``; anything else is refused by name.

    Raises:
        InvalidInput: naming the bad or unknown field.
    """
    if not isinstance(payload, dict):
        raise InvalidInput(f"the payload must be an object, got {type(payload).__name__}")
    known = {"query", "conversation_id", "sender_id", "since", "until", "page", "per_page"}
    unknown = sorted(str(k) for k in payload if k not in known)
    if unknown:
        raise InvalidInput(f"unknown field {unknown[0][:40]!r}")
    text_value = payload.get("query")
    if not isinstance(text_value, str):
        raise InvalidInput("query must be a string")
    ids = {}
    for name in ("conversation_id", "sender_id"):
        value = payload.get(name)
        ids[name] = require_uuid(value, name) if value is not None else None
    query = SearchQuery(
        text=text_value,
        conversation_id=ids["conversation_id"],
        sender_id=ids["sender_id"],
        since=parse_time(payload.get("since"), "since"),
        until=parse_time(payload.get("until"), "until"),
        page=_parse_int(payload.get("page"), "page", 1),
        per_page=_parse_int(payload.get("per_page"), "per_page", 20),
    )
    search_params(query)  # every check, before any I/O
    return query


def result_json(result: SearchResult) -> dict[str, Any]:
    """A SearchResult as JSON values (times in ISO 8601)."""
    return {
        "found": result.found,
        "page": result.page,
        "per_page": result.per_page,
        "hits": [
            {
                "message_id": h.message_id,
                "conversation_id": h.conversation_id,
                "sender_id": h.sender_id,
                "seq": h.seq,
                "created_at": h.created_at.isoformat(),
                "edited_at": h.edited_at.isoformat() if h.edited_at else None,
                "text": h.text,
                "snippet": h.snippet,
            }
            for h in result.hits
        ],
    }
