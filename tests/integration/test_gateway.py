"""The gateway end to end: uvicorn, real Socket.IO clients, PostgreSQL, Temporal dev server."""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
import socketio
import uvicorn
from sqlalchemy import text
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment

from gateway import create_app
from gateway.app import GatewayApp
from missive.config import Settings
from missive.constants import (
    EVENT_DEVICE_REGISTER,
    EVENT_DEVICE_UNREGISTER,
    EVENT_MESSAGE_DELIVERED,
    EVENT_MESSAGE_NEW,
    EVENT_MESSAGE_READ,
    EVENT_MESSAGE_RECEIPT,
    EVENT_MESSAGE_SEND,
    EVENT_NOTIFICATION_LIST,
    EVENT_NOTIFICATION_PREFERENCES,
    message_workflow_id,
)
from missive.models import ConversationKind
from missive.schemas import LifecyclePhase
from missive.services.directory import NewUser
from missive.tokens import issue_token
from runtime.wiring import Core
from tests.conftest import ROOT, base_settings, free_port, process_env
from workflows.message_lifecycle import MessageLifecycleWorkflow

pytestmark = pytest.mark.integration

WAIT = 15.0
"""Upper bound for anything the gateway should answer in milliseconds."""

QUIET = 0.5
"""How long we listen for events that must not come."""


@dataclass
class RunningGateway:
    """A gateway served by uvicorn on a free local port."""

    url: str
    app: GatewayApp
    settings: Settings


@dataclass
class Peer:
    """One connected Socket.IO client and everything it was sent."""

    user_id: str
    client: socketio.AsyncClient
    inbox: dict[str, asyncio.Queue[dict[str, Any]]] = field(
        default_factory=lambda: defaultdict(asyncio.Queue)
    )

    async def call(self, event: str, data: object = None) -> dict[str, Any]:
        """Emits an event and returns the gateway's ack."""
        if data is None:
            return await self.client.call(event, timeout=WAIT)
        return await self.client.call(event, data, timeout=WAIT)

    async def next(self, event: str) -> dict[str, Any]:
        """The next ``event`` this client receives."""
        return await asyncio.wait_for(self.inbox[event].get(), WAIT)

    def received(self, event: str) -> list[dict[str, Any]]:
        """Every ``event`` received and not yet taken, without waiting."""
        queue, found = self.inbox[event], []
        while not queue.empty():
            found.append(queue.get_nowait())
        return found


def _temporal_address(dev_env: WorkflowEnvironment) -> str:
    return dev_env.client.service_client.config.target_host


@asynccontextmanager
async def serve_gateway(gateway_settings: Settings) -> AsyncIterator[RunningGateway]:
    """create_app() under uvicorn (lifespan on) on a free local port."""
    app = create_app(gateway_settings)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, lifespan="on", log_config=None, access_log=False))

    async def serve() -> None:
        try:
            await server.serve(sockets=[sock])
        except SystemExit:  # uvicorn's answer to a failed startup
            raise RuntimeError(f"gateway did not start: {app.startup_error}") from None

    task = asyncio.create_task(serve())
    try:
        async with asyncio.timeout(60):
            while not server.started:
                if task.done():
                    task.result()
                await asyncio.sleep(0.02)
        yield RunningGateway(f"http://127.0.0.1:{port}", app, gateway_settings)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 60)
        sock.close()


def gateway_settings(
    settings: Settings, dev_env: WorkflowEnvironment, **overrides: object
) -> Settings:
    """The test's settings for a gateway on the dev server."""
    return base_settings(
        database_url=settings.database_url,
        temporal_address=_temporal_address(dev_env),
        graceful_shutdown_seconds=2,
        **overrides,
    )


@pytest.fixture
async def gateway(
    settings: Settings, dev_env: WorkflowEnvironment
) -> AsyncIterator[RunningGateway]:
    """create_app() under uvicorn (lifespan on), against the test's database."""
    async with serve_gateway(gateway_settings(settings, dev_env)) as running:
        yield running


async def open_peer(gateway: RunningGateway, user_id: str) -> Peer:
    """A client connected as ``user_id`` (a fresh token) that records what it is sent."""
    peer = Peer(user_id, socketio.AsyncClient(reconnection=False))
    for event in (EVENT_MESSAGE_NEW, EVENT_MESSAGE_RECEIPT):
        peer.client.on(event, peer.inbox[event].put_nowait)
    token = issue_token(gateway.settings.gateway_secret, user_id, ttl_seconds=60)
    await peer.client.connect(
        gateway.url, auth={"token": token}, transports=["websocket"], wait_timeout=WAIT
    )
    return peer


@pytest.fixture
async def connect(gateway: RunningGateway) -> AsyncIterator[Callable[[str], Awaitable[Peer]]]:
    """Connects a client as a user (with a fresh token); all are closed at teardown."""
    peers: list[Peer] = []

    async def _connect(user_id: str) -> Peer:
        peer = await open_peer(gateway, user_id)
        peers.append(peer)
        return peer

    yield _connect
    for peer in peers:
        await peer.client.disconnect()


async def _people(core: Core, n: int) -> list[str]:
    return [
        await core.directory.create_user(NewUser(handle=f"u{i}-{uuid.uuid4().hex[:6]}"))
        for i in range(n)
    ]


async def _conversation(core: Core, *members: str) -> str:
    return await core.directory.create_conversation(
        kind=ConversationKind.GROUP, members=list(members)
    )


async def _scalar(core: Core, sql: str, **params: object) -> Any:
    async with core.engine.connect() as conn:
        return (await conn.execute(text(sql), params)).scalar_one()


def _send(conversation_id: str, client_message_id: str, body: str) -> dict[str, str]:
    return {
        "conversation_id": conversation_id,
        "client_message_id": client_message_id,
        "body": body,
    }


def _refused(ack: dict[str, Any], type: str, match: str) -> None:
    assert ack["ok"] is False, ack
    assert ack["error"]["type"] == type, ack
    assert match in ack["error"]["message"], ack


async def test_connections_without_a_valid_token_are_refused(gateway: RunningGateway) -> None:
    secret = gateway.settings.gateway_secret
    user = str(uuid.uuid4())
    cases: list[tuple[dict[str, Any] | None, str]] = [
        (None, "token missing"),
        ({}, "token missing"),
        ({"token": "not-a-token"}, "token malformed"),
        ({"token": issue_token("another secret", user, ttl_seconds=60)}, "signature invalid"),
        (
            {"token": issue_token(secret, user, ttl_seconds=60, now=time.time() - 3600)},
            "token expired",
        ),
        ({"token": issue_token(secret, user, ttl_seconds=60)}, "unknown user"),
    ]
    for auth, reason in cases:
        client = socketio.AsyncClient(reconnection=False)
        refusals: list[Any] = []
        client.on("connect_error", refusals.append)
        with pytest.raises(socketio.exceptions.ConnectionError):
            await client.connect(
                gateway.url, auth=auth, transports=["websocket"], wait_timeout=WAIT
            )
        assert refusals and reason in refusals[-1]["message"], (auth, refusals)

    async with aiohttp.ClientSession() as http:
        async with http.get(f"{gateway.url}/healthz") as response:
            assert response.status == 200
            assert await response.json() == {"status": "ok"}
        async with http.get(f"{gateway.url}/elsewhere") as response:
            assert response.status == 404


async def test_send_receive_read_and_resend(
    gateway: RunningGateway,
    core: Core,
    dev_env: WorkflowEnvironment,
    connect: Callable[[str], Awaitable[Peer]],
) -> None:
    ana, ben, cy = await _people(core, 3)
    conversation = await _conversation(core, ana, ben)
    await _conversation(core, ben, cy)  # cy is connected, but not in `conversation`
    a, b, c = await connect(ana), await connect(ben), await connect(cy)

    # The sender is whoever the token names, whatever the payload claims.
    spoofed = {**_send(conversation, "m-1", "hello ben"), "sender_id": ben}
    sent = await a.call(EVENT_MESSAGE_SEND, spoofed)
    assert sent["ok"] is True, sent
    assert (sent["seq"], sent["duplicate"]) == (1, False)
    new = await b.next(EVENT_MESSAGE_NEW)
    assert new["message_id"] == sent["message_id"]
    assert (new["body"], new["seq"], new["sender_id"]) == ("hello ben", 1, ana)
    assert new["event_id"] and new["created_at"] == sent["created_at"]

    read = await b.call(EVENT_MESSAGE_READ, {"conversation_id": conversation, "up_to_seq": 1})
    assert read == {"ok": True, "changed": 1, "up_to_seq": 1}
    receipt = await a.next(EVENT_MESSAGE_RECEIPT)
    assert receipt["message_id"] == sent["message_id"]
    assert (receipt["status"], receipt["recipient_id"], receipt["read_count"]) == ("read", ben, 1)
    status = await _scalar(
        core,
        "SELECT status FROM deliveries WHERE message_id = :m AND recipient_id = :r",
        m=sent["message_id"],
        r=ben,
    )
    assert status == 2  # read

    # Everyone has read it, so its lifecycle ends; a resend then meets a closed workflow.
    lifecycle = dev_env.client.get_workflow_handle_for(
        MessageLifecycleWorkflow.run, message_workflow_id(ana, "m-1")
    )
    assert (await asyncio.wait_for(lifecycle.result(), WAIT)).phase is LifecyclePhase.ALL_READ
    again = await a.call(EVENT_MESSAGE_SEND, _send(conversation, "m-1", "hello ben"))
    assert again == {**sent, "duplicate": True}
    reused = await a.call(EVENT_MESSAGE_SEND, _send(conversation, "m-1", "something else"))
    _refused(reused, "DuplicateClientMessageId", "already used")

    # A second message, unread: a resend joins its still-running lifecycle.
    second = await a.call(EVENT_MESSAGE_SEND, _send(conversation, "m-2", "still there?"))
    assert (second["ok"], second["seq"], second["duplicate"]) == (True, 2, False)
    assert (await b.next(EVENT_MESSAGE_NEW))["seq"] == 2
    again = await a.call(EVENT_MESSAGE_SEND, _send(conversation, "m-2", "still there?"))
    assert again == {**second, "duplicate": True}
    reused = await a.call(EVENT_MESSAGE_SEND, _send(conversation, "m-2", "changed my mind"))
    _refused(reused, "DuplicateClientMessageId", "already used")

    delivered = await b.call(
        EVENT_MESSAGE_DELIVERED,
        {"conversation_id": conversation, "message_id": second["message_id"]},
    )
    assert delivered == {"ok": True, "changed": 1, "up_to_seq": 2}
    receipt = await a.next(EVENT_MESSAGE_RECEIPT)
    assert (receipt["message_id"], receipt["status"]) == (second["message_id"], "delivered")

    await asyncio.sleep(QUIET)
    repeats = b.received(EVENT_MESSAGE_NEW)
    assert {e["message_id"] for e in repeats} <= {sent["message_id"], second["message_id"]}
    assert not c.received(EVENT_MESSAGE_NEW) and not c.received(EVENT_MESSAGE_RECEIPT)
    assert not b.received(EVENT_MESSAGE_RECEIPT)  # receipts go to the sender only
    assert await _scalar(core, "SELECT count(*) FROM messages") == 2


async def test_bad_sends_are_refused_and_write_nothing(
    gateway: RunningGateway,
    core: Core,
    dev_env: WorkflowEnvironment,
    connect: Callable[[str], Awaitable[Peer]],
) -> None:
    ana, ben, cy = await _people(core, 3)
    mine = await _conversation(core, ana, ben)
    theirs = await _conversation(core, ben, cy)
    a, b = await connect(ana), await connect(ben)
    too_long = "x" * (gateway.settings.max_body_bytes + 1)

    shape_errors: list[tuple[object, str, str]] = [
        (_send(mine, "empty", "  "), "InvalidInput", "body is empty"),
        (_send(mine, "long", too_long), "InvalidInput", "over the limit"),
        (_send("not-a-uuid", "bad-conv", "hi"), "InvalidInput", "conversation_id"),
        (_send(mine, "", "hi"), "InvalidInput", "client_message_id"),
        ({"conversation_id": mine, "client_message_id": "no-body"}, "InvalidInput", "body"),
        ("just text", "InvalidInput", "must be an object"),
        (None, "InvalidInput", "must be an object"),
    ]
    for payload, type, match in shape_errors:
        _refused(await a.call(EVENT_MESSAGE_SEND, payload), type, match)
    for client_message_id in ("empty", "long", "bad-conv", "no-body"):
        handle = dev_env.client.get_workflow_handle(message_workflow_id(ana, client_message_id))
        with pytest.raises(RPCError) as missing:
            await handle.describe()
        assert missing.value.status is RPCStatusCode.NOT_FOUND  # no workflow was started

    not_member = _send(theirs, "theirs", "let me in")
    _refused(await a.call(EVENT_MESSAGE_SEND, not_member), "NotAMember", "not a participant")
    # The same send again is answered from the closed (rejected) lifecycle.
    _refused(await a.call(EVENT_MESSAGE_SEND, not_member), "NotAMember", "not a participant")
    nowhere = _send(str(uuid.uuid4()), "nowhere", "anyone?")
    _refused(await a.call(EVENT_MESSAGE_SEND, nowhere), "ConversationNotFound", "does not exist")

    await asyncio.sleep(QUIET)
    assert await _scalar(core, "SELECT count(*) FROM messages") == 0
    assert await _scalar(core, "SELECT count(*) FROM deliveries") == 0
    assert not b.received(EVENT_MESSAGE_NEW)


async def test_receipts_are_refused_outside_ones_conversations(
    gateway: RunningGateway, core: Core, connect: Callable[[str], Awaitable[Peer]]
) -> None:
    ana, ben, cy = await _people(core, 3)
    conversation = await _conversation(core, ana, ben)
    a, b, c = await connect(ana), await connect(ben), await connect(cy)
    sent = await a.call(EVENT_MESSAGE_SEND, _send(conversation, "m-1", "for ben only"))
    assert sent["ok"] is True, sent
    await b.next(EVENT_MESSAGE_NEW)

    by_seq = {"conversation_id": conversation, "up_to_seq": 1}
    by_id = {"conversation_id": conversation, "message_id": sent["message_id"]}
    _refused(await c.call(EVENT_MESSAGE_READ, by_seq), "NotAMember", "")
    _refused(await c.call(EVENT_MESSAGE_DELIVERED, by_id), "NotAMember", "")
    unknown = {"conversation_id": conversation, "message_id": str(uuid.uuid4())}
    _refused(await b.call(EVENT_MESSAGE_READ, unknown), "MessageNotVisible", "")
    both = {**by_seq, "message_id": sent["message_id"]}
    _refused(await b.call(EVENT_MESSAGE_READ, both), "InvalidInput", "exactly one")
    _refused(
        await b.call(EVENT_MESSAGE_READ, {**by_seq, "up_to_seq": 0}), "InvalidInput", "up_to_seq"
    )
    _refused(await b.call(EVENT_MESSAGE_READ, {"up_to_seq": 1}), "InvalidInput", "conversation_id")

    await asyncio.sleep(QUIET)
    assert not a.received(EVENT_MESSAGE_RECEIPT)
    status = await _scalar(core, "SELECT status FROM deliveries WHERE recipient_id = :r", r=ben)
    assert status == 0  # still only sent


async def test_notification_settings_devices_and_the_bell_over_the_socket(
    gateway: RunningGateway, core: Core, connect: Callable[[str], Awaitable[Peer]]
) -> None:
    ana, ben, cy = await _people(core, 3)
    ours = await _conversation(core, ana, ben)
    theirs = await _conversation(core, ben, cy)
    a = await connect(ana)
    prefs = EVENT_NOTIFICATION_PREFERENCES
    defaults = {
        "in_app": True,
        "push": True,
        "email": True,
        "sms": False,
        "mentions_only": False,
        "quiet_start": None,
        "quiet_end": None,
        "quiet_mentions": False,
    }
    assert await a.call(prefs, {}) == {"ok": True, "preferences": defaults}

    # One call changes only the fields it names, and the timezone.
    night = {"sms": True, "quiet_start": "22:00", "quiet_end": "07:00"}
    changed = await a.call(prefs, {"set": night, "timezone": "Europe/Paris"})
    assert changed == {
        "ok": True,
        "preferences": {**defaults, **night},
        "timezone": "Europe/Paris",
    }
    assert await a.call(prefs) == {"ok": True, "preferences": {**defaults, **night}}
    timezone = "SELECT timezone FROM users WHERE id = :u"
    assert await _scalar(core, timezone, u=ana) == "Europe/Paris"

    refusals: list[tuple[object, str, str]] = [
        ({"set": {"loud": True}}, "InvalidInput", "unknown preference loud"),
        ({"set": {"push": "yes"}}, "InvalidInput", "push must be true or false"),
        ({"set": {"quiet_start": "25:00"}}, "InvalidInput", "quiet_start"),
        ({"set": {"quiet_end": None}}, "InvalidInput", "both quiet_start and quiet_end"),
        ({"set": ["push"]}, "InvalidInput", "set must be an object"),
        ({"timezone": "Mars/Olympus"}, "InvalidInput", "'Mars/Olympus' does not exist"),
        # Checked before anything is stored: the good timezone is not kept either.
        ({"timezone": "Asia/Tokyo", "set": {"loud": True}}, "InvalidInput", "loud"),
        ({"conversation": ours, "set": {"muted": True}}, "InvalidInput", "conversation"),
        ({"conversation_id": ours, "timezone": "UTC"}, "InvalidInput", "timezone"),
        ({"conversation_id": ours, "set": {"quiet_start": "22:00"}}, "InvalidInput", "muted"),
        ({"conversation_id": ours, "set": {"push": 1}}, "InvalidInput", "push must be"),
        ({"conversation_id": theirs}, "NotAMember", "not a participant"),
        ({"conversation_id": "nope"}, "InvalidInput", "conversation_id"),
        ("all", "InvalidInput", "must be an object"),
    ]
    for payload, type, match in refusals:
        _refused(await a.call(prefs, payload), type, match)
    assert await a.call(prefs, {}) == {"ok": True, "preferences": {**defaults, **night}}
    assert await _scalar(core, timezone, u=ana) == "Europe/Paris"

    inherit = {"muted": False, "mentions_only": None, "in_app": None, "push": None}
    inherit |= {"email": None, "sms": None}
    assert await a.call(prefs, {"conversation_id": ours}) == {
        "ok": True,
        "conversation_id": ours,
        "preferences": inherit,
    }
    muted = await a.call(prefs, {"conversation_id": ours, "set": {"muted": True, "push": False}})
    assert muted["preferences"] == {**inherit, "muted": True, "push": False}, muted
    again = await a.call(prefs, {"conversation_id": ours, "set": {"push": None}})
    assert again["preferences"] == {**inherit, "muted": True}, again

    device = await a.call(EVENT_DEVICE_REGISTER, {"platform": "ios", "token": "tok-1"})
    assert device["ok"] is True and uuid.UUID(device["device_id"]), device
    assert await a.call(EVENT_DEVICE_REGISTER, {"platform": "ios", "token": "tok-1"}) == device
    for payload, match in [
        ({"platform": "blackberry", "token": "tok-2"}, "platform must be one of"),
        ({"token": "tok-2"}, "platform must be one of"),
        ({"platform": "web", "token": "has space"}, "malformed"),
        ({"platform": "web"}, "push token must be a string"),
    ]:
        _refused(await a.call(EVENT_DEVICE_REGISTER, payload), "InvalidInput", match)
    devices = "SELECT count(*) FROM devices WHERE user_id = :u"
    assert await _scalar(core, devices, u=ana) == 1
    gone = await a.call(EVENT_DEVICE_UNREGISTER, {"token": "tok-1"})
    assert gone == {"ok": True, "removed": True}
    gone = await a.call(EVENT_DEVICE_UNREGISTER, {"token": "tok-1"})
    assert gone == {"ok": True, "removed": False}
    assert await _scalar(core, devices, u=ana) == 0

    empty = {"ok": True, "unread_count": 0, "notifications": []}
    assert await a.call(EVENT_NOTIFICATION_LIST) == empty
    assert await a.call(EVENT_NOTIFICATION_LIST, {"limit": 100, "unread_only": True}) == empty
    for payload, match in [
        ({"limit": 0}, "between 1 and 100"),
        ({"limit": 101}, "between 1 and 100"),
        ({"limit": "5"}, "limit must be an integer"),
        ({"limit": True}, "limit must be an integer"),
        ({"unread_only": "yes"}, "unread_only must be true or false"),
    ]:
        _refused(await a.call(EVENT_NOTIFICATION_LIST, payload), "InvalidInput", match)


async def test_a_failed_lifespan_startup_names_the_unreachable_server(settings: Settings) -> None:
    app = create_app(base_settings(database_url=settings.database_url, temporal_address=_closed()))
    server = uvicorn.Server(uvicorn.Config(app, port=0, lifespan="on", log_config=None))
    # Not wait_for: a SystemExit must not leave a task of its own (it would stop the loop).
    with pytest.raises(SystemExit):
        async with asyncio.timeout(60):
            await server.serve()
    assert "cannot reach Temporal" in str(app.startup_error)
    assert not app.gateway.healthy


def _closed() -> str:
    """host:port where nothing listens."""
    return f"127.0.0.1:{free_port()}"


_environment = process_env


async def _run_main(env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def test_main_says_one_line_when_a_dependency_is_unreachable(
    settings: Settings, dev_env: WorkflowEnvironment
) -> None:
    closed = _closed()
    cases = [
        (
            _environment(DATABASE_URL=f"postgresql://u:p@{closed}/missive"),
            "cannot reach PostgreSQL",
        ),
        (
            _environment(DATABASE_URL=str(settings.database_url), TEMPORAL_ADDRESS=closed),
            "cannot reach Temporal",
        ),
    ]
    for env, message in cases:
        process = await _run_main(env)
        _, stderr = await asyncio.wait_for(process.communicate(), 60)
        lines = stderr.decode().strip().splitlines()
        assert process.returncode == 1, lines
        assert len(lines) == 1 and message in lines[0], lines


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
async def test_main_serves_until_a_signal_then_exits_cleanly(
    settings: Settings, core: Core, dev_env: WorkflowEnvironment, stop_signal: signal.Signals
) -> None:
    port = free_port()
    process = await _run_main(
        _environment(
            DATABASE_URL=str(settings.database_url),
            TEMPORAL_ADDRESS=_temporal_address(dev_env),
            GATEWAY_PORT=str(port),
            GRACEFUL_SHUTDOWN_SECONDS="2",
        )
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http, asyncio.timeout(60):
            while True:
                try:
                    async with http.get(f"{url}/healthz") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                assert process.returncode is None, "python -m gateway exited early"
                await asyncio.sleep(0.1)
        ana, ben = await _people(core, 2)
        conversation = await _conversation(core, ana, ben)
        client = socketio.AsyncClient(reconnection=False)
        token = issue_token(settings.gateway_secret, ana, ttl_seconds=60)
        await client.connect(url, auth={"token": token}, transports=["websocket"])
        ack = await client.call(EVENT_MESSAGE_SEND, _send(conversation, "m", "hi"), timeout=WAIT)
        await client.disconnect()
        assert ack["ok"] is True and ack["seq"] == 1, ack
    finally:
        process.send_signal(stop_signal)
        _, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, stderr.decode()
    assert b"Traceback" not in stderr, stderr.decode()
