"""End-to-end encrypted conversations through the gateway, with real Socket.IO clients."""

from __future__ import annotations

import base64
import os
import uuid
from collections.abc import Awaitable, Callable

import pytest
from sqlalchemy import text

from missive.constants import EVENT_MESSAGE_NEW, EVENT_MESSAGE_SEND
from missive.models import ConversationKind, EncryptionMode
from missive.services.directory import NewUser
from runtime.wiring import Core
from tests.integration.test_gateway import (  # noqa: F401 (fixtures)
    Peer,
    RunningGateway,
    connect,
    gateway,
)

pytestmark = pytest.mark.integration


async def _people(core: Core, n: int) -> list[str]:
    return [
        await core.directory.create_user(NewUser(handle=f"e{i}-{uuid.uuid4().hex[:6]}"))
        for i in range(n)
    ]


async def test_e2e_ciphertext_is_stored_and_relayed_untouched(
    gateway: RunningGateway,  # noqa: F811
    core: Core,
    connect: Callable[[str], Awaitable[Peer]],  # noqa: F811
) -> None:
    ana, ben = await _people(core, 2)
    secret = await core.directory.create_conversation(
        kind=ConversationKind.DIRECT, members=[ana, ben], encryption_mode=EncryptionMode.E2E
    )
    plain = await core.directory.create_conversation(
        kind=ConversationKind.DIRECT, members=[ana, ben]
    )
    a, b = await connect(ana), await connect(ben)
    ciphertext = base64.b64encode(os.urandom(48)).decode()
    header = {"alg": "x25519-aes256gcm", "key_id": "ana-device-1", "wrapped": {"ben": "AAEC"}}

    sent = await a.call(
        EVENT_MESSAGE_SEND,
        {
            "conversation_id": secret,
            "client_message_id": "e2e-1",
            "body": ciphertext,
            "e2e_header": header,
        },
    )
    assert sent["ok"] is True, sent
    new = await b.next(EVENT_MESSAGE_NEW)
    assert (new["message_id"], new["body"], new["e2e_header"]) == (
        sent["message_id"],
        ciphertext,
        header,
    )
    async with core.engine.connect() as conn:
        row = (
            await conn.execute(
                text("SELECT e2e_header, body_ciphertext FROM messages WHERE id = :m"),
                {"m": sent["message_id"]},
            )
        ).one()
    assert row.e2e_header == header
    # Still wrapped at rest: the client's ciphertext is not in the row either.
    assert base64.b64decode(ciphertext) not in row.body_ciphertext
    assert ciphertext.encode() not in row.body_ciphertext

    # Missing metadata, metadata where it does not belong, a body that is not ciphertext.
    cases = [
        (
            {"conversation_id": secret, "client_message_id": "e2e-2", "body": ciphertext},
            "e2e_header is required",
        ),
        (
            {
                "conversation_id": plain,
                "client_message_id": "e2e-3",
                "body": "hello",
                "e2e_header": header,
            },
            "e2e_header is only accepted",
        ),
        (
            {
                "conversation_id": secret,
                "client_message_id": "e2e-4",
                "body": "hello in clear",
                "e2e_header": header,
            },
            "body must be the base64 ciphertext",
        ),
        (
            {
                "conversation_id": secret,
                "client_message_id": "e2e-5",
                "body": ciphertext,
                "e2e_header": "ana-device-1",
            },
            "e2e_header must be a non-empty object",
        ),
    ]
    for payload, reason in cases:
        ack = await a.call(EVENT_MESSAGE_SEND, payload)
        assert ack["ok"] is False, (payload, ack)
        assert ack["error"]["type"] == "InvalidInput" and reason in ack["error"]["message"], ack

    # A standard message's event carries no e2e_header at all.
    ok = await a.call(
        EVENT_MESSAGE_SEND, {"conversation_id": plain, "client_message_id": "p-1", "body": "hi"}
    )
    assert ok["ok"] is True, ok
    plain_new = await b.next(EVENT_MESSAGE_NEW)
    assert plain_new["body"] == "hi" and "e2e_header" not in plain_new
