"""Workflow ids and entity ids from business keys: the same key, the same id; another, another."""

from __future__ import annotations

import re
import uuid

import pytest

from missive.constants import (
    CONVERSATION_ID_NAMESPACE,
    USER_ID_NAMESPACE,
    clear_pushes_workflow_id,
    conversation_id_for,
    delete_workflow_id,
    edit_workflow_id,
    membership_workflow_id,
    message_id_for,
    message_workflow_id,
    user_id_for,
    user_workflow_id,
)

pytestmark = pytest.mark.unit

MID = "m0000000-0000-4000-8000-000000000001"
ANA = "a0000000-0000-4000-8000-000000000001"
BEN = "b0000000-0000-4000-8000-000000000001"
CY = "d0000000-0000-4000-8000-000000000001"
CID = "c0000000-0000-4000-8000-000000000001"
DIGEST = re.compile(r"[0-9a-f]{24}")


# --- edits and deletes ---


def test_an_edit_id_is_the_message_and_a_digest_of_the_text() -> None:
    workflow_id = edit_workflow_id(MID, "fixed typo")
    prefix, digest = workflow_id.rsplit("-", 1)
    assert prefix == f"message-edit-{MID}"
    assert DIGEST.fullmatch(digest)
    assert edit_workflow_id(MID, "fixed typo") == workflow_id  # a resend joins it


def test_each_text_and_each_message_is_another_edit() -> None:
    ids = {
        edit_workflow_id(MID, "fixed typo"),
        edit_workflow_id(MID, "fixed typo "),
        edit_workflow_id(MID, "Fixed typo"),
        edit_workflow_id(MID, ""),
        edit_workflow_id(str(uuid.uuid4()), "fixed typo"),
    }
    assert len(ids) == 5


def test_a_long_text_makes_a_short_id() -> None:
    assert len(edit_workflow_id(MID, "x" * 100_000)) == len(f"message-edit-{MID}-") + 24


def test_an_edit_of_a_lone_surrogate_is_named_so_the_edit_can_refuse_it() -> None:
    # The starter names the workflow before anything checks the body; the edit service
    # then refuses it as InvalidInput ("body is not valid Unicode ..."), as a send does.
    # send_fingerprint encodes with surrogatepass for the same reason.
    assert edit_workflow_id(MID, "\ud800") != edit_workflow_id(MID, "\ud801")


def test_a_message_is_deleted_once() -> None:
    assert delete_workflow_id(MID) == f"message-delete-{MID}"
    assert delete_workflow_id(MID) != delete_workflow_id(str(uuid.uuid4()))
    # Neither an edit's nor the lifecycle's id.
    assert delete_workflow_id(MID) not in {edit_workflow_id(MID, ""), f"message-{MID}"}


# --- membership and users ---


def test_a_membership_change_is_named_by_action_and_a_digest_of_who_and_where() -> None:
    workflow_id = membership_workflow_id("add", ANA, CID, BEN, CY)
    assert workflow_id.startswith("membership-add-")
    assert DIGEST.fullmatch(workflow_id.removeprefix("membership-add-"))
    assert membership_workflow_id("add", ANA, CID, BEN, CY) == workflow_id


def test_every_part_of_a_membership_change_tells_it_apart() -> None:
    ids = [
        membership_workflow_id("add", ANA, CID, BEN, CY),
        membership_workflow_id("remove", ANA, CID, BEN, CY),
        membership_workflow_id("add", BEN, CID, BEN, CY),
        membership_workflow_id("add", ANA, str(uuid.uuid4()), BEN, CY),
        membership_workflow_id("add", ANA, CID, BEN),
        membership_workflow_id("add", ANA, CID, CY, BEN),  # another order: another request
        membership_workflow_id("add", ANA, CID),
        # The separator keeps part boundaries: (BEN, CY) is not (BEN + CY).
        membership_workflow_id("add", ANA, CID, BEN + CY),
    ]
    assert len(set(ids)) == len(ids)


def test_a_user_request_is_named_by_a_digest_of_its_key() -> None:
    workflow_id = user_workflow_id("crm-42")
    assert workflow_id.startswith("user-")
    assert DIGEST.fullmatch(workflow_id.removeprefix("user-"))
    assert user_workflow_id("crm-42") == workflow_id
    assert user_workflow_id("crm-43") != workflow_id
    # The key itself never shows in the id (a client's id may be an email address).
    assert "ana@example.com" not in user_workflow_id("ana@example.com")


# --- ids a caller names ---


def test_a_conversation_id_is_a_uuid5_of_creator_and_client_id() -> None:
    cid = conversation_id_for(ANA, "team-chat")
    assert cid == str(uuid.uuid5(CONVERSATION_ID_NAMESPACE, f"{ANA}:team-chat"))
    assert uuid.UUID(cid).version == 5
    assert conversation_id_for(ANA, "team-chat") == cid
    assert len({cid, conversation_id_for(BEN, "team-chat"), conversation_id_for(ANA, "team")}) == 3


def test_a_user_id_is_a_uuid5_of_the_client_user_id() -> None:
    uid = user_id_for("crm-42")
    assert uid == str(uuid.uuid5(USER_ID_NAMESPACE, "crm-42"))
    assert uuid.UUID(uid).version == 5
    assert user_id_for("crm-42") == uid != user_id_for("crm-42 ")


def test_the_namespaces_keep_kinds_of_id_apart() -> None:
    # The same words name a different conversation, user and message.
    key = f"{ANA}:x"
    assert len({str(uuid.uuid5(CONVERSATION_ID_NAMESPACE, key)), user_id_for(key)}) == 2
    assert conversation_id_for(ANA, "x") != message_id_for(ANA, "x")


def test_message_ids_and_lifecycles() -> None:
    mid = message_id_for(ANA, "c-1")
    assert uuid.UUID(mid).version == 5
    assert message_workflow_id(ANA, "c-1") == f"message-{mid}"
    assert message_id_for(BEN, "c-1") != mid != message_id_for(ANA, "c-2")


def test_a_clear_of_pushes_is_named_by_the_set_of_pushes() -> None:
    one = clear_pushes_workflow_id(["n2", "n1"])
    assert one == clear_pushes_workflow_id(["n1", "n2"])  # order does not matter
    assert one.startswith("clear-pushes-") and len(one) == len("clear-pushes-") + 32
    assert one != clear_pushes_workflow_id(["n1"])
