"""The input checks every entry point shares: ids, bodies, sequence numbers, fingerprints."""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from dataclasses import dataclass, field, fields

import pytest

from missive.errors import InvalidInput
from missive.validation import (
    E164,
    MAX_CLIENT_MESSAGE_ID,
    MAX_LIFECYCLE_WINDOW_SECONDS,
    bounds,
    require_body,
    require_client_message_id,
    require_seq,
    require_uuid,
    send_fingerprint,
)

pytestmark = pytest.mark.unit

UID = "2f1d0c2e-8a6b-4f7e-9a3c-0d5e6f7a8b9c"


def exactly(message: str) -> str:
    """A ``match`` pattern for exactly this message."""
    return f"^{re.escape(message)}$"


# --- require_uuid ---


@pytest.mark.parametrize(
    "spelling",
    [UID, UID.upper(), UID.replace("-", ""), f"{{{UID}}}", f"urn:uuid:{UID}"],
    ids=["canonical", "upper", "no-hyphens", "braces", "urn"],
)
def test_every_spelling_of_a_uuid_comes_back_canonical(spelling: str) -> None:
    assert require_uuid(spelling, "user_id") == UID


def test_a_non_string_id_is_refused_naming_the_field_and_its_type() -> None:
    with pytest.raises(InvalidInput, match=exactly("user_id must be a UUID string, got int")):
        require_uuid(42, "user_id")
    with pytest.raises(
        InvalidInput, match=exactly("sender_id must be a UUID string, got NoneType")
    ):
        require_uuid(None, "sender_id")
    with pytest.raises(InvalidInput, match=exactly("user_id must be a UUID string, got UUID")):
        require_uuid(uuid.UUID(UID), "user_id")


def test_a_malformed_id_is_refused_showing_at_most_64_characters() -> None:
    with pytest.raises(InvalidInput, match=exactly("conversation_id is not a valid UUID: 'alice'")):
        require_uuid("alice", "conversation_id")
    with pytest.raises(InvalidInput) as info:
        require_uuid("x" * 1_000, "conversation_id")
    assert str(info.value) == f"conversation_id is not a valid UUID: {'x' * 64!r}"
    with pytest.raises(InvalidInput, match="is not a valid UUID"):
        require_uuid(f" {UID}", "conversation_id")


# --- require_client_message_id ---


def test_a_client_message_id_is_returned_as_given() -> None:
    assert require_client_message_id("c-1") == "c-1"
    assert require_client_message_id(" spaced id ") == " spaced id "
    longest = "é" * MAX_CLIENT_MESSAGE_ID  # characters, not bytes
    assert require_client_message_id(longest) == longest


@pytest.mark.parametrize("value", [None, 7, "", "   ", "\t\n"])
def test_an_empty_or_non_string_client_message_id_is_refused(value: object) -> None:
    with pytest.raises(InvalidInput, match=exactly("client_message_id must be a non-empty string")):
        require_client_message_id(value)


def test_a_client_message_id_over_128_characters_is_refused() -> None:
    with pytest.raises(
        InvalidInput, match=exactly("client_message_id is longer than 128 characters")
    ):
        require_client_message_id("x" * (MAX_CLIENT_MESSAGE_ID + 1))


@pytest.mark.parametrize("value", ["a\nb", "tab\there", "bell\x07", "zero\u200bwidth", "\ud800x"])
def test_a_client_message_id_with_non_printable_characters_is_refused(value: str) -> None:
    with pytest.raises(
        InvalidInput, match=exactly("client_message_id contains non-printable characters")
    ):
        require_client_message_id(value)


# --- require_body ---


def test_a_body_comes_back_as_its_utf8_bytes() -> None:
    assert require_body("héllo 👋", max_bytes=100) == "héllo 👋".encode()
    assert require_body("  padded  ", max_bytes=100) == b"  padded  "


def test_the_byte_limit_counts_utf8_bytes_and_is_inclusive() -> None:
    four_bytes = "👋"
    assert require_body(four_bytes * 4, max_bytes=16) == (four_bytes * 4).encode()
    with pytest.raises(InvalidInput, match=exactly("body is 20 bytes, over the limit of 16")):
        require_body(four_bytes * 5, max_bytes=16)  # 5 characters, 20 bytes
    assert require_body("x" * 16, max_bytes=16) == b"x" * 16
    with pytest.raises(InvalidInput, match=exactly("body is 17 bytes, over the limit of 16")):
        require_body("x" * 17, max_bytes=16)


@pytest.mark.parametrize(
    ("value", "kind"), [(None, "NoneType"), (b"bytes", "bytes"), (["hi"], "list")]
)
def test_a_body_that_is_not_a_string_is_refused_naming_its_type(value: object, kind: str) -> None:
    with pytest.raises(InvalidInput, match=exactly(f"body must be a string, got {kind}")):
        require_body(value, max_bytes=100)


@pytest.mark.parametrize("value", ["", " ", "\n\t  \r"])
def test_an_empty_or_blank_body_is_refused(value: str) -> None:
    with pytest.raises(InvalidInput, match=exactly("body is empty")):
        require_body(value, max_bytes=100)


@pytest.mark.parametrize(
    ("value", "at"), [("\ud800", 0), ("ok \udfff", 3), ("👋\ud83d", 1), ("ab\udc00cd", 2)]
)
def test_a_lone_surrogate_is_refused_naming_its_position(value: str, at: int) -> None:
    # JSON's "\ud800" decodes to a str that UTF-8 cannot encode.
    with pytest.raises(
        InvalidInput,
        match=exactly(f"body is not valid Unicode: a lone surrogate at character {at}"),
    ):
        require_body(value, max_bytes=100)


def test_a_paired_surrogate_from_json_is_one_character_and_accepted() -> None:
    # "\ud83d\udc4b" in JSON text is one code point once decoded.
    decoded = json.loads('"\\ud83d\\udc4b"')
    assert require_body(decoded, max_bytes=4) == "👋".encode()


# --- require_seq ---


@pytest.mark.parametrize("value", [1, 2, 10**12])
def test_a_positive_integer_is_a_seq(value: int) -> None:
    assert require_seq(value) == value


@pytest.mark.parametrize("value", [0, -1, True, False, 1.0, "3", None])
def test_anything_else_is_refused_with_the_default_name(value: object) -> None:
    with pytest.raises(
        InvalidInput, match=exactly(f"up_to_seq must be a positive integer, got {value!r}")
    ):
        require_seq(value)


def test_the_seq_error_names_the_field_asked_for() -> None:
    with pytest.raises(InvalidInput, match=exactly("after_seq must be a positive integer, got 0")):
        require_seq(0, "after_seq")


# --- bounds ---


def test_bounds_is_field_metadata_the_converter_reads() -> None:
    assert bounds(1, 10) == {"missive_bounds": (1, 10)}
    assert bounds() == {"missive_bounds": (None, None)}
    assert bounds(high=5) == {"missive_bounds": (None, 5)}

    @dataclass(frozen=True)
    class Input:
        window: int = field(default=86_400, metadata=bounds(1, MAX_LIFECYCLE_WINDOW_SECONDS))

    [window] = fields(Input)
    assert window.metadata["missive_bounds"] == (1, 30 * 86_400)


# --- send_fingerprint ---


def test_the_fingerprint_is_sha256_of_conversation_nul_body() -> None:
    expected = hashlib.sha256(f"{UID}\0hello".encode()).hexdigest()
    assert send_fingerprint(UID, "hello") == expected
    assert send_fingerprint(UID, "hello") == send_fingerprint(UID, "hello")
    assert len(expected) == 64


def test_the_fingerprint_tells_conversations_and_bodies_apart() -> None:
    other = str(uuid.uuid4())
    prints = {
        send_fingerprint(UID, "hello"),
        send_fingerprint(other, "hello"),
        send_fingerprint(UID, "hello "),
        send_fingerprint(UID, "Hello"),
        # The separator keeps the boundary: "ab" + "c" is not "a" + "bc".
        send_fingerprint("ab", "c"),
        send_fingerprint("a", "bc"),
    }
    assert len(prints) == 6


def test_the_fingerprint_of_a_lone_surrogate_does_not_raise() -> None:
    # A body checked later (or refused) may still be fingerprinted on the way in.
    assert send_fingerprint(UID, "\ud800") == (
        hashlib.sha256(UID.encode() + b"\0" + b"\xed\xa0\x80").hexdigest()
    )


# --- E164 ---


@pytest.mark.parametrize("number", ["+14155550100", "+3361234", "+123456789012345"])
def test_e164_numbers(number: str) -> None:
    assert E164.match(number)


@pytest.mark.parametrize(
    "number",
    [
        "14155550100",  # no +
        "+04155550100",  # leading zero
        "+123456",  # 6 digits
        "+1234567890123456",  # 16 digits
        "+1 415 555 0100",
        "+1415555010a",
        "",
    ],
)
def test_not_e164(number: str) -> None:
    assert not E164.match(number)


def test_a_trailing_newline_is_not_e164() -> None:
    # ``$`` also matches before a final newline: "+14155550100\n" must still be refused,
    # or it is stored as a user's phone and handed to the SMS provider.
    assert not E164.match("+14155550100\n")
