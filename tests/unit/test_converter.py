"""The strict payload converter: JSON no worker can store or act on is refused by name."""

from __future__ import annotations

import json
from typing import Any

import pytest
from temporalio.api.common.v1 import Payload
from temporalio.exceptions import ApplicationError

from missive.schemas import EditMessageInput, MembershipInput, SendMessageInput, UserProfileInput
from runtime.converter import MAX_JSON_DEPTH, StrictPayloadConverter

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
    assert len(message) < 200


def test_what_the_gateway_accepts_still_reads() -> None:
    # The gateway allows 32 levels per event: a header that deep, an emoji (a
    # surrogate pair in JSON), the extremes of 64 bits and a float all read.
    header = {"deep": json.loads(_nested(32)), "n": [2**63 - 1, -(2**63)], "f": 1.5}
    edit = _read(_edit(body="hi \U0001f600", e2e_header=header), EditMessageInput)
    assert edit.body == "hi \U0001f600"
    assert edit.e2e_header == header
    assert _read(_edit(e2e_header=json.loads(_nested(MAX_JSON_DEPTH - 1))), EditMessageInput)
