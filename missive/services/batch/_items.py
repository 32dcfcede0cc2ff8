"""What staging and chunk processing share: batch ids, item states, failure reasons."""

from __future__ import annotations

import enum
import re
import uuid

from missive.errors import InvalidInput, PermanentError

_BATCH_ID = re.compile(r"^[A-Za-z0-9_-]{1,48}$")


class ItemState(enum.IntEnum):
    """``batch_items.state``: an item is pending until its chunk stores or refuses it."""

    PENDING = 0
    STORED = 1
    FAILED = 2
    """Refused; ``batch_items.reason`` says why (``<error class>: <message>``)."""


def require_batch_id(value: str) -> str:
    """A batch id is 1-48 letters, digits, '-' or '_' (it is part of the workflow id)."""
    if not isinstance(value, str) or not _BATCH_ID.match(value):
        raise InvalidInput(f"batch id must be 1-48 letters, digits, '-' or '_', got {value!r}")
    return value


def new_batch_id() -> str:
    """A fresh batch id."""
    return uuid.uuid4().hex[:16]


def failure_reason(err: PermanentError) -> str:
    """An item's ``reason``: the error's class name, then its message."""
    return f"{err.type}: {err}"
