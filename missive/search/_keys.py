"""Scoped search keys: a user's short-lived key over their own conversations."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any


def parent_key_value(admin_key: str, alias: str) -> str:
    """The search-only parent key, derived from the admin key: every process
    computes the same value, so no process has to store or fetch it."""
    digest = hmac.new(admin_key.encode(), f"missive-search:{alias}".encode(), hashlib.sha256)
    return digest.hexdigest()


def scoped_search_key(parent_key: str, embedded: dict[str, Any]) -> str:
    """Typesense's scoped search key: HMAC-SHA256 of the embedded parameters under the
    parent key (what ``typesense.ApiKeys.generate_scoped_search_key`` computes,
    without building a synchronous client)."""
    params = json.dumps(embedded)
    digest = base64.b64encode(
        hmac.new(parent_key.encode(), params.encode(), hashlib.sha256).digest()
    ).decode()
    return base64.b64encode(f"{digest}{parent_key[:4]}{params}".encode()).decode()
