"""The shape checks of end-to-end encrypted sends: opaque, but never half-formed."""

from __future__ import annotations

import base64
import math
import re

import pytest

from missive.e2e import MAX_E2E_HEADER_BYTES, check_e2e_send, require_e2e_header
from missive.errors import InvalidInput

pytestmark = pytest.mark.unit

CID = "2f1d0c2e-8a6b-4f7e-9a3c-0d5e6f7a8b9c"
CIPHERTEXT = base64.b64encode(b"\x00\x01opaque").decode()
HEADER = {"alg": "x25519-aes256gcm", "key_id": "k-1"}


def test_an_e2e_send_needs_its_header_and_base64_body() -> None:
    check_e2e_send(conversation_id=CID, encryption_mode="e2e", body=CIPHERTEXT, e2e_header=HEADER)
    with pytest.raises(InvalidInput, match=f"e2e_header is required: conversation {CID}"):
        check_e2e_send(conversation_id=CID, encryption_mode="e2e", body=CIPHERTEXT, e2e_header=None)
    with pytest.raises(InvalidInput, match="body must be the base64 ciphertext"):
        check_e2e_send(
            conversation_id=CID, encryption_mode="e2e", body="hello in clear", e2e_header=HEADER
        )


def test_a_standard_send_refuses_a_header() -> None:
    check_e2e_send(conversation_id=CID, encryption_mode="standard", body="hi", e2e_header=None)
    with pytest.raises(InvalidInput, match="e2e_header is only accepted"):
        check_e2e_send(
            conversation_id=CID, encryption_mode="standard", body="hi", e2e_header=HEADER
        )


def test_header_shape_and_size() -> None:
    assert require_e2e_header(HEADER) == HEADER
    bad: object
    for bad in ({}, [], "k-1", 5):
        with pytest.raises(InvalidInput, match="e2e_header must be a non-empty object"):
            require_e2e_header(bad)
    with pytest.raises(InvalidInput, match="over the limit"):
        require_e2e_header({"k": "x" * MAX_E2E_HEADER_BYTES})


def exactly(message: str) -> str:
    """A ``match`` pattern for exactly this message."""
    return f"^{re.escape(message)}$"


@pytest.mark.parametrize(("bad", "kind"), [({}, "dict"), ([HEADER], "list"), (None, "NoneType")])
def test_a_header_that_is_no_object_names_its_type(bad: object, kind: str) -> None:
    with pytest.raises(
        InvalidInput,
        match=exactly(f"e2e_header must be a non-empty object of key metadata, got {kind}"),
    ):
        require_e2e_header(bad)


def test_the_size_limit_counts_compact_json_bytes_and_is_inclusive() -> None:
    # {"k":"..."} is 8 bytes around the value.
    at_limit = {"k": "x" * (MAX_E2E_HEADER_BYTES - 8)}
    assert require_e2e_header(at_limit) is at_limit
    over = {"k": "x" * (MAX_E2E_HEADER_BYTES - 7)}
    with pytest.raises(
        InvalidInput, match=exactly("e2e_header is 4097 bytes, over the limit of 4096")
    ):
        require_e2e_header(over)
    # Non-ASCII text counts in bytes as it is sent (JSON escapes it: 6 bytes each).
    with pytest.raises(InvalidInput, match="over the limit of 4096"):
        require_e2e_header({"k": "é" * 700})


@pytest.mark.parametrize(
    "bad",
    [{"k": b"raw bytes"}, {"k": {1, 2}}, {"k": object()}],
    ids=["bytes", "set", "object"],
)
def test_a_header_that_is_not_plain_json_is_refused(bad: dict[str, object]) -> None:
    with pytest.raises(
        InvalidInput, match=exactly("e2e_header must be plain JSON (objects, strings, numbers)")
    ):
        require_e2e_header(bad)


@pytest.mark.parametrize("number", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
def test_nan_and_infinity_are_not_plain_json(number: float) -> None:
    # The gateway's reader accepts NaN and Infinity; PostgreSQL's jsonb refuses them, and
    # orjson re-encodes them as null for the other clients.
    with pytest.raises(InvalidInput, match="e2e_header must be plain JSON"):
        require_e2e_header({"alg": "x25519", "n": number})


def test_a_standard_send_names_its_conversation_and_mode_when_refusing_a_header() -> None:
    with pytest.raises(
        InvalidInput,
        match=exactly(
            "e2e_header is only accepted in end-to-end encrypted conversations; "
            f"conversation {CID} is standard"
        ),
    ):
        check_e2e_send(conversation_id=CID, encryption_mode="standard", body="hi", e2e_header={})


def test_an_empty_header_in_an_e2e_send_is_refused_as_malformed_not_missing() -> None:
    with pytest.raises(InvalidInput, match="e2e_header must be a non-empty object"):
        check_e2e_send(conversation_id=CID, encryption_mode="e2e", body=CIPHERTEXT, e2e_header={})


@pytest.mark.parametrize(
    "body",
    [
        CIPHERTEXT[:-1],  # padding cut
        CIPHERTEXT + "\n",
        " " + CIPHERTEXT,
        base64.urlsafe_b64encode(b"\xfb\xff\xfe").decode(),  # - and _ are not base64
        "ciphertext with é",
    ],
    ids=["short-padding", "newline", "space", "urlsafe", "non-ascii"],
)
def test_an_e2e_body_must_be_strict_base64(body: str) -> None:
    with pytest.raises(
        InvalidInput,
        match=exactly("body must be the base64 ciphertext in an end-to-end encrypted conversation"),
    ):
        check_e2e_send(conversation_id=CID, encryption_mode="e2e", body=body, e2e_header=HEADER)


def test_the_header_is_checked_before_the_body() -> None:
    with pytest.raises(InvalidInput, match="over the limit"):
        check_e2e_send(
            conversation_id=CID,
            encryption_mode="e2e",
            body="not base64!",
            e2e_header={"k": "x" * MAX_E2E_HEADER_BYTES},
        )
