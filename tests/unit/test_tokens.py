"""Gateway connection tokens: issued, verified, and refused for each way they go wrong."""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid

import pytest

from missive.errors import InvalidInput, InvalidToken
from missive.tokens import MAX_TOKEN_CHARS, TokenClaims, issue_token, read_token, verify_token

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


def _signed(payload: str, secret: str = SECRET) -> str:
    sig = hmac.new(secret.encode(), payload.encode(), hashlib.sha256).digest()
    return f"{payload}.{base64.urlsafe_b64encode(sig).rstrip(b'=').decode()}"


def test_a_token_is_user_issued_expiry_and_an_unpadded_urlsafe_signature() -> None:
    token = issue_token(SECRET, USER, ttl_seconds=90, now=NOW + 0.9)
    user, issued, expires, sig = token.split(".")
    assert (user, issued, expires) == (USER, "1700000000", "1700000090")
    assert token == _signed(f"{USER}.1700000000.1700000090")
    assert "=" not in sig and "+" not in sig and "/" not in sig


def test_read_token_returns_every_claim() -> None:
    token = issue_token(SECRET, USER, ttl_seconds=60, now=NOW)
    assert read_token(SECRET, token, now=NOW) == TokenClaims(
        user_id=USER, expires_at=int(NOW) + 60, issued_at=int(NOW)
    )


def test_the_older_three_part_form_reads_without_an_issue_time() -> None:
    token = _signed(f"{USER}.{int(NOW) + 60}")
    assert read_token(SECRET, token, now=NOW) == TokenClaims(
        user_id=USER, expires_at=int(NOW) + 60, issued_at=None
    )
    assert verify_token(SECRET, token, now=NOW) == USER


def test_expiry_is_exclusive_to_the_second() -> None:
    token = issue_token(SECRET, USER, ttl_seconds=60, now=NOW)
    assert verify_token(SECRET, token, now=NOW + 59.999) == USER
    with pytest.raises(InvalidToken, match=r"^token expired$"):
        verify_token(SECRET, token, now=NOW + 60)
    with pytest.raises(InvalidToken, match=r"^token expired$"):
        verify_token(SECRET, issue_token(SECRET, USER, ttl_seconds=0, now=NOW), now=NOW)


def test_a_forged_expired_token_says_forged_not_expired() -> None:
    # The signature is checked first: an attacker learns nothing about the claims.
    token = issue_token("another secret", USER, ttl_seconds=60, now=NOW)
    with pytest.raises(InvalidToken, match=r"^token signature invalid$"):
        verify_token(SECRET, token, now=NOW + 3600)


def test_a_token_over_the_length_cap_is_refused_before_any_work() -> None:
    token = "a" * (MAX_TOKEN_CHARS + 1)
    with pytest.raises(InvalidToken, match=r"^token too long: 257 characters, at most 256$"):
        verify_token(SECRET, token, now=NOW)
    # A real token is well under the cap.
    assert len(issue_token(SECRET, USER, ttl_seconds=10**9, now=NOW)) < MAX_TOKEN_CHARS // 2


@pytest.mark.parametrize(
    "token",
    [
        f"{USER}.1.2.3.sig",  # five parts
        f"{USER}.-5.sig",  # a sign is not a digit
        f"{USER}..sig",
        f"{USER}.1700000000.é",  # a non-ASCII signature
    ],
)
def test_more_malformed_tokens(token: str) -> None:
    with pytest.raises(InvalidToken, match=r"^token malformed$"):
        verify_token(SECRET, token, now=NOW)


def test_changing_the_issue_time_breaks_the_signature() -> None:
    user, issued, expires, sig = issue_token(SECRET, USER, ttl_seconds=60, now=NOW).split(".")
    later = f"{user}.{int(issued) + 1}.{expires}.{sig}"
    with pytest.raises(InvalidToken, match=r"^token signature invalid$"):
        verify_token(SECRET, later, now=NOW)
    # Nor does dropping it turn a four-part token into a valid three-part one.
    with pytest.raises(InvalidToken, match=r"^token signature invalid$"):
        verify_token(SECRET, f"{user}.{expires}.{sig}", now=NOW)


def test_the_missing_secret_messages_say_which_side() -> None:
    with pytest.raises(InvalidToken, match=r"^GATEWAY_SECRET is not set: cannot sign tokens$"):
        issue_token("", USER, ttl_seconds=60)
    with pytest.raises(InvalidToken, match=r"^GATEWAY_SECRET is not set: cannot verify tokens$"):
        read_token("", "anything")
