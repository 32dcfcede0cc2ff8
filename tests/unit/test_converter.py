"""The strict payload converter: JSON no worker can store or act on is refused by name."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError
from temporalio.api.common.v1 import Payload
from temporalio.exceptions import ApplicationError

from missive.schemas import (
    DataKeyRotationInput,
    EditMessageInput,
    MasterKeyRotationInput,
    MembershipInput,
    NotifyMessageInput,
    RebuildInput,
    RetentionInput,
    SendMessageInput,
    UserProfileInput,
)
from missive.validation import MAX_NOTIFY_SECONDS
from runtime.converter import MAX_JSON_DEPTH, StrictPayloadConverter
from tests.conftest import base_settings

pytestmark = pytest.mark.unit

IDS = {
    "conversation_id": "7c6f6a3e-1a7a-4c55-9a53-2b5b7d0f1a10",
    "message_id": "0b5d2a1e-4f7a-4c55-9a53-2b5b7d0f1a10",
    "editor_id": "1f1c1d1e-4f7a-4c55-9a53-2b5b7d0f1a10",
}


def _payload(raw: str) -> Payload:
    return Payload(metadata={"encoding": b"json/plain"}, data=raw.encode())


def _read(raw: str, hint: type) -> Any:
    [value] = StrictPayloadConverter().from_payloads([_payload(raw)], [hint])
    return value


def _refusal(raw: str, hint: type) -> str:
    with pytest.raises(ApplicationError) as refused:
        _read(raw, hint)
    assert (refused.value.type, refused.value.non_retryable) == ("InvalidInput", True)
    return refused.value.message


def _nested(depth: int) -> str:
    """A JSON object nested ``depth`` levels deep: {"k": {"k": ... {}}}."""
    return '{"k": ' * (depth - 1) + "{}" + "}" * (depth - 1)


def _edit(**fields: object) -> str:
    return json.dumps({**IDS, "body": "hi", **fields})


@pytest.mark.parametrize(
    ("raw", "hint", "named"),
    [
        # json.dumps writes both as escapes: valid JSON, not storable text.
        (json.dumps({"handle": "ana", "display_name": "A\u0000na"}), UserProfileInput,
         "UserProfileInput.display_name: holds U+0000 (NUL), which cannot be stored"),
        (json.dumps({"action": "create", "title": "ops \udfff"}), MembershipInput,
         "MembershipInput.title: is not valid Unicode: a lone surrogate at character 4"),
        (_edit(e2e_header={"iv": "a\u0000"}), EditMessageInput,
         "EditMessageInput.e2e_header.iv: holds U+0000 (NUL)"),
        (_edit(e2e_header={"\ud800": 1}), EditMessageInput,
         "EditMessageInput.e2e_header: a key: is not valid Unicode"),
        (_edit(body="a\u0000b"), EditMessageInput, "EditMessageInput.body: holds U+0000"),
        (_edit(e2e_header=json.loads(_nested(MAX_JSON_DEPTH))), EditMessageInput,
         f"nested deeper than {MAX_JSON_DEPTH} levels"),
        (json.dumps({**IDS, "sender_id": IDS["editor_id"], "client_message_id": "c",
                     "body": "hi", "max_body_bytes": 2**63}), SendMessageInput,
         "SendMessageInput.max_body_bytes: the integer is outside the signed 64-bit range"),
        (_edit(e2e_header={"n": [1, -(2**63) - 1]}), EditMessageInput,
         "EditMessageInput.e2e_header.n[1]: the integer is outside the signed 64-bit range"),
        # Python's json reads NaN and Infinity (JSON itself has neither).
        (_edit(e2e_header={"t": float("nan")}), EditMessageInput,
         "EditMessageInput.e2e_header.t: expected a finite number, got nan"),
        (_edit(e2e_header={"t": float("-inf")}), EditMessageInput, "got -inf"),
    ],
)  # fmt: skip
def test_values_no_worker_can_store_are_refused_naming_where(
    raw: str, hint: type, named: str
) -> None:
    message = _refusal(raw, hint)
    assert named in message, message
    assert len(message) < 120  # a deep path is quoted shortened


def test_what_the_gateway_accepts_still_reads() -> None:
    # The gateway allows 32 levels per event: a header that deep, an emoji (a
    # surrogate pair in JSON), the extremes of 64 bits and a float all read.
    header = {"deep": json.loads(_nested(32)), "n": [2**63 - 1, -(2**63)], "f": 1.5}
    edit = _read(_edit(body="hi \U0001f600", e2e_header=header), EditMessageInput)
    assert edit.body == "hi \U0001f600"
    assert edit.e2e_header == header
    assert _read(_edit(e2e_header=json.loads(_nested(MAX_JSON_DEPTH - 1))), EditMessageInput)


def _notify(**options: object) -> str:
    created = datetime(2026, 1, 1, tzinfo=UTC).isoformat()
    message = {**IDS, "sender_id": IDS["editor_id"], "seq": 1, "created_at": created}
    return json.dumps({**message, "options": options})


@pytest.mark.parametrize(
    ("raw", "hint", "named"),
    [
        # Timers from the message's time: past ~10**11 s the timer or the date overflows.
        (_notify(grace_seconds=10**12), NotifyMessageInput,
         f"NotifyMessageInput.options.grace_seconds: must be between 0 and {MAX_NOTIFY_SECONDS}"),
        (_notify(email_deadline_seconds=0), NotifyMessageInput,
         "options.email_deadline_seconds: must be between 1 and"),
        (_notify(push_batch_size=0), NotifyMessageInput,
         "options.push_batch_size: must be between 1 and 1000, got 0"),
        (json.dumps({"conversation_id": IDS["conversation_id"], "settle_seconds": -1}),
         DataKeyRotationInput, "DataKeyRotationInput.settle_seconds: must be between 0 and 3600"),
        # A version of 0 made a data key numbered 0; one past 32 bits, a retried INSERT.
        (json.dumps({"conversation_id": IDS["conversation_id"], "to_version": 0}),
         DataKeyRotationInput, "DataKeyRotationInput.to_version: must be between 1 and"),
        (json.dumps({"conversation_id": IDS["conversation_id"], "chunk_size": 0}),
         DataKeyRotationInput, "DataKeyRotationInput.chunk_size: must be between 1 and 10000"),
        (json.dumps({"master_key_version": 2**31}), MasterKeyRotationInput,
         "MasterKeyRotationInput.master_key_version: must be between 1 and 2147483647"),
        (json.dumps({"chunk_size": -1}), RetentionInput,
         "RetentionInput.chunk_size: must be between 0 and 100000, got -1"),
        # A rebuild of batches of 0 swapped in an empty collection and dropped the index.
        (json.dumps({"batch_size": 0}), RebuildInput,
         "RebuildInput.batch_size: must be between 1 and 10000, got 0"),
    ],
)  # fmt: skip
def test_numbers_a_workflow_cannot_act_on_are_refused(raw: str, hint: type, named: str) -> None:
    message = _refusal(raw, hint)
    assert named in message, message


def test_the_settings_keep_the_notification_bounds_the_inputs_keep() -> None:
    with pytest.raises(ValidationError, match="notify_grace_seconds"):
        base_settings(notify_grace_seconds=MAX_NOTIFY_SECONDS + 1)
    assert base_settings(notify_grace_seconds=MAX_NOTIFY_SECONDS).notify_grace_seconds
