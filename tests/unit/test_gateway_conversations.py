"""The conversation events' payload readers: ints, strings and user id lists, by name."""

from __future__ import annotations

import re
import uuid
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from gateway.conversations import (
    _limit,
    _membership_json,
    _optional_int,
    _state_json,
    _string,
    _user_ids,
)
from missive.errors import InvalidInput
from missive.schemas import ConversationSummary, MembershipAction, MembershipResult
from missive.services.history import SYNC_DEFAULT_LIMIT, ConversationState
from missive.services.membership import MAX_MEMBERS_PER_CHANGE

pytestmark = pytest.mark.unit

UID = "2f1d0c2e-8a6b-4f7e-9a3c-0d5e6f7a8b9c"
CID = "c0000000-0000-4000-8000-000000000001"


def exactly(message: str) -> str:
    """A ``match`` pattern for exactly this message."""
    return f"^{re.escape(message)}$"


# --- _optional_int and _limit ---


def test_an_absent_or_null_int_is_the_default() -> None:
    assert _optional_int({}, "after_seq") is None
    assert _optional_int({"after_seq": None}, "after_seq", 5) == 5
    assert _optional_int({"after_seq": 0}, "after_seq", 5) == 0  # 0 is a value, not absent
    assert _optional_int({"after_seq": -3}, "after_seq") == -3  # the service checks the range


@pytest.mark.parametrize("value", [True, 1.5, "7", [1], {"n": 1}])
def test_an_int_that_is_not_an_int_is_refused_by_name(value: object) -> None:
    with pytest.raises(
        InvalidInput, match=exactly(f"before_seq must be an integer, got {value!r}")
    ):
        _optional_int({"before_seq": value}, "before_seq")


def test_a_huge_value_is_shown_cut_to_200_characters() -> None:
    with pytest.raises(InvalidInput) as info:
        _optional_int({"limit": "9" * 1_000}, "limit")
    assert len(str(info.value)) == 200
    assert str(info.value).startswith("limit must be an integer, got '999")


def test_the_limit_defaults_to_a_page() -> None:
    assert _limit({}) == SYNC_DEFAULT_LIMIT
    assert _limit({"limit": None}) == SYNC_DEFAULT_LIMIT
    assert _limit({"limit": 20}) == 20
    with pytest.raises(InvalidInput, match=exactly("limit must be an integer, got '20'")):
        _limit({"limit": "20"})


# --- _string ---


def test_strings() -> None:
    assert _string({"title": "ops"}, "title") == "ops"
    assert _string({"title": ""}, "title") == ""  # empty is a value; services check content
    assert _string({}, "title") is None
    assert _string({"title": None}, "title") is None
    with pytest.raises(InvalidInput, match=exactly("kind is required")):
        _string({}, "kind", required=True)
    with pytest.raises(InvalidInput, match=exactly("kind is required")):
        _string({"kind": None}, "kind", required=True)
    with pytest.raises(InvalidInput, match=exactly("title must be a string, got int")):
        _string({"title": 3}, "title")
    with pytest.raises(InvalidInput, match=exactly("kind must be a string, got list")):
        _string({"kind": ["group"]}, "kind", required=True)


# --- _user_ids ---


def test_user_ids_come_back_canonical_in_order() -> None:
    other = str(uuid.uuid4())
    assert _user_ids({"user_ids": [UID.upper(), other]}, "user_ids") == [UID, other]
    assert _user_ids({"user_ids": []}, "user_ids") == []


@pytest.mark.parametrize("value", [None, UID, {"id": UID}, (UID,)])
def test_user_ids_must_be_a_list(value: object) -> None:
    payload = {} if value is None else {"members": value}
    with pytest.raises(InvalidInput, match=exactly("members must be a list of user ids")):
        _user_ids(payload, "members")


def test_a_bad_user_id_is_named_as_an_item_of_the_list() -> None:
    with pytest.raises(InvalidInput, match=exactly("user_ids[] is not a valid UUID: 'ana'")):
        _user_ids({"user_ids": [UID, "ana"]}, "user_ids")
    with pytest.raises(InvalidInput, match=exactly("user_ids[] must be a UUID string, got int")):
        _user_ids({"user_ids": [7]}, "user_ids")


def test_a_change_names_at_most_so_many_users() -> None:
    ids = [str(uuid.uuid4()) for _ in range(MAX_MEMBERS_PER_CHANGE)]
    assert len(_user_ids({"user_ids": ids}, "user_ids")) == MAX_MEMBERS_PER_CHANGE
    with pytest.raises(InvalidInput, match=exactly("user_ids names 1001 users; at most 1000")):
        _user_ids({"user_ids": [*ids, "not even checked"]}, "user_ids")


# --- the acks' JSON ---


def test_a_membership_ack() -> None:
    summary = ConversationSummary(
        conversation_id=CID,
        kind="group",
        title=None,
        encryption_mode="e2e",
        member_count=2,
        last_seq=0,
    )
    result = MembershipResult(
        action=MembershipAction.ADD,
        conversation=summary,
        changed=False,
        changed_at=datetime(2026, 1, 10, tzinfo=UTC),
        added=[],
        already_members=[UID],
    )
    assert _membership_json(result) == {
        "ok": True,
        "conversation_id": CID,
        "changed": False,
        "added": [],
        "already_members": [UID],
        "removed": [],
        "role": None,
        "conversation": {
            "conversation_id": CID,
            "kind": "group",
            "title": None,
            "encryption_mode": "e2e",
            "member_count": 2,
            "last_seq": 0,
        },
    }


def test_a_conversation_list_entry() -> None:
    state = ConversationState(
        conversation_id=CID,
        kind="direct",
        title=None,
        encryption_mode="standard",
        role="member",
        member_count=2,
        last_seq=9,
        delivered_seq=9,
        read_seq=4,
        unread_count=5,
        muted=True,
        last_message_at=datetime(2026, 1, 10, 9, 30, tzinfo=UTC),
    )
    assert _state_json(state) == {
        "conversation_id": CID,
        "kind": "direct",
        "title": None,
        "encryption_mode": "standard",
        "role": "member",
        "member_count": 2,
        "last_seq": 9,
        "delivered_seq": 9,
        "read_seq": 4,
        "unread_count": 5,
        "muted": True,
        "last_message_at": "2026-01-10T09:30:00+00:00",
    }
    assert _state_json(replace(state, last_message_at=None))["last_message_at"] is None
