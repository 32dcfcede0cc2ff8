"""The gateway's packet decoding, log redaction and token claims, without a server."""

from __future__ import annotations

import logging
import uuid

import pytest
from socketio import packet as sio_packet

from gateway.transport import (
    MAX_JSON_DEPTH,
    GatewayPacket,
    MalformedPacket,
    RedactQueryStrings,
    StrictJson,
    redact_query,
)
from missive.errors import InvalidToken, TokenRevoked
from missive.sessions import require_not_revoked
from missive.tokens import MAX_TOKEN_CHARS, TokenClaims, issue_token, read_token

pytestmark = pytest.mark.unit

SECRET = "a gateway secret"
NOW = 1_700_000_000.0


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def test_json_up_to_the_depth_limit_parses_and_deeper_is_refused() -> None:
    assert StrictJson.loads(_nested(MAX_JSON_DEPTH)) is not None
    assert StrictJson.loads('{"a": [1, 2, 3], "b": {"c": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}}')
    for depth in (MAX_JSON_DEPTH + 1, 100_000):
        with pytest.raises(ValueError, match="nested deeper"):
            StrictJson.loads(_nested(depth))


def test_a_malformed_event_keeps_its_header() -> None:
    with pytest.raises(MalformedPacket) as caught:
        GatewayPacket(encoded_packet='2/chat,17["message:send", {')
    err = caught.value
    assert (err.packet_type, err.namespace, err.id) == (sio_packet.EVENT, "/chat", 17)
    assert "JSON is malformed" in err.reason
    with pytest.raises(MalformedPacket, match="not valid UTF-8") as caught:
        GatewayPacket(encoded_packet=b'25["x", "\xff"]')
    assert caught.value.id == 5
    with pytest.raises(MalformedPacket, match="must be an array"):
        GatewayPacket(encoded_packet="26{}")
    assert GatewayPacket(encoded_packet='27["message:send", {"a": 1}]').data == [
        "message:send",
        {"a": 1},
    ]


def test_query_values_are_redacted_but_the_transport() -> None:
    line = '1.2.3.4:5 - "WebSocket /socket.io/?EIO=4&transport=websocket&token=abc.1.2.sig&sid=S"'
    assert redact_query(line) == (
        '1.2.3.4:5 - "WebSocket /socket.io/?EIO=4&transport=websocket&token=***&sid=***"'
    )
    record = logging.LogRecord(
        "uvicorn.error",
        logging.INFO,
        __file__,
        1,
        '%s - "WebSocket %s" [accepted]',
        ("1.2.3.4:5", "/socket.io/?token=secret"),
        None,
    )
    assert RedactQueryStrings().filter(record)
    assert "secret" not in record.getMessage() and "token=***" in record.getMessage()


def test_token_claims_and_revocation() -> None:
    user = str(uuid.uuid4())
    claims = read_token(SECRET, issue_token(SECRET, user, ttl_seconds=60, now=NOW), now=NOW)
    assert claims == TokenClaims(user_id=user, expires_at=int(NOW) + 60, issued_at=int(NOW))
    require_not_revoked(claims, None)
    require_not_revoked(claims, int(NOW))
    with pytest.raises(TokenRevoked):
        require_not_revoked(claims, int(NOW) + 1)
    with pytest.raises(TokenRevoked):  # the older form has no issue time
        require_not_revoked(TokenClaims(user, int(NOW) + 60, None), int(NOW) - 100)
    with pytest.raises(InvalidToken, match="too long"):
        read_token(SECRET, "x" * (MAX_TOKEN_CHARS + 1), now=NOW)
