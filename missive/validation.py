"""Input checks shared by the workflow, the services, the gateway and the starter.

Pure functions with no I/O, so the workflow sandbox can run them too.
"""

from __future__ import annotations

import hashlib
import re
import uuid

from missive.errors import InvalidInput

E164 = re.compile(r"^\+[1-9]\d{6,14}\Z")
"""An E.164 phone number: ``+`` then 7 to 15 digits, no leading zero (planning and the
SMS sender apply the same rule)."""

MAX_CLIENT_MESSAGE_ID = 128


def require_uuid(value: object, name: str) -> str:
    """Returns the canonical form of a UUID string, or raises InvalidInput naming it."""
    if not isinstance(value, str):
        raise InvalidInput(f"{name} must be a UUID string, got {type(value).__name__}")
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise InvalidInput(f"{name} is not a valid UUID: {value[:64]!r}") from None


MAX_MENTIONS = 256
"""Most user ids one message may mention (the gateway and the lifecycle refuse more)."""


def require_mentions(value: object) -> list[str]:
    """The ``mentions`` of a send: absent, or at most MAX_MENTIONS user ids (deduplicated).

    The gateway checks a client's send with it, and the lifecycle a hand-written
    input: the notification planner would drop what is not a user id without a word.
    """
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise InvalidInput("mentions must be a list of user ids (strings)")
    if len(value) > MAX_MENTIONS:
        raise InvalidInput(f"mentions names {len(value)} users; at most {MAX_MENTIONS}")
    return list(dict.fromkeys(require_uuid(item, "mentions[]") for item in value))


def require_client_message_id(value: object) -> str:
    """A client_message_id is 1-128 printable characters."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput("client_message_id must be a non-empty string")
    if len(value) > MAX_CLIENT_MESSAGE_ID:
        raise InvalidInput(f"client_message_id is longer than {MAX_CLIENT_MESSAGE_ID} characters")
    if not value.isprintable():
        raise InvalidInput("client_message_id contains non-printable characters")
    return value


MAX_LIFECYCLE_WINDOW_SECONDS = 30 * 86_400
"""Longest lifecycle window a workflow input may ask for (30 days)."""

MAX_NOTIFY_SECONDS = 30 * 86_400
"""Longest notification delay, window or deadline an input may ask for (30 days): the
agenda turns each into a timer from the message's time."""

MAX_RECEIPT_DETAIL_RECIPIENTS = 1_024
"""Most recipients a lifecycle may track one by one: each costs it history and state."""


def bounds(low: float | None = None, high: float | None = None) -> dict[str, object]:
    """Dataclass field metadata: a number's allowed range in a workflow input.

    Read by the payload converter (runtime.converter), which refuses a value
    outside it as InvalidInput naming the field:
    ``field(default=86_400, metadata=bounds(1, MAX_LIFECYCLE_WINDOW_SECONDS))``.
    """
    return {"missive_bounds": (low, high)}


def require_body(value: object, *, max_bytes: int) -> bytes:
    """Returns the UTF-8 body, or raises InvalidInput if empty, not Unicode or too large."""
    if not isinstance(value, str):
        raise InvalidInput(f"body must be a string, got {type(value).__name__}")
    if not value.strip():
        raise InvalidInput("body is empty")
    try:
        encoded = value.encode("utf-8")
    except UnicodeEncodeError as err:  # JSON can carry "\ud800", UTF-8 cannot
        raise InvalidInput(
            f"body is not valid Unicode: a lone surrogate at character {err.start}"
        ) from None
    if len(encoded) > max_bytes:
        raise InvalidInput(f"body is {len(encoded)} bytes, over the limit of {max_bytes}")
    return encoded


def require_seq(value: object, name: str = "up_to_seq") -> int:
    """A sequence number is a positive integer."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidInput(f"{name} must be a positive integer, got {value!r}")
    return value


def send_fingerprint(conversation_id: str, body: str) -> str:
    """SHA-256 of what makes two sends "the same message" (conversation and body).

    It only travels inside encrypted payloads, never in ids or search attributes.
    """
    digest = hashlib.sha256()
    digest.update(conversation_id.encode())
    digest.update(b"\0")
    digest.update(body.encode("utf-8", "surrogatepass"))
    return digest.hexdigest()
