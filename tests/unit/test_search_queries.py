"""A user's search: checked values become Typesense parameters; answers become hits."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, cast

import pytest

from missive.errors import InvalidInput, ProviderUnavailable, SearchRejected
from missive.schemas import SearchHit, SearchKeyGrant, SearchQuery, SearchResult
from missive.search import (
    MAX_PAGE,
    MAX_PER_PAGE,
    MAX_QUERY_CHARS,
    TypesenseClient,
    parse_time,
    query_with_key,
    search_params,
)

pytestmark = pytest.mark.unit

CID = "c0000000-0000-4000-8000-000000000001"
SENDER = "a0000000-0000-4000-8000-000000000001"
JAN_10 = datetime(2026, 1, 10, 12, 0, tzinfo=UTC)
JAN_10_MS = 1_768_046_400_000
QUERY = SearchQuery(text="roadmap")
GRANT = SearchKeyGrant(
    key="scoped", collection="missive messages", expires_at=0, conversation_count=2
)


def exactly(message: str) -> str:
    """A ``match`` pattern for exactly this message."""
    return f"^{re.escape(message)}$"


# --- search_params ---


def test_a_plain_query_has_no_filter() -> None:
    assert search_params(SearchQuery(text="  roadmap draft ")) == {
        "q": "roadmap draft",
        "query_by": "text",
        "num_typos": 2,
        "typo_tokens_threshold": 1,
        "sort_by": "_text_match:desc,created_at:desc",
        "highlight_full_fields": "text",
        "page": 1,
        "per_page": 20,
    }


def test_every_filter_is_written_from_checked_values() -> None:
    params = search_params(
        SearchQuery(
            text="roadmap",
            conversation_id=CID.upper(),
            sender_id=SENDER,
            since=JAN_10,
            until=JAN_10 + timedelta(days=1),
            page=3,
            per_page=50,
        )
    )
    assert params["filter_by"] == (
        f"conversation_id:=`{CID}` && sender_id:=`{SENDER}`"
        f" && created_at:>={JAN_10_MS} && created_at:<={JAN_10_MS + 86_400_000}"
    )
    assert (params["page"], params["per_page"]) == (3, 50)


def test_filter_syntax_in_an_id_never_reaches_the_filter() -> None:
    with pytest.raises(InvalidInput, match=r"^conversation_id is not a valid UUID"):
        search_params(replace(QUERY, conversation_id="x` || conversation_id:!=`y"))
    with pytest.raises(InvalidInput, match=r"^sender_id is not a valid UUID"):
        search_params(replace(QUERY, sender_id="*"))


def test_times_in_any_zone_are_the_same_instant() -> None:
    paris = JAN_10.astimezone(timezone(timedelta(hours=1)))
    assert search_params(replace(QUERY, since=paris))["filter_by"] == f"created_at:>={JAN_10_MS}"
    assert search_params(replace(QUERY, until=JAN_10))["filter_by"] == f"created_at:<={JAN_10_MS}"
    same = search_params(replace(QUERY, since=JAN_10, until=JAN_10))
    assert same["filter_by"] == f"created_at:>={JAN_10_MS} && created_at:<={JAN_10_MS}"


def test_bad_times_are_refused() -> None:
    with pytest.raises(InvalidInput, match=exactly("since must include a timezone")):
        search_params(replace(QUERY, since=datetime(2026, 1, 10)))
    with pytest.raises(InvalidInput, match=exactly("until must be a datetime")):
        search_params(replace(QUERY, until="2026-01-10"))  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match=exactly("since is after until")):
        search_params(replace(QUERY, since=JAN_10, until=JAN_10 - timedelta(milliseconds=1)))


@pytest.mark.parametrize("text", ["", "   ", None, 5])
def test_an_empty_query_is_refused(text: object) -> None:
    with pytest.raises(InvalidInput, match=exactly("query is empty")):
        search_params(SearchQuery(text=text))  # type: ignore[arg-type]


def test_the_query_length_limit_is_inclusive() -> None:
    assert search_params(SearchQuery(text="x" * MAX_QUERY_CHARS))["q"] == "x" * MAX_QUERY_CHARS
    with pytest.raises(
        InvalidInput, match=exactly("query is 513 characters, over the limit of 512")
    ):
        search_params(SearchQuery(text="x" * (MAX_QUERY_CHARS + 1)))


@pytest.mark.parametrize(
    ("field", "value", "high"),
    [
        ("page", 0, MAX_PAGE),
        ("page", MAX_PAGE + 1, MAX_PAGE),
        ("page", True, MAX_PAGE),
        ("page", "2", MAX_PAGE),
        ("per_page", 0, MAX_PER_PAGE),
        ("per_page", MAX_PER_PAGE + 1, MAX_PER_PAGE),
        ("per_page", 2.0, MAX_PER_PAGE),
    ],
)
def test_pages_out_of_range_are_refused(field: str, value: object, high: int) -> None:
    with pytest.raises(
        InvalidInput, match=exactly(f"{field} must be an integer from 1 to {high}, got {value!r}")
    ):
        search_params(replace(QUERY, **{field: value}))  # type: ignore[arg-type]


def test_the_largest_pages_are_accepted() -> None:
    params = search_params(replace(QUERY, page=MAX_PAGE, per_page=MAX_PER_PAGE))
    assert (params["page"], params["per_page"]) == (1_000, 100)


# --- parse_time ---


def test_parse_time() -> None:
    assert parse_time(None, "since") is None
    assert parse_time("2026-01-10T12:00:00+00:00", "since") == JAN_10
    assert parse_time("2026-01-10T13:00:00+01:00", "since") == JAN_10
    assert parse_time("2026-01-10T12:00:00Z", "since") == JAN_10


def test_parse_time_refusals_name_the_field() -> None:
    with pytest.raises(InvalidInput, match=exactly("until must be an ISO 8601 string")):
        parse_time(1_768_046_400, "until")
    with pytest.raises(InvalidInput, match=exactly("since is not an ISO 8601 time: 'yesterday'")):
        parse_time("yesterday", "since")
    with pytest.raises(InvalidInput) as info:
        parse_time("x" * 100, "since")
    assert str(info.value) == f"since is not an ISO 8601 time: {'x' * 40!r}"
    with pytest.raises(
        InvalidInput,
        match=exactly("since must include a timezone (e.g. 2026-01-31T12:00:00+00:00)"),
    ):
        parse_time("2026-01-10T12:00:00", "since")


# --- query_with_key, against a recorded Typesense ---


class Recorder:
    """Answers ``request`` with one canned answer (or error) and records the call."""

    def __init__(self, answer: Any = None, error: Exception | None = None) -> None:
        self.answer = answer
        self.error = error
        self.calls: list[tuple[str, str, dict[str, Any]]] = []

    async def request(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        self.calls.append((method, path, kwargs))
        if self.error is not None:
            raise self.error
        return 200, self.answer


def typesense(recorder: Recorder) -> TypesenseClient:
    return cast(TypesenseClient, recorder)


async def test_a_grant_for_no_conversation_finds_nothing_without_asking() -> None:
    recorder = Recorder()
    empty = replace(GRANT, key="", conversation_count=0)
    result = await query_with_key(typesense(recorder), empty, {}, replace(QUERY, page=2))
    assert result == SearchResult(found=0, page=2, per_page=20, hits=[])
    assert recorder.calls == []


async def test_the_search_goes_with_the_scoped_key_to_the_quoted_collection() -> None:
    recorder = Recorder({"found": 0, "hits": []})
    params = search_params(QUERY)
    await query_with_key(typesense(recorder), GRANT, params, QUERY)
    assert recorder.calls == [
        (
            "GET",
            "/collections/missive%20messages/documents/search",
            {"params": params, "api_key": "scoped", "ok": (401, 403)},
        )
    ]


async def test_hits_become_search_hits_with_snippets_and_times() -> None:
    answer = {
        "found": 41,
        "hits": [
            {
                "document": {
                    "id": "m1",
                    "conversation_id": CID,
                    "sender_id": SENDER,
                    "seq": "7",
                    "created_at": JAN_10_MS,
                    "edited_at": JAN_10_MS + 1_500,
                    "text": "the roadmap draft",
                },
                "highlights": [
                    {"field": "sender_id", "snippet": "not this one"},
                    {"field": "text", "snippet": "the <mark>roadmap</mark> draft"},
                ],
            },
            {
                "document": {
                    "id": "m2",
                    "conversation_id": CID,
                    "sender_id": SENDER,
                    "seq": 8,
                    "created_at": JAN_10_MS,
                    "text": "r" * 300,
                },
            },
        ],
    }
    result = await query_with_key(typesense(Recorder(answer)), GRANT, {}, replace(QUERY, page=3))
    assert (result.found, result.page, result.per_page) == (41, 3, 20)
    assert result.hits == [
        SearchHit(
            message_id="m1",
            conversation_id=CID,
            sender_id=SENDER,
            seq=7,
            created_at=JAN_10,
            text="the roadmap draft",
            snippet="the <mark>roadmap</mark> draft",
            edited_at=JAN_10 + timedelta(milliseconds=1_500),
        ),
        SearchHit(
            message_id="m2",
            conversation_id=CID,
            sender_id=SENDER,
            seq=8,
            created_at=JAN_10,
            text="r" * 300,
            snippet="r" * 200,  # no highlight: the text's start
            edited_at=None,
        ),
    ]


async def test_a_refused_key_is_unavailable_and_a_refused_query_is_invalid() -> None:
    expired = Recorder(
        {"message": "Forbidden - a valid `x-typesense-api-key` header must be sent."}
    )
    with pytest.raises(
        ProviderUnavailable,
        match=exactly(
            "Typesense refused the search key: "
            "Forbidden - a valid `x-typesense-api-key` header must be sent."
        ),
    ):
        await query_with_key(typesense(expired), GRANT, {}, QUERY)
    refused = Recorder(error=SearchRejected("400: Could not parse the filter query."))
    with pytest.raises(
        InvalidInput,
        match=exactly("the search was refused: 400: Could not parse the filter query."),
    ):
        await query_with_key(typesense(refused), GRANT, {}, QUERY)
