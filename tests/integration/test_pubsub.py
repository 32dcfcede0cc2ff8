"""PostgresPubSubManager: emits from another process reach real Socket.IO clients."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest
import socketio
import uvicorn

from missive.pubsub import (
    BATCH_EMITS,
    LISTENER_APPLICATION,
    MAX_NOTIFY_BYTES,
    PUBLISHER_APPLICATION,
    Emit,
    PostgresPubSubManager,
    connect_args,
)
from tests.conftest import LoopTurns

pytestmark = pytest.mark.integration

EVENT = "news"
WAIT = 10.0


@dataclass
class Gateway:
    """A real Socket.IO server behind uvicorn, sharing events through PostgreSQL."""

    url: str
    manager: PostgresPubSubManager


@dataclass
class Client:
    """A connected Socket.IO client and what it received, in order."""

    sio: socketio.AsyncClient
    received: asyncio.Queue[tuple[str, Any]]

    async def next(self) -> tuple[str, Any]:
        """The next event received, failing the test after a few seconds."""
        async with asyncio.timeout(WAIT):
            return await self.received.get()


def _free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@pytest.fixture
async def gateway(database_url: str) -> AsyncIterator[Gateway]:
    """Serves a Socket.IO app whose connect handler puts the client in ``auth["room"]``."""
    manager = PostgresPubSubManager(database_url, logger=logging.getLogger("test.pubsub"))
    sio = socketio.AsyncServer(client_manager=manager, async_mode="asgi")

    @sio.event
    async def connect(sid: str, environ: dict[str, Any], auth: dict[str, Any] | None) -> None:
        await sio.enter_room(sid, (auth or {}).get("room", "room-1"))

    sock = _free_socket()
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        socketio.ASGIApp(sio), log_level="warning", lifespan="off", ws="wsproto"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(WAIT):
            while not server.started:
                if task.done():
                    task.result()
                    pytest.fail("uvicorn stopped before it started")
                await asyncio.sleep(0.02)
        yield Gateway(url=f"http://127.0.0.1:{port}", manager=manager)
    finally:
        server.should_exit = True
        await asyncio.wait([task], timeout=WAIT)
        await manager.close()
        sock.close()


@pytest.fixture
async def connect(gateway: Gateway) -> AsyncIterator[Callable[[str], Awaitable[Client]]]:
    """Connects clients to the gateway, each into one room; disconnects them after."""
    clients: list[socketio.AsyncClient] = []

    async def _connect(room: str) -> Client:
        sio = socketio.AsyncClient()
        received: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

        @sio.on("*")
        async def any_event(event: str, data: Any) -> None:
            await received.put((event, data))

        await sio.connect(gateway.url, auth={"room": room}, transports=["websocket"])
        clients.append(sio)
        # The server starts listening when its first client connects.
        async with asyncio.timeout(WAIT):
            await gateway.manager.wait_listening()
        return Client(sio, received)

    yield _connect
    for sio in clients:
        await sio.disconnect()


@pytest.fixture
async def publisher(database_url: str) -> AsyncIterator[PostgresPubSubManager]:
    """A write-only manager, as a worker process holds one."""
    manager = PostgresPubSubManager(database_url, write_only=True)
    yield manager
    await manager.close()


async def _sql(database_url: str, query: str) -> Any:
    conn = await asyncpg.connect(**connect_args(database_url))
    try:
        return await conn.fetchval(query)
    finally:
        await conn.close()


async def test_an_emit_from_another_process_reaches_the_room(
    connect: Callable[[str], Awaitable[Client]], publisher: PostgresPubSubManager
) -> None:
    client = await connect("room-1")

    await publisher.emit(EVENT, {"event_id": "e-1", "body": "hello"}, room="room-1")

    assert await client.next() == (EVENT, {"event_id": "e-1", "body": "hello"})


async def test_a_large_emit_travels_through_the_outbox(
    connect: Callable[[str], Awaitable[Client]],
    publisher: PostgresPubSubManager,
    database_url: str,
) -> None:
    client = await connect("room-1")
    body = "x" * 50_000
    assert len(body) > MAX_NOTIFY_BYTES

    await publisher.emit(EVENT, {"event_id": "e-big", "body": body}, room="room-1")
    await publisher.emit(EVENT, {"event_id": "e-small"}, room="room-1")

    assert await client.next() == (EVENT, {"event_id": "e-big", "body": body})
    assert await client.next() == (EVENT, {"event_id": "e-small"})
    assert await _sql(database_url, "SELECT count(*) FROM broadcast_outbox") == 1


async def test_a_client_in_another_room_does_not_receive_it(
    connect: Callable[[str], Awaitable[Client]], publisher: PostgresPubSubManager
) -> None:
    inside = await connect("room-1")
    outside = await connect("room-2")

    await publisher.emit(EVENT, {"event_id": "e-1"}, room="room-1")
    await publisher.emit(EVENT, {"event_id": "marker"}, room="room-2")

    assert await inside.next() == (EVENT, {"event_id": "e-1"})
    # Notifications arrive in order, so the marker comes after anything room-2 would get.
    assert await outside.next() == (EVENT, {"event_id": "marker"})
    assert outside.received.empty()


async def test_a_batch_of_emits_reaches_each_room_once_and_in_order(
    connect: Callable[[str], Awaitable[Client]],
    publisher: PostgresPubSubManager,
    database_url: str,
) -> None:
    first = await connect("room-1")
    second = await connect("room-2")
    # More than one batch, and batches too large for a NOTIFY (they go through the outbox).
    emits = [
        Emit(EVENT, {"event_id": f"e-{i}"}, f"room-{i % 2 + 1}") for i in range(BATCH_EMITS + 44)
    ]

    await publisher.emit_many(emits)
    await publisher.emit(EVENT, {"event_id": "marker"}, room="room-1")
    await publisher.emit(EVENT, {"event_id": "marker"}, room="room-2")

    for client, parity in ((first, 0), (second, 1)):
        received = [await client.next() for _ in range(len(emits) // 2 + 1)]
        expected = [f"e-{i}" for i in range(len(emits)) if i % 2 == parity] + ["marker"]
        assert [data["event_id"] for _, data in received] == expected
        assert {event for event, _ in received} == {EVENT}
        assert client.received.empty()
    assert await _sql(database_url, "SELECT count(*) FROM broadcast_outbox") == 2


async def test_a_batch_from_the_serving_process_is_delivered_there_once(
    connect: Callable[[str], Awaitable[Client]],
    publisher: PostgresPubSubManager,
    gateway: Gateway,
) -> None:
    client = await connect("room-1")

    await gateway.manager.emit_many([Emit(EVENT, {"event_id": "local"}, "room-1")])
    # The batch also comes back to this process through PostgreSQL: it must not
    # deliver it a second time. The marker, published after it, arrives after it.
    await publisher.emit(EVENT, {"event_id": "marker"}, room="room-1")

    assert await client.next() == (EVENT, {"event_id": "local"})
    assert await client.next() == (EVENT, {"event_id": "marker"})
    assert client.received.empty()


async def test_this_processs_sockets_are_given_an_emit_without_the_loop_turning(
    connect: Callable[[str], Awaitable[Client]],
    gateway: Gateway,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clients = [await connect("room-1") for _ in range(5)]
    outsider = await connect("room-2")
    manager = gateway.manager
    publish = manager._publish
    published_at: list[int] = []
    async with LoopTurns() as turns:

        async def recorded(data: Any) -> None:
            published_at.append(turns.count)
            await publish(data)

        await asyncio.sleep(0)
        before = turns.count
        monkeypatch.setattr(manager, "_publish", recorded)
        # emit_many delivers to this process's sockets, then publishes for the others.
        await manager.emit_many([Emit(EVENT, {"event_id": "local"}, "room-1")])
    # Delivered to every socket of the room without the loop turning: python-socketio's
    # own delivery starts a task per socket and waits for them (two turns at least).
    assert published_at == [before], (published_at, before)
    for client in clients:
        assert await client.next() == (EVENT, {"event_id": "local"})
    await asyncio.sleep(0.2)
    assert outsider.received.empty()


async def test_old_outbox_rows_are_pruned(
    publisher: PostgresPubSubManager, database_url: str
) -> None:
    await _sql(
        database_url,
        "INSERT INTO broadcast_outbox (payload, created_at)"
        " VALUES ('\\x00'::bytea, now() - interval '6 minutes')",
    )

    await publisher.emit(EVENT, {"body": "y" * 10_000}, room="room-1")

    assert await _sql(database_url, "SELECT count(*) FROM broadcast_outbox") == 1
    assert (
        await _sql(
            database_url,
            "SELECT count(*) FROM broadcast_outbox WHERE created_at > now() - interval '1 minute'",
        )
        == 1
    )


async def test_the_listener_reconnects_after_its_connection_is_killed(
    connect: Callable[[str], Awaitable[Client]],
    publisher: PostgresPubSubManager,
    gateway: Gateway,
    database_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = await connect("room-1")

    killed = await _sql(
        database_url,
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
        f" WHERE application_name = '{LISTENER_APPLICATION}' AND datname = current_database()",
    )
    assert killed == 1

    # Until the listener is back, emits are lost (at most once, like Redis): keep trying.
    async with asyncio.timeout(WAIT):
        while True:
            await publisher.emit(EVENT, {"event_id": "after-kill"}, room="room-1")
            try:
                async with asyncio.timeout(0.3):
                    event = await client.received.get()
                break
            except TimeoutError:
                continue
    assert event == (EVENT, {"event_id": "after-kill"})
    lost = [r for r in caplog.records if "Lost the PostgreSQL listener" in r.getMessage()]
    assert lost and all(r.levelno == logging.WARNING and r.exc_info is None for r in lost)


async def test_a_publisher_survives_its_connection_being_killed(
    connect: Callable[[str], Awaitable[Client]],
    publisher: PostgresPubSubManager,
    database_url: str,
) -> None:
    client = await connect("room-1")
    await publisher.emit(EVENT, {"event_id": "before"}, room="room-1")
    assert await client.next() == (EVENT, {"event_id": "before"})

    killed = await _sql(
        database_url,
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
        f" WHERE application_name = '{PUBLISHER_APPLICATION}' AND datname = current_database()",
    )
    assert killed >= 1

    await publisher.emit(EVENT, {"event_id": "after"}, room="room-1")
    assert await client.next() == (EVENT, {"event_id": "after"})
