"""Provisioning from a back-end service: users and conversations through MissiveClient and
``python -m starter``, on the Temporal dev server and PostgreSQL."""

from __future__ import annotations

import json
import uuid

import pytest
from sqlalchemy import text
from temporalio.testing import WorkflowEnvironment

from missive.constants import (
    EVENT_CONVERSATION_MEMBER_ADDED,
    EVENT_CONVERSATION_MEMBER_REMOVED,
    EVENT_MESSAGE_DELETED,
    conversation_room,
    user_room,
)
from missive.errors import InvalidInput, NotAllowed, UserNotFound
from runtime.wiring import Core
from starter.client import MissiveClient
from tests.integration.test_starter import (
    RecordingEmitter,
    emitter,  # noqa: F401  (a fixture)
    missive,  # noqa: F401  (a fixture)
)
from tests.integration.test_starter import (
    _cli_async as _starter,
)

pytestmark = pytest.mark.integration


async def _row(core: Core, sql: str, **params: object) -> dict[str, object]:
    async with core.engine.connect() as conn:
        return dict((await conn.execute(text(sql), params)).mappings().one())


async def test_a_service_creates_and_updates_users(missive: MissiveClient, core: Core) -> None:  # noqa: F811
    ours = f"crm-{uuid.uuid4().hex[:8]}"
    ana = await missive.create_user(
        "ana", display_name="Ana", email="ana@example.com", timezone="Europe/Lisbon",
        client_user_id=ours,
    )  # fmt: skip
    assert (ana.created, ana.handle, ana.locale) == (True, "ana", "en")
    again = await missive.create_user("ana", client_user_id=ours)  # a retry
    assert (again.user_id, again.created, again.email) == (ana.user_id, False, "ana@example.com")

    changed = await missive.update_user(
        ana.user_id, phone="+351912345678", locale="pt-PT", display_name="Ana S."
    )
    assert (changed.phone, changed.locale, changed.display_name) == (
        "+351912345678",
        "pt-PT",
        "Ana S.",
    )
    cleared = await missive.update_user(ana.user_id, email="")
    assert cleared.email is None
    stored = await _row(
        core, "SELECT email, phone, timezone, locale FROM users WHERE id = :u", u=ana.user_id
    )
    assert stored == {
        "email": None,
        "phone": "+351912345678",
        "timezone": "Europe/Lisbon",
        "locale": "pt-PT",
    }

    with pytest.raises(InvalidInput, match="handle 'ana' is taken"):
        await missive.create_user("ana")
    with pytest.raises(InvalidInput, match="timezone 'Mars/Olympus' does not exist"):
        await missive.update_user(ana.user_id, timezone="Mars/Olympus")
    with pytest.raises(InvalidInput, match=r"is not E\.164"):
        await missive.update_user(ana.user_id, phone="12345")
    with pytest.raises(InvalidInput, match="unknown user field nickname"):
        await missive.update_user(ana.user_id, nickname="x")
    with pytest.raises(UserNotFound):
        await missive.update_user(str(uuid.uuid4()), locale="en")
    assert await _row(core, "SELECT count(*) AS n FROM users") == {"n": 1}


async def test_a_service_manages_a_conversation_and_its_members(
    missive: MissiveClient,  # noqa: F811
    core: Core,
    emitter: RecordingEmitter,  # noqa: F811
) -> None:
    ana, ben, cy = [(await missive.create_user(h)).user_id for h in ("ana", "ben", "cy")]
    made = await missive.create_conversation(
        "group", [ana, ben], title="ops", client_conversation_id="ops-1"
    )
    again = await missive.create_conversation(
        "group", [ana, ben], title="ops", client_conversation_id="ops-1"
    )
    assert (made.created, again.created) == (True, False)
    cid = made.conversation.conversation_id
    assert again.conversation.conversation_id == cid
    roles = await _row(
        core,
        "SELECT string_agg(role::text, ',' ORDER BY role) AS roles FROM participants"
        " WHERE conversation_id = :c",
        c=cid,
    )
    assert roles == {"roles": "owner,member"}  # the first member owns it

    added = await missive.add_members(cid, [cy])
    assert (added.added, added.conversation.member_count) == ([cy], 3)
    (_, room), *_ = await emitter.wait_for(EVENT_CONVERSATION_MEMBER_ADDED)
    assert room == conversation_room(cid)
    with pytest.raises(NotAllowed, match="only an owner or admin"):
        await missive.remove_member(cid, ana, actor_id=cy)
    removed = await missive.remove_member(cid, cy)
    assert removed.removed == [cy]
    told = await emitter.wait_for(EVENT_CONVERSATION_MEMBER_REMOVED)
    assert {r for _, r in told} == {user_room(cy), conversation_room(cid)}

    sent = await missive.send(cid, ben, "b-1", "oops, wrong chat")
    deleted = await missive.delete_message(cid, sent.message_id)
    assert deleted.changed is True
    assert (await emitter.wait_for(EVENT_MESSAGE_DELETED))[0][0]["message_id"] == sent.message_id
    body = await _row(
        core, "SELECT length(body_ciphertext) AS n FROM messages WHERE id = :m", m=sent.message_id
    )
    assert body == {"n": 0}


async def test_the_cli_provisions_users_and_conversations(
    missive: MissiveClient,  # noqa: F811
    dev_env: WorkflowEnvironment,
) -> None:
    address = dev_env.client.service_client.config.target_host

    async def _cli_async(*args: str) -> tuple[int, str, str]:
        return await _starter(*args, TEMPORAL_ADDRESS=address)

    code, out, err = await _cli_async(
        "users", "create", "--handle", "dora", "--email", "d@example.com", "--json"
    )
    assert code == 0, err
    dora = json.loads(out)
    assert (dora["handle"], dora["email"], dora["created"]) == ("dora", "d@example.com", True)
    code, out, err = await _cli_async("users", "create", "--handle", "eli")
    assert code == 0, err
    assert out.startswith("user ") and "created: @eli" in out
    eli = out.split()[1]
    code, out, err = await _cli_async("users", "update", eli, "--timezone", "Asia/Tokyo")
    assert (code, "Asia/Tokyo" in out) == (0, True), err

    code, out, err = await _cli_async(
        "conversations",
        "create",
        "--kind",
        "direct",
        "--member",
        dora["user_id"],
        "--member",
        eli,
        "--json",
    )
    assert code == 0, err
    direct = json.loads(out)
    assert (direct["created"], direct["conversation"]["member_count"]) == (True, 2)
    cid = direct["conversation"]["conversation_id"]
    code, out, err = await _cli_async("conversations", "add", cid, "--user", dora["user_id"])
    assert code == 2
    assert err.splitlines() == [
        "error: NotAllowed: a direct conversation's members do not change: create a group instead"
    ]
    code, out, err = await _cli_async("users", "update", eli, "--handle", "dora")
    assert (code, err.strip()) == (2, "error: InvalidInput: handle 'dora' is taken")
