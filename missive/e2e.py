"""End-to-end encrypted conversations: what a send must carry, checked without decrypting."""

from __future__ import annotations

import binascii
import json
from typing import Any

from missive.errors import InvalidInput

MAX_E2E_HEADER_BYTES = 4096
"""Largest e2e_header, in bytes of its JSON: key ids and wrapped keys, never content."""

E2E = "e2e"
"""The conversations.encryption_mode of an end-to-end encrypted conversation."""


def require_e2e_header(value: object) -> dict[str, Any]:
    """An e2e_header is a non-empty JSON object of at most MAX_E2E_HEADER_BYTES.

    Its fields (key ids, algorithm, per-device wrapped keys) belong to the
    clients; the server stores and relays them untouched.

    Raises:
        InvalidInput: naming e2e_header.
    """
    if not isinstance(value, dict) or not value:
        raise InvalidInput(
            f"e2e_header must be a non-empty object of key metadata, got {type(value).__name__}"
        )
    try:
        size = len(json.dumps(value, separators=(",", ":"), allow_nan=False).encode())
    except (TypeError, ValueError):
        raise InvalidInput("e2e_header must be plain JSON (objects, strings, numbers)") from None
    if size > MAX_E2E_HEADER_BYTES:
        raise InvalidInput(f"e2e_header is {size} bytes, over the limit of {MAX_E2E_HEADER_BYTES}")
    return value


def check_e2e_send(
    *, conversation_id: str, encryption_mode: str, body: str, e2e_header: object
) -> None:
    """Refuses a send whose shape does not match its conversation's encryption mode.

    An e2e conversation takes the client's ciphertext (base64 in ``body``) with
    its key metadata (``e2e_header``); a standard one takes plaintext and no header.

    Raises:
        InvalidInput: naming the field that is missing, unexpected or malformed.
    """
    if encryption_mode != E2E:
        if e2e_header is not None:
            raise InvalidInput(
                f"e2e_header is only accepted in end-to-end encrypted conversations; "
                f"conversation {conversation_id} is {encryption_mode}"
            )
        return
    if e2e_header is None:
        raise InvalidInput(
            f"e2e_header is required: conversation {conversation_id} is end-to-end encrypted "
            "(send the ciphertext as base64 in body and its key metadata in e2e_header)"
        )
    require_e2e_header(e2e_header)
    try:
        binascii.a2b_base64(body.encode("ascii"), strict_mode=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise InvalidInput(
            "body must be the base64 ciphertext in an end-to-end encrypted conversation"
        ) from None
