"""The message collection's schema and documents, and epoch-millisecond times."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from missive.search import collection_schema, search_document
from missive.search._documents import from_ms, ms

pytestmark = pytest.mark.unit

MID = "m0000000-0000-0000-0000-000000000001"
CID = "c0000000-0000-0000-0000-000000000001"
SENDER = "a0000000-0000-0000-0000-000000000001"


def test_the_schema_names_its_collection_and_sorts_by_creation() -> None:
    schema = collection_schema("missive_messages_v3")
    assert schema["name"] == "missive_messages_v3"
    assert schema["default_sorting_field"] == "created_at"
    assert {f["name"]: f["type"] for f in schema["fields"]} == {
        "conversation_id": "string",
        "sender_id": "string",
        "seq": "int64",
        "created_at": "int64",
        "edited_at": "int64",
        "text": "string",
    }
    facets = {f["name"] for f in schema["fields"] if f.get("facet")}
    assert facets == {"conversation_id", "sender_id"}
    optional = {f["name"] for f in schema["fields"] if f.get("optional")}
    assert optional == {"edited_at"}  # the sorting field may not be optional


def test_every_document_field_is_in_the_schema() -> None:
    fields = {f["name"] for f in collection_schema("x")["fields"]}
    document = search_document(MID, CID, SENDER, 7, 1_000, 2_000, "hello")
    assert set(document) - {"id"} == fields


def test_a_document_carries_edited_at_only_when_edited() -> None:
    assert search_document(MID, CID, SENDER, 7, 1_700_000_000_123, None, "hello") == {
        "id": MID,
        "conversation_id": CID,
        "sender_id": SENDER,
        "seq": 7,
        "created_at": 1_700_000_000_123,
        "text": "hello",
    }
    edited = search_document(MID, CID, SENDER, 7, 1_000, 0, "hello")
    assert edited["edited_at"] == 0  # an edit at the epoch is still an edit


def test_ms_floors_to_whole_milliseconds_in_integers() -> None:
    at = datetime(2026, 1, 10, 12, 0, 0, 999_999, tzinfo=UTC)
    assert ms(at) == 1_768_046_400_999
    assert isinstance(ms(at), int)
    assert ms(datetime(1970, 1, 1, tzinfo=UTC)) == 0
    # Before the epoch it floors too (as SQL's floor does), not towards zero.
    assert ms(datetime(1969, 12, 31, 23, 59, 59, 999_500, tzinfo=UTC)) == -1


def test_ms_reads_any_timezone_as_the_same_instant() -> None:
    utc = datetime(2026, 7, 1, 10, 0, tzinfo=UTC)
    paris = utc.astimezone(timezone(timedelta(hours=2)))
    assert ms(paris) == ms(utc)


def test_ms_needs_an_aware_time() -> None:
    with pytest.raises(TypeError):
        ms(datetime(2026, 1, 1))


@pytest.mark.parametrize("value", [0, 1, 999, 1_700_000_000_123, 4_102_444_800_001, -1_000])
def test_from_ms_and_ms_round_trip(value: int) -> None:
    at = from_ms(value)
    assert at.tzinfo is UTC
    assert ms(at) == value


def test_from_ms_is_utc() -> None:
    assert from_ms(1_768_046_400_999) == datetime(2026, 1, 10, 12, 0, 0, 999_000, tzinfo=UTC)
