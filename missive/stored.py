"""A message as read back from the database and decrypted: what broadcasts and
notifications carry. Below the services, so the broadcaster can name it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class StoredMessage:
    """A message read back and decrypted, for broadcasts and notifications."""

    message_id: str
    conversation_id: str
    seq: int
    sender_id: str
    client_message_id: str
    body: str
    created_at: datetime
    edited_at: datetime | None
    deleted_at: datetime | None
    e2e_header: dict[str, Any] | None = None
    """Set for end-to-end encrypted messages: ``body`` is then the client's
    ciphertext (base64), relayed as sent; never index or preview it."""
