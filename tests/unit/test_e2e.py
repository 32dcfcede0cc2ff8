"""The shape checks of end-to-end encrypted sends: opaque, but never half-formed."""

from __future__ import annotations

import base64

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
