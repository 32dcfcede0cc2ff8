"""Malformed transport input over real sockets: every event that asked for an ack gets one,
and a socket sending nothing else is read at its pace like any other.

Real Socket.IO clients where they can produce the input, else a raw WebSocket
(aiohttp) speaking Engine.IO 4 / Socket.IO 5 by hand: ``0{...}`` open, ``40{auth}``
connect, ``42<id>[event, data]`` an event, ``43<id>[ack]`` its ack.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import struct
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
import socketio
from sqlalchemy import text
from temporalio.testing import WorkflowEnvironment

from gateway.transport import MAX_JSON_DEPTH
from missive.config import Settings
from missive.constants import (
    EVENT_DEVICE_REGISTER,
    EVENT_MESSAGE_SEND,
    EVENT_NOTIFICATION_LIST,
)
from missive.models import ConversationKind
from missive.services.directory import NewUser
from missive.tokens import MAX_TOKEN_CHARS, issue_token
from runtime.wiring import Core
from tests.integration import test_gateway as gateway_tests
from tests.integration.test_gateway import (
    QUIET,
    WAIT,
    Peer,
    RunningGateway,
    gateway_settings,
    open_peer,
    serve_gateway,
)

pytestmark = pytest.mark.integration

gateway = gateway_tests.gateway
"""The gateway fixture of test_gateway (uvicorn, the test's database, the dev server)."""
connect = gateway_tests.connect
"""Connects a Socket.IO client as a user; closed at teardown."""

MB = 1_000_000


class RawSocket:
    """A hand-driven Engine.IO WebSocket that answers pings and reads Socket.IO packets."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws

    async def packet(self, within: float = WAIT) -> str:
        """The next Socket.IO packet but server events (``message:new`` to the sender's
        own room), pings answered on the way."""
        async with asyncio.timeout(within):
            while True:
                msg = await self.ws.receive()
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    raise AssertionError(f"expected a text frame, got {msg.type} {msg.data!r}")
                if msg.data == "2":
                    await self.ws.send_str("3")
                    continue
                assert msg.data.startswith("4"), msg.data
                if msg.data.startswith("42["):
                    continue
                return str(msg.data[1:])

    async def ack(self, id: int) -> dict[str, Any]:
        """The ack of event ``id``: exactly one, nothing else in between."""
        packet = await self.packet()
        prefix = f"3{id}"
        assert packet.startswith(prefix + "["), packet
        answer = json.loads(packet[len(prefix) :])
        assert len(answer) == 1, answer
        return dict(answer[0])

    async def nothing_more(self) -> None:
        """No packet arrives for QUIET seconds (so the ack was the only one)."""
        with pytest.raises(TimeoutError):
            await self.packet(within=QUIET)

    async def send_event(self, id: int, raw_payload: str) -> None:
        """``42<id><raw_payload>``: an event with an ack id and a payload as written."""
        await self.ws.send_str(f"42{id}{raw_payload}")


@asynccontextmanager
async def raw_socket(gateway: RunningGateway, auth: object) -> AsyncIterator[RawSocket]:
    """A raw WebSocket connected to the default namespace with ``auth``."""
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(
            f"{gateway.url}/socket.io/?EIO=4&transport=websocket", max_msg_size=0
        ) as ws:
            opened = await ws.receive_str(timeout=WAIT)
            assert opened.startswith("0{"), opened
            raw = RawSocket(ws)
            await ws.send_str("40" + json.dumps(auth))
            connected = await raw.packet()
            assert connected.startswith("0{"), connected
            yield raw


async def _user_with_conversation(core: Core) -> tuple[str, str]:
    ana = await core.directory.create_user(NewUser(handle=f"ana-{uuid.uuid4().hex[:6]}"))
    ben = await core.directory.create_user(NewUser(handle=f"ben-{uuid.uuid4().hex[:6]}"))
    conversation = await core.directory.create_conversation(
        kind=ConversationKind.GROUP, members=[ana, ben]
    )
    return ana, conversation


async def _messages(core: Core) -> int:
    async with core.engine.connect() as conn:
        return int((await conn.execute(text("SELECT count(*) FROM messages"))).scalar_one())


def _send(conversation: str, body: str, client_id: str = "m-1") -> dict[str, str]:
    return {"conversation_id": conversation, "client_message_id": client_id, "body": body}


def _invalid(ack: dict[str, Any], match: str) -> None:
    assert ack["ok"] is False, ack
    assert ack["error"]["type"] == "InvalidInput", ack
    assert match in ack["error"]["message"], ack


async def test_a_lone_surrogate_is_invalid_input_naming_the_field(
    gateway: RunningGateway, core: Core, connect: Callable[[str], Awaitable[Peer]]
) -> None:
    ana, conversation = await _user_with_conversation(core)
    a = await connect(ana)
    # json.dumps writes "\ud800" as an escape: valid JSON, not valid Unicode.
    ack = await a.call(EVENT_MESSAGE_SEND, _send(conversation, "hi \ud800 there"))
    _invalid(ack, "body is not valid Unicode")
    # Any other stored string: InvalidInput too, never InternalError.
    ack = await a.call(EVENT_DEVICE_REGISTER, {"platform": "web", "token": "tok\udfff" * 20})
    assert ack["ok"] is False and ack["error"]["type"] == "InvalidInput", ack
    # A proper surrogate pair (an escaped emoji) is fine.
    ok = await a.call(EVENT_MESSAGE_SEND, _send(conversation, "hi \U0001f600", "m-2"))
    assert ok["ok"] is True, ok
    assert await _messages(core) == 1


async def test_undecodable_events_get_one_ack_naming_the_problem(
    gateway: RunningGateway, core: Core
) -> None:
    ana, conversation = await _user_with_conversation(core)
    token = issue_token(gateway.settings.gateway_secret, ana, ttl_seconds=60)
    deep = "[" * 100_000 + "]" * 100_000
    just_over = "[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1)
    cases: list[tuple[str, str]] = [
        (f'["{EVENT_MESSAGE_SEND}", {{"body": "unterminated', "JSON is malformed"),
        (f'["{EVENT_MESSAGE_SEND}", {deep}]', f"nested deeper than {MAX_JSON_DEPTH}"),
        (f'["{EVENT_MESSAGE_SEND}", {just_over}]', f"nested deeper than {MAX_JSON_DEPTH}"),
        ('{"event": "message:send"}', "must be an array"),
        ("[]", "must be an array"),
        ("[5, {}]", "must be an array"),
        ('"message:send"', "must be an array"),
        (f'["{EVENT_MESSAGE_SEND}", {"1" * 200}]', "Integer is too large"),
        ('["no:such:event", {}]', "unknown event 'no:such:event'"),
    ]
    async with raw_socket(gateway, {"token": token}) as raw:
        for id, (payload, match) in enumerate(cases, start=1):
            await raw.send_event(id, payload)
            _invalid(await raw.ack(id), match)
        await raw.nothing_more()

        # Invalid UTF-8 can only travel in a binary frame (a text frame must be UTF-8);
        # Engine.IO's binary frames carry the Socket.IO packet without the "4".
        await raw.ws.send_bytes(b'2100["message:send", {"body": "\xff\xfe"}]')
        _invalid(await raw.ack(100), "not valid UTF-8")

        # Without an ack id there is nobody to answer: dropped, the socket carries on.
        await raw.ws.send_str('42["message:send", {"body": ')
        await raw.nothing_more()
        # Not Socket.IO at all, and JSON that Engine.IO itself would parse without a limit.
        await raw.ws.send_str("4" + deep)
        await raw.nothing_more()
        await raw.send_event(101, json.dumps([EVENT_MESSAGE_SEND, _send(conversation, "hi")]))
        assert (await raw.ack(101))["ok"] is True
        await raw.send_event(102, json.dumps([EVENT_NOTIFICATION_LIST, {}]))
        assert (await raw.ack(102))["ok"] is True
        await raw.nothing_more()
    assert await _messages(core) == 1


async def test_invalid_utf8_in_a_text_frame_closes_with_the_websocket_reason(
    gateway: RunningGateway, core: Core
) -> None:
    ana, _ = await _user_with_conversation(core)
    token = issue_token(gateway.settings.gateway_secret, ana, ttl_seconds=60)
    async with raw_socket(gateway, {"token": token}) as raw:
        # A masked text frame (opcode 1) whose payload is not UTF-8: the WebSocket
        # protocol itself requires closing with 1007 before the application sees it.
        payload = b'421["message:send", "\xff"]'
        mask = b"\x01\x02\x03\x04"
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        frame = struct.pack("!BB", 0x81, 0x80 | len(payload)) + mask + masked
        transport = raw.ws._response.connection.transport  # type: ignore[union-attr]
        assert transport is not None
        transport.write(frame)
        msg = await raw.ws.receive(timeout=WAIT)
        while msg.type is aiohttp.WSMsgType.TEXT:  # a ping may come first
            msg = await raw.ws.receive(timeout=WAIT)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), msg
        assert raw.ws.close_code == 1007, (raw.ws.close_code, msg)


async def test_messages_over_the_size_limit_are_answered_and_the_socket_stays(
    gateway: RunningGateway, core: Core, connect: Callable[[str], Awaitable[Peer]]
) -> None:
    ana, conversation = await _user_with_conversation(core)
    a = await connect(ana)
    limit = gateway.settings.gateway_max_message_bytes
    ack = await a.call(EVENT_MESSAGE_SEND, _send(conversation, "x" * (10 * MB)))
    _invalid(ack, f"over the gateway's limit of {limit} (GATEWAY_MAX_MESSAGE_BYTES)")
    assert a.client.connected
    # Just under the limit, the event is read and its own check answers.
    ack = await a.call(EVENT_MESSAGE_SEND, _send(conversation, "x" * (limit - 200)))
    _invalid(ack, "over the limit of")
    ok = await a.call(EVENT_MESSAGE_SEND, _send(conversation, "after the big ones"))
    assert ok["ok"] is True, ok
    assert await _messages(core) == 1

    # A 2 MB token: the connect packet is too large, refused with the reason.
    for token, reason in (
        ("t" * (2 * MB), "over the gateway's limit"),
        ("t" * (MAX_TOKEN_CHARS + 1), "token too long"),
    ):
        client = socketio.AsyncClient(reconnection=False)
        refusals: list[Any] = []
        client.on("connect_error", refusals.append)
        with pytest.raises(socketio.exceptions.ConnectionError):
            await client.connect(
                gateway.url, auth={"token": token}, transports=["websocket"], wait_timeout=WAIT
            )
        assert refusals and reason in refusals[-1]["message"], refusals

    # Over HTTP long-polling a body over the limit is refused with the reason (413).
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{gateway.url}/socket.io/?EIO=4&transport=polling") as response:
            sid = json.loads((await response.text())[1:])["sid"]
        async with http.post(
            f"{gateway.url}/socket.io/?EIO=4&transport=polling&sid={sid}",
            data=b"4" + b"x" * (limit + 1),
        ) as response:
            assert response.status == 413
            assert "GATEWAY_MAX_MESSAGE_BYTES" in (await response.json())["error"]


async def test_malformed_connect_packets_get_connect_error(
    gateway: RunningGateway, core: Core
) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(f"{gateway.url}/socket.io/?EIO=4&transport=websocket") as ws:
            assert (await ws.receive_str(timeout=WAIT)).startswith("0{")
            await ws.send_str('40{"token": ')
            raw = RawSocket(ws)
            refused = await raw.packet()
            assert refused.startswith("4{"), refused
            assert "JSON is malformed" in json.loads(refused[1:])["message"]


async def test_a_frame_over_the_websocket_limit_closes_with_1009(
    gateway: RunningGateway, core: Core
) -> None:
    ana, _ = await _user_with_conversation(core)
    token = issue_token(gateway.settings.gateway_secret, ana, ttl_seconds=60)
    async with raw_socket(gateway, {"token": token}) as raw:
        # Over uvicorn's ws_max_size (16 MiB) the WebSocket library closes mid-frame, so
        # the write may fail; the close frame still says why.
        with contextlib.suppress(ConnectionError):
            await raw.send_event(1, json.dumps([EVENT_MESSAGE_SEND, {"body": "x" * (17 * 2**20)}]))
        msg = await raw.ws.receive(timeout=WAIT)
        while msg.type is aiohttp.WSMsgType.TEXT:  # a ping may come first
            msg = await raw.ws.receive(timeout=WAIT)
        assert msg.type is aiohttp.WSMsgType.CLOSE, msg
        assert msg.data == 1009 and "exceeds limit" in str(msg.extra), msg


FLOOD_PACKETS = 2_000
"""Malformed packets the flooding socket sends, as fast as it can write them."""

FLOOD_RATE, FLOOD_BURST = 400.0, 100
"""The per-socket event pace of the flood's gateway: 2,000 packets take at least 4.75 s."""


def _flood_packet(n: int) -> tuple[str | bytes, str | None]:
    """Malformed packet ``n`` (its ack id, where it has one, is ``n``) and what its one
    answer must name, or None: nobody is told about a packet without an ack id, and an
    event of a namespace the socket never joined is no event of this connection."""
    match n % 5:
        case 0:
            return f'42{n}["{EVENT_MESSAGE_SEND}", {{"body": ', "JSON is malformed"
        case 1:
            return f'42/nowhere,{n}["{EVENT_MESSAGE_SEND}", {{}}]', None
        case 2:
            return f'2{n}["{EVENT_MESSAGE_SEND}", "\xff"]'.encode("latin-1"), "not valid UTF-8"
        case 3:
            return b"\xff\xfe\x00 binary junk \x80" * 4, None
        case _:
            return f'42{n}{{"event": "{EVENT_MESSAGE_SEND}"}}', "must be an array"


def _p99(latencies: list[float]) -> float:
    return sorted(latencies)[max(0, math.ceil(len(latencies) * 0.99) - 1)]


async def test_a_malformed_packet_flood_is_paced_and_slows_nobody_else(
    settings: Settings, core: Core, dev_env: WorkflowEnvironment
) -> None:
    flooder = await core.directory.create_user(NewUser(handle=f"fl-{uuid.uuid4().hex[:6]}"))
    ben = await core.directory.create_user(NewUser(handle=f"ben-{uuid.uuid4().hex[:6]}"))
    # Ben alone: each lifecycle ends once stored (nobody left to read it).
    notes = await core.directory.create_conversation(kind=ConversationKind.GROUP, members=[ben])
    paced = gateway_settings(
        settings,
        dev_env,
        gateway_socket_events_per_second=FLOOD_RATE,
        gateway_socket_events_burst=FLOOD_BURST,
        # Every packet past the pace waits to be read (no refusal from the header),
        # so each that asked for an answer gets the one naming what is wrong.
        gateway_socket_refusals_burst=0,
        # Ben's own send limit is not what is measured here.
        send_rate_per_second=10_000,
        send_burst=10_000,
    )
    packets = [_flood_packet(n) for n in range(1, FLOOD_PACKETS + 1)]
    expected = {n: named for n, (_, named) in enumerate(packets, start=1) if named}
    async with serve_gateway(paced) as running:
        b = await open_peer(running, ben)
        sent = 0

        async def send() -> float:
            nonlocal sent
            sent += 1
            asked = time.perf_counter()
            ack = await b.call(EVENT_MESSAGE_SEND, _send(notes, f"hi {sent}", f"b-{sent}"))
            assert ack["ok"] is True, ack
            return time.perf_counter() - asked

        try:
            await send()  # the first lifecycle start warms the worker up
            unloaded = [await send() for _ in range(30)]
            token = issue_token(running.settings.gateway_secret, flooder, ttl_seconds=60)
            async with raw_socket(running, {"token": token}) as raw:
                answers: dict[int, list[dict[str, Any]]] = {}

                async def flood() -> None:
                    for packet, _ in packets:
                        if isinstance(packet, bytes):
                            await raw.ws.send_bytes(packet)
                        else:
                            await raw.ws.send_str(packet)

                async def read_answers() -> None:
                    while sum(map(len, answers.values())) < len(expected):
                        packet = await raw.packet()
                        id, _, answer = packet.partition("[")
                        assert id.startswith("3"), packet
                        answers.setdefault(int(id[1:]), []).extend(json.loads("[" + answer))

                started = time.perf_counter()
                flooding = asyncio.gather(flood(), read_answers())
                loaded: list[float] = []
                while not flooding.done():
                    loaded.append(await send())
                await flooding
                took = time.perf_counter() - started
                # Whatever else the flood could have caused would have come by now.
                await raw.nothing_more()
        finally:
            await b.client.disconnect()
    # Paced: read at the socket's rate after its burst, never all at once.
    assert took >= (FLOOD_PACKETS - FLOOD_BURST) / FLOOD_RATE * 0.9, took
    # Each packet that asked for an answer got exactly one, naming what is wrong.
    assert answers.keys() == expected.keys()
    for n, named in expected.items():
        [answer] = answers[n]
        _invalid(answer, named)
    # Nobody else waited on the flood: Ben's sends while it lasted, every one stored.
    assert len(loaded) >= 20, len(loaded)
    before, during = _p99(unloaded), _p99(loaded)
    assert during <= 4 * before + 0.1, (before, during, sorted(loaded)[-5:])
    assert await _messages(core) == 1 + len(unloaded) + len(loaded)
