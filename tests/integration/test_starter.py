"""MissiveClient and ``python -m starter`` against the Temporal dev server and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from missive.config import Settings
from missive.constants import (
    EVENT_MESSAGE_NEW,
    EVENT_MESSAGE_RECEIPT,
    TASK_QUEUE_MESSAGES,
    conversation_room,
    message_id_for,
    message_workflow_id,
    user_room,
)
from missive.errors import (
    ConversationNotFound,
    DuplicateClientMessageId,
    InvalidInput,
    MessageNotVisible,
    NotAMember,
)
from missive.models import ConversationKind
from missive.schemas import LifecyclePhase
from missive.services.directory import NewUser
from missive.tokens import verify_token
from runtime.wiring import WORKFLOWS, Core, activity_methods, message_activities
from starter.client import MissiveClient, send_input
from tests.conftest import SESSION_KEYS
from workflows.message_lifecycle import MessageLifecycleWorkflow

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class RecordingEmitter:
    """Stands in for Socket.IO: remembers every emit."""

    events: list[tuple[str, Any, str | None]] = field(default_factory=list)
    _emitted: asyncio.Event = field(default_factory=asyncio.Event)

    async def emit(self, event: str, data: Any, *, room: str | None = None) -> None:
        self.events.append((event, data, room))
        self._emitted.set()

    async def wait_for(self, event: str, *, seconds: float = 10) -> list[tuple[Any, str | None]]:
        """The (data, room) of every ``event`` emitted so far, waiting for the first."""
        async with asyncio.timeout(seconds):
            while not (found := [(d, r) for e, d, r in self.events if e == event]):
                self._emitted.clear()
                await self._emitted.wait()
        return found


@pytest.fixture
def emitter() -> RecordingEmitter:
    return RecordingEmitter()


@pytest.fixture
async def missive(
    dev_env: WorkflowEnvironment, core: Core, settings: Settings, emitter: RecordingEmitter
) -> AsyncIterator[MissiveClient]:
    """A client over the dev server, with this test's worker polling the messages queue.

    The dev server is shared by the session: fresh users per test make fresh
    workflow ids, and the worker lives only as long as the test.
    """
    async with (
        Worker(
            dev_env.client,
            task_queue=TASK_QUEUE_MESSAGES,
            workflows=WORKFLOWS,
            activities=activity_methods(message_activities(core, emitter)),  # type: ignore[arg-type]
        ),
        MissiveClient(dev_env.client, settings, call_timeout=timedelta(seconds=20)) as client,
    ):
        yield client


async def _people(core: Core, n: int) -> list[str]:
    return [await core.directory.create_user(NewUser(handle=f"u{i}")) for i in range(n)]


async def _group(core: Core, members: list[str]) -> str:
    return await core.directory.create_conversation(kind=ConversationKind.GROUP, members=members)


async def _scalars(core: Core, sql: str, **params: object) -> list[Any]:
    async with core.engine.connect() as conn:
        return list((await conn.execute(text(sql), params)).scalars().all())


async def test_send_stores_the_message_and_broadcasts_it(
    missive: MissiveClient, core: Core, emitter: RecordingEmitter
) -> None:
    ana, ben, cy = await _people(core, 3)
    conv = await _group(core, [ana, ben, cy])

    sent = await missive.send(conv, ana, "c-1", "hello group")

    assert (sent.seq, sent.conversation_id, sent.duplicate) == (1, conv, False)
    assert sent.message_id == message_id_for(ana, "c-1")
    assert sent.created_at is not None
    assert await _scalars(core, "SELECT id::text FROM messages") == [sent.message_id]
    recipients = await _scalars(
        core,
        "SELECT recipient_id::text FROM deliveries WHERE message_id = :id",
        id=sent.message_id,
    )
    assert sorted(recipients) == sorted([ben, cy])

    [(data, room)] = await emitter.wait_for(EVENT_MESSAGE_NEW)
    assert room == conversation_room(conv)
    assert (data["message_id"], data["seq"], data["body"]) == (sent.message_id, 1, "hello group")


async def test_resend_is_a_duplicate_and_a_changed_body_is_refused(
    missive: MissiveClient, core: Core
) -> None:
    ana, ben = await _people(core, 2)
    conv = await _group(core, [ana, ben])
    first = await missive.send(conv, ana, "c-1", "hi")

    # Same sender and client id (even spelled in upper case): the same message.
    again = await missive.send(conv.upper(), ana.upper(), "c-1", "hi")
    assert again.duplicate and not first.duplicate
    assert (again.message_id, again.seq, again.created_at) == (
        first.message_id,
        first.seq,
        first.created_at,
    )

    with pytest.raises(DuplicateClientMessageId, match="already used"):
        await missive.send(conv, ana, "c-1", "something else")
    assert await _scalars(core, "SELECT count(*) FROM messages") == [1]
    assert (await core.messages.load(first.message_id)).body == "hi"


async def test_refusals_are_domain_errors_and_store_nothing(
    missive: MissiveClient, core: Core, dev_env: WorkflowEnvironment
) -> None:
    ana, ben, outsider = await _people(core, 3)
    conv = await _group(core, [ana, ben])

    with pytest.raises(NotAMember, match=f"user {outsider} is not a participant"):
        await missive.send(conv, outsider, "c-1", "let me in")
    assert await _scalars(core, "SELECT count(*) FROM messages") == [0]
    refused = await missive.status(outsider, "c-1")
    assert refused.phase is LifecyclePhase.REJECTED
    assert refused.error is not None and refused.error.startswith("NotAMember")
    # A refused send stored nothing: resending it is checked again, and once the
    # sender is a member the same client_message_id goes through.
    with pytest.raises(NotAMember):
        await missive.send(conv, outsider, "c-1", "let me in")
    await core.directory.add_participants(conv, [outsider])
    admitted = await missive.send(conv, outsider, "c-1", "let me in")
    assert (admitted.seq, admitted.duplicate) == (1, False)

    with pytest.raises(ConversationNotFound):
        await missive.send(str(uuid.uuid4()), ana, "c-2", "anyone?")

    # A malformed request is refused before anything starts.
    with pytest.raises(InvalidInput, match="conversation_id is not a valid UUID"):
        await missive.send("not-a-uuid", ana, "c-3", "hi")
    with pytest.raises(InvalidInput, match="body is empty"):
        await missive.send(conv, ana, "c-3", "  ")
    with pytest.raises(MessageNotVisible, match=message_workflow_id(ana, "c-3")):
        await missive.status(ana, "c-3")
    assert await _scalars(core, "SELECT count(*) FROM messages") == [1]

    unknown = str(uuid.uuid4())
    with pytest.raises(MessageNotVisible, match=f"message-{unknown}"):
        await missive.status_by_message_id(unknown)


async def test_receipts_move_forward_and_all_read_ends_the_lifecycle(
    missive: MissiveClient, core: Core, emitter: RecordingEmitter, dev_env: WorkflowEnvironment
) -> None:
    ana, ben, cy, outsider = await _people(core, 4)
    conv = await _group(core, [ana, ben, cy])
    sent = await missive.send(conv, ana, "c-1", "read me")

    read = await missive.mark_read(ben, conv, up_to_seq=1)
    assert (read.changed, read.up_to_seq, read.notified_lifecycles) == (1, 1, 1)
    assert (await missive.mark_read(ben, conv, up_to_seq=1)).changed == 0

    state = await missive.status(ana, "c-1")
    assert state.phase is LifecyclePhase.FOLLOWING_RECEIPTS
    assert (state.recipient_count, state.delivered_count, state.read_count) == (2, 1, 1)
    assert state.recipients[ben].status == "read" and state.recipients[ben].read_at is not None
    assert state.recipients[cy].status == "sent"
    assert await missive.status_by_message_id(sent.message_id) == state
    assert (EVENT_MESSAGE_RECEIPT, user_room(ana)) in {(e, r) for e, _, r in emitter.events}

    delivered = await missive.mark_delivered(cy, conv, message_id=sent.message_id)
    assert (delivered.changed, delivered.up_to_seq) == (1, 1)
    assert (await missive.mark_read(cy, conv, up_to_seq=1)).changed == 1

    lifecycle = dev_env.client.get_workflow_handle_for(
        MessageLifecycleWorkflow.run, message_workflow_id(ana, "c-1")
    )
    result = await asyncio.wait_for(lifecycle.result(), timeout=20)
    assert (result.phase, result.read_count, result.recipient_count) == (
        LifecyclePhase.ALL_READ,
        2,
        2,
    )
    final = await missive.status_by_message_id(sent.message_id)
    assert final.phase is LifecyclePhase.ALL_READ
    assert {r: s.status for r, s in final.recipients.items()} == {ben: "read", cy: "read"}
    assert await _scalars(
        core,
        "SELECT count(*) FROM deliveries WHERE message_id = :id AND status = 2",
        id=sent.message_id,
    ) == [2]

    # After the lifecycle closed, a resend is still answered with the stored ack.
    again = await missive.send(conv, ana, "c-1", "read me")
    assert again.duplicate and (again.message_id, again.created_at) == (
        sent.message_id,
        sent.created_at,
    )

    with pytest.raises(MessageNotVisible, match="has no message 5"):
        await missive.mark_read(ben, conv, up_to_seq=5)
    with pytest.raises(NotAMember):
        await missive.mark_delivered(outsider, conv, up_to_seq=1)
    with pytest.raises(InvalidInput, match="exactly one"):
        await missive.mark_read(ben, conv)


async def test_resend_of_a_closed_lifecycle_nobody_acked_is_answered_by_query(
    missive: MissiveClient,
    core: Core,
    settings: Settings,
    emitter: RecordingEmitter,
    dev_env: WorkflowEnvironment,
) -> None:
    ana, ben = await _people(core, 2)
    conv = await _group(core, [ana, ben])
    # Another sender started the lifecycle and never asked for the ack.
    lifecycle = await dev_env.client.start_workflow(
        MessageLifecycleWorkflow.run,
        send_input(
            settings, conversation_id=conv, sender_id=ana, client_message_id="c-1", body="hi"
        ),
        id=message_workflow_id(ana, "c-1"),
        task_queue=TASK_QUEUE_MESSAGES,
    )
    await emitter.wait_for(EVENT_MESSAGE_NEW)
    assert (await missive.mark_read(ben, conv, up_to_seq=1)).changed == 1
    assert (await asyncio.wait_for(lifecycle.result(), 20)).phase is LifecyclePhase.ALL_READ

    again = await missive.send(conv, ana, "c-1", "hi")
    assert (again.message_id, again.seq, again.duplicate) == (message_id_for(ana, "c-1"), 1, True)
    assert again.created_at is not None
    with pytest.raises(DuplicateClientMessageId):
        await missive.send(conv, ana, "c-1", "changed")


def _cli_env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "LOG_LEVEL"}}
    env.update({key.upper(): value for key, value in SESSION_KEYS.items()})
    env.update(overrides)
    return env


def _cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "starter", *args],
        cwd=ROOT,
        env=_cli_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )


async def _cli_async(*args: str, **env: str) -> tuple[int, str, str]:
    """Runs the CLI without blocking the loop, so this test's worker keeps running."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "starter",
        *args,
        cwd=ROOT,
        env=_cli_env(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def test_cli_token_is_accepted_by_the_gateway_check() -> None:
    user = str(uuid.uuid4())
    plain = _cli("token", user, "--ttl", "60")
    assert plain.returncode == 0, plain.stderr
    assert verify_token(SESSION_KEYS["gateway_secret"], plain.stdout.strip()) == user

    as_json = _cli("token", user, "--json")
    assert as_json.returncode == 0, as_json.stderr
    issued = json.loads(as_json.stdout)
    assert issued["user_id"] == user
    assert verify_token(SESSION_KEYS["gateway_secret"], issued["token"]) == user


def test_cli_refuses_a_malformed_request_in_one_line() -> None:
    done = _cli(
        "send", "--conversation", "nope", "--sender", str(uuid.uuid4()),
        "--client-id", "c-1", "--body", "hi",
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "error: InvalidInput: conversation_id is not a valid UUID: 'nope'"
    ]
    assert "Traceback" not in done.stderr and done.stdout == ""


def test_cli_names_an_unreachable_temporal_and_exits_1() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{sock.getsockname()[1]}"
    done = _cli("status", "--message", str(uuid.uuid4()), TEMPORAL_ADDRESS=address)
    assert done.returncode == 1
    [line] = done.stderr.splitlines()
    assert line.startswith("error: ProviderUnavailable: cannot reach Temporal at " + address)
    assert "Traceback" not in done.stderr


async def test_cli_send_status_and_refusal_end_to_end(
    missive: MissiveClient, core: Core, dev_env: WorkflowEnvironment
) -> None:
    ana, ben, outsider = await _people(core, 3)
    conv = await _group(core, [ana, ben])
    address = dev_env.client.service_client.config.target_host

    code, out, err = await _cli_async(
        "send", "--conversation", conv, "--sender", ana, "--client-id", "cli-1",
        "--body", "from the shell", "--json", TEMPORAL_ADDRESS=address,
    )  # fmt: skip
    assert code == 0, err
    sent = json.loads(out)
    assert (sent["message_id"], sent["seq"], sent["duplicate"]) == (
        message_id_for(ana, "cli-1"),
        1,
        False,
    )
    assert (await core.messages.load(sent["message_id"])).body == "from the shell"

    code, out, err = await _cli_async(
        "read", "--user", ben, "--conversation", conv, "--up-to", "1", "--json",
        TEMPORAL_ADDRESS=address,
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["changed"] == 1

    code, out, err = await _cli_async(
        "status", "--sender", ana, "--client-id", "cli-1", "--json", TEMPORAL_ADDRESS=address
    )
    assert code == 0, err
    assert json.loads(out)["phase"] == LifecyclePhase.ALL_READ

    code, out, err = await _cli_async(
        "send", "--conversation", conv, "--sender", outsider, "--client-id", "cli-2",
        "--body", "let me in", TEMPORAL_ADDRESS=address,
    )  # fmt: skip
    assert code == 2 and out == ""
    assert err.splitlines() == [
        f"error: NotAMember: user {outsider} is not a participant of conversation {conv}"
    ]
