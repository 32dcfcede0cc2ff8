"""Parent and scoped search keys: derived the same everywhere, in Typesense's format.

(tests/integration/test_search.py compares them with the typesense client's own.)
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import pytest

from missive.search import parent_key_value, scoped_search_key

pytestmark = pytest.mark.unit

EMBEDDED = {"filter_by": "conversation_id:=[`c1`,`c2`]", "expires_at": 1_900_000_000}


def test_the_parent_key_is_an_hmac_of_the_alias_under_the_admin_key() -> None:
    expected = hmac.new(b"admin", b"missive-search:missive_messages", hashlib.sha256).hexdigest()
    assert parent_key_value("admin", "missive_messages") == expected
    assert parent_key_value("admin", "missive_messages") == parent_key_value(
        "admin", "missive_messages"
    )


def test_each_admin_key_and_alias_has_its_own_parent() -> None:
    parents = {
        parent_key_value("admin", "missive_messages"),
        parent_key_value("admin", "other"),
        parent_key_value("other", "missive_messages"),
        parent_key_value("admin", "missive_messages "),
    }
    assert len(parents) == 4


def test_a_scoped_key_is_digest_then_prefix_then_the_embedded_json() -> None:
    parent = parent_key_value("admin", "missive_messages")
    decoded = base64.b64decode(scoped_search_key(parent, EMBEDDED)).decode()
    params = json.dumps(EMBEDDED)
    digest = base64.b64encode(
        hmac.new(parent.encode(), params.encode(), hashlib.sha256).digest()
    ).decode()
    assert decoded == f"{digest}{parent[:4]}{params}"
    assert json.loads(decoded[len(digest) + 4 :]) == EMBEDDED


def test_a_scoped_key_depends_on_the_parent_and_every_embedded_value() -> None:
    parent = parent_key_value("admin", "missive_messages")
    keys = {
        scoped_search_key(parent, EMBEDDED),
        scoped_search_key(parent_key_value("admin", "other"), EMBEDDED),
        scoped_search_key(parent, {**EMBEDDED, "expires_at": 1_900_000_001}),
        scoped_search_key(parent, {**EMBEDDED, "filter_by": "conversation_id:=[`c1`]"}),
    }
    assert len(keys) == 4
    assert scoped_search_key(parent, EMBEDDED) == scoped_search_key(parent, dict(EMBEDDED))
