"""Users' searches: a scoped key over their conversations, checked queries, hits."""

from __future__ import annotations

import time
from collections.abc import Iterable
from datetime import datetime
from typing import Any
from urllib.parse import quote

from sqlalchemy import text

from missive.errors import InvalidInput, NotAMember, ProviderUnavailable, SearchRejected
from missive.schemas import SearchHit, SearchKeyGrant, SearchQuery, SearchResult
from missive.search._client import TypesenseClient
from missive.search._documents import from_ms, ms
from missive.search._index import SearchIndex
from missive.search._keys import scoped_search_key
from missive.validation import require_uuid

MAX_QUERY_CHARS = 512
"""Longest query text accepted."""
MAX_PER_PAGE = 100
MAX_PAGE = 1_000


class UserSearch(SearchIndex):
    """Answers a user's search through a key that covers only their conversations."""

    async def issue_key(self, user_id: str, conversation_id: str | None = None) -> SearchKeyGrant:
        """A short-lived scoped key that can only search the user's conversations.

        The conversations come from ``participants`` now, so a removed member's
        next key no longer covers the conversation.

        Raises:
            InvalidInput: a malformed id.
            NotAMember: ``conversation_id`` is not one of the user's conversations
                (an unknown conversation answers the same, telling nothing).
        """
        uid = require_uuid(user_id, "user_id")
        cid = require_uuid(conversation_id, "conversation_id") if conversation_id else None
        if not self._index_ready:
            # Once per process: the parent key must exist before a scoped key works,
            # whether or not the indexer has started yet.
            await self.ensure_index()
            self._index_ready = True
        async with self._sessions() as session:
            ids = (
                (
                    await session.execute(
                        text(
                            "SELECT p.conversation_id::text FROM participants p"
                            " JOIN conversations c ON c.id = p.conversation_id"
                            " WHERE p.user_id = :uid AND c.encryption_mode = 'standard'"
                            " ORDER BY 1"
                        ),
                        {"uid": uid},
                    )
                )
                .scalars()
                .all()
            )
        if cid is not None:
            if cid not in ids:
                raise NotAMember(f"user {uid} does not take part in conversation {cid}")
            ids = [cid]
        expires_at = int(time.time()) + self._settings.search_key_ttl_seconds
        if not ids:
            return SearchKeyGrant(
                key="", collection=self.alias, expires_at=expires_at, conversation_count=0
            )
        scope = ",".join(f"`{c}`" for c in ids)
        key = scoped_search_key(
            self._parent_key,
            {"filter_by": f"conversation_id:=[{scope}]", "expires_at": expires_at},
        )
        return SearchKeyGrant(
            key=key, collection=self.alias, expires_at=expires_at, conversation_count=len(ids)
        )

    async def search(self, user_id: str, query: SearchQuery) -> SearchResult:
        """Searches the messages of the user's conversations.

        Raises:
            InvalidInput: an empty or too long query, a bad filter value or page.
            NotAMember: a conversation filter the user does not take part in.
            ProviderUnavailable: Typesense is unavailable.
        """
        params = search_params(query)
        grant = await self.issue_key(user_id, query.conversation_id)
        return await query_with_key(self.typesense, grant, params, query)


def _aware(value: datetime | None, name: str) -> int | None:
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise InvalidInput(f"{name} must be a datetime")
    if value.tzinfo is None:
        raise InvalidInput(f"{name} must include a timezone")
    return ms(value)


def search_params(query: SearchQuery) -> dict[str, Any]:
    """Checks a query and builds Typesense's search parameters from its values only.

    Every filter value is validated (UUIDs, times, ints) and written by this
    function: nothing the caller sends becomes filter syntax. The scoped key's
    embedded filter is ANDed with this one by Typesense, so it can only narrow.

    Raises:
        InvalidInput: naming the bad field.
    """
    if not isinstance(query.text, str) or not query.text.strip():
        raise InvalidInput("query is empty")
    if len(query.text) > MAX_QUERY_CHARS:
        raise InvalidInput(
            f"query is {len(query.text)} characters, over the limit of {MAX_QUERY_CHARS}"
        )
    for name, value, high in (
        ("page", query.page, MAX_PAGE),
        ("per_page", query.per_page, MAX_PER_PAGE),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
            raise InvalidInput(f"{name} must be an integer from 1 to {high}, got {value!r}")
    filters: list[str] = []
    if query.conversation_id is not None:
        filters.append(
            f"conversation_id:=`{require_uuid(query.conversation_id, 'conversation_id')}`"
        )
    if query.sender_id is not None:
        filters.append(f"sender_id:=`{require_uuid(query.sender_id, 'sender_id')}`")
    since, until = _aware(query.since, "since"), _aware(query.until, "until")
    if since is not None and until is not None and since > until:
        raise InvalidInput("since is after until")
    if since is not None:
        filters.append(f"created_at:>={since}")
    if until is not None:
        filters.append(f"created_at:<={until}")
    params: dict[str, Any] = {
        "q": query.text.strip(),
        "query_by": "text",
        "num_typos": 2,
        "typo_tokens_threshold": 1,
        "sort_by": "_text_match:desc,created_at:desc",
        "highlight_full_fields": "text",
        "page": query.page,
        "per_page": query.per_page,
    }
    if filters:
        params["filter_by"] = " && ".join(filters)
    return params


async def query_with_key(
    typesense: TypesenseClient, grant: SearchKeyGrant, params: dict[str, Any], query: SearchQuery
) -> SearchResult:
    """Runs a search with a scoped key; a grant for no conversation finds nothing.

    Raises:
        ProviderUnavailable: Typesense is unavailable.
        InvalidInput: Typesense refused the query.
    """
    if not grant.conversation_count:
        return SearchResult(found=0, page=query.page, per_page=query.per_page)
    try:
        _, answer = await typesense.request(
            "GET",
            f"/collections/{quote(grant.collection)}/documents/search",
            params=params,
            api_key=grant.key,
            ok=(401, 403),
        )
    except SearchRejected as err:
        raise InvalidInput(f"the search was refused: {err}") from None
    if isinstance(answer, dict) and "hits" not in answer:
        # 401/403: the key expired between issue and use, or the index is being set up.
        raise ProviderUnavailable(f"Typesense refused the search key: {answer.get('message')}")
    return SearchResult(
        found=int(answer.get("found", 0)),
        page=query.page,
        per_page=query.per_page,
        hits=[_hit(hit) for hit in answer.get("hits", [])],
    )


def _hit(hit: dict[str, Any]) -> SearchHit:
    doc = hit["document"]
    snippets: Iterable[dict[str, Any]] = hit.get("highlights") or []
    snippet = next((h.get("snippet", "") for h in snippets if h.get("field") == "text"), "")
    return SearchHit(
        message_id=doc["id"],
        conversation_id=doc["conversation_id"],
        sender_id=doc["sender_id"],
        seq=int(doc["seq"]),
        created_at=from_ms(int(doc["created_at"])),
        text=doc["text"],
        snippet=snippet or doc["text"][:200],
        edited_at=from_ms(int(doc["edited_at"])) if doc.get("edited_at") else None,
    )


def parse_time(value: object, name: str) -> datetime | None:
    """An ISO 8601 time with a timezone, or None."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInput(f"{name} must be an ISO 8601 string")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInput(f"{name} is not an ISO 8601 time: {value[:40]!r}") from None
    if parsed.tzinfo is None:
        raise InvalidInput(f"{name} must include a timezone (e.g. 2026-01-31T12:00:00+00:00)")
    return parsed
