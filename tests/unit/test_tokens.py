"""Gateway connection tokens: issued, verified, and refused for each way they go wrong."""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid

import pytest

from missive.errors import InvalidInput, InvalidToken
from missive.tokens import issue_token, verify_token

pytestmark = pytest.mark.unit

SECRET = "a gateway secret"
NOW = 1_700_000_000.0
USER = str(uuid.uuid4())


def test_a_fresh_token_names_its_user() -> None:
    token = issue_token(SECRET, USER, ttl_seconds=60, now=NOW)
    assert verify_token(SECRET, token, now=NOW + 59) == USER


def test_user_ids_come_back_canonical() -> None:
    token = issue_token(SECRET, USER.upper(), ttl_seconds=60, now=NOW)
    assert verify_token(SECRET, token, now=NOW) == USER


def test_an_expired_token_is_refused() -> None:
    token = issue_token(SECRET, USER, ttl_seconds=60, now=NOW)
    with pytest.raises(InvalidToken, match="expired"):
        verify_token(SECRET, token, now=NOW + 60)


def test_a_token_signed_with_another_secret_is_refused() -> None:
    token = issue_token("another secret", USER, ttl_seconds=60, now=NOW)
    with pytest.raises(InvalidToken, match="signature invalid"):
        verify_token(SECRET, token, now=NOW)


@pytest.mark.parametrize("part", [0, 1], ids=["user", "expiry"])
def test_changing_a_signed_part_breaks_the_signature(part: int) -> None:
    pieces = issue_token(SECRET, USER, ttl_seconds=60, now=NOW).split(".")
    pieces[part] = str(uuid.uuid4()) if part == 0 else str(int(pieces[1]) + 3600)
    with pytest.raises(InvalidToken, match="signature invalid"):
        verify_token(SECRET, ".".join(pieces), now=NOW)


@pytest.mark.parametrize(
    ("token", "match"),
    [
        (None, "missing"),
        ("", "missing"),
        (42, "missing"),
        ("no-dots", "malformed"),
        ("a.b.c.d", "malformed"),
        (f"{USER}.soon.sig", "malformed"),
        (f"{USER}.1.x", "malformed"),
        (f"{USER}.9999999999.%%%", "signature invalid"),
    ],
)
def test_missing_or_malformed_tokens_are_refused(token: object, match: str) -> None:
    with pytest.raises(InvalidToken, match=match):
        verify_token(SECRET, token, now=NOW)


def test_a_validly_signed_token_without_a_uuid_is_malformed() -> None:
    payload = f"not-a-uuid.{int(NOW) + 60}"
    sig = hmac.new(SECRET.encode(), payload.encode(), hashlib.sha256).digest()
    token = f"{payload}.{base64.urlsafe_b64encode(sig).rstrip(b'=').decode()}"
    with pytest.raises(InvalidToken, match="malformed"):
        verify_token(SECRET, token, now=NOW)


def test_no_secret_means_no_tokens() -> None:
    with pytest.raises(InvalidToken, match="GATEWAY_SECRET"):
        issue_token("", USER, ttl_seconds=60)
    with pytest.raises(InvalidToken, match="GATEWAY_SECRET"):
        verify_token("", "anything")


def test_only_user_ids_get_tokens() -> None:
    with pytest.raises(InvalidInput, match="user_id"):
        issue_token(SECRET, "alice", ttl_seconds=60)
