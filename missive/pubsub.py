"""Socket.IO's cross-process managers: over PostgreSQL LISTEN/NOTIFY when Redis is absent,
and either one publishing many emits as one message."""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
from engineio import packet as eio_packet
from socketio import AsyncRedisManager
from socketio import packet as sio_packet
from socketio.async_manager import AsyncManager
from socketio.async_pubsub_manager import AsyncPubSubManager
from sqlalchemy.engine import make_url

from missive.errors import ProviderUnavailable

MAX_NOTIFY_BYTES = 7500
"""Larger messages go by reference: PostgreSQL refuses NOTIFY payloads of 8000 bytes or more."""

CONNECT_TIMEOUT = 10.0
STATEMENT_TIMEOUT = 5.0
CLOSE_TIMEOUT = 2.0
PRUNE_EVERY_SECONDS = 60.0
IDLE_PING_SECONDS = 30.0
"""A quiet listener checks its connection this often: a silent network drop sends nothing."""
RECONNECT_MIN_SECONDS = 0.5
RECONNECT_MAX_SECONDS = 30.0
STABLE_SECONDS = 10.0
"""A listener connection that lived this long resets the backoff when it drops."""

LISTENER_APPLICATION = "missive-pubsub-listener"
PUBLISHER_APPLICATION = "missive-pubsub-publisher"

_NOTIFY = "SELECT pg_notify($1, $2)"
# One statement: the row is committed before the notification is delivered.
_NOTIFY_BY_REFERENCE = """
WITH stored AS (INSERT INTO broadcast_outbox (payload) VALUES ($2) RETURNING id)
SELECT pg_notify($1, '@' || id) FROM stored
"""
_FETCH = "SELECT payload FROM broadcast_outbox WHERE id = $1"
_PRUNE = "DELETE FROM broadcast_outbox WHERE created_at < now() - interval '5 minutes'"

# Failures a second attempt on a fresh connection can fix; anything else is a bug or a
# missing migration and propagates as is.
_CONNECTION_ERRORS = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,
    # A connection killed under a statement can leave asyncpg's protocol in a bad state.
    asyncpg.exceptions.InternalClientError,
)


BATCH_METHOD = "missive:emits"
"""The pub/sub message that carries many emits; processes expand it on arrival."""

_OURS = re.compile(r'^\{\s*"method"\s*:\s*"(missive:[a-z_]+)"(?:\s*,\s*"host_id"\s*:\s*"([^"]*)")?')
"""The start of a message this module publishes: its method, then the publishing host.
Known by the head alone, whatever JSON separators the manager's encoder uses, so a
process skips its own messages and everyone else's emits without parsing them."""

BATCH_EMITS = 256
"""Emits per published batch (a larger batch goes by reference on PostgreSQL)."""


ROOMS_METHOD = "missive:rooms"
"""The pub/sub message that moves a user's sockets into and out of rooms."""


@dataclass(frozen=True)
class RoomMove:
    """Every socket in room ``of`` (a user's own room) enters ``enter`` and leaves ``leave``."""

    of: str
    enter: tuple[str, ...] = ()
    leave: tuple[str, ...] = ()


@dataclass(frozen=True)
class Emit:
    """One event for one room."""

    event: str
    data: Any
    room: str


class LocalEmits(AsyncManager):  # type: ignore[misc]
    """python-socketio's delivery to this process's sockets, without a task per socket.

    ``AsyncManager.emit`` starts a task for each socket in the room and waits for them
    all: a 50-member conversation's message was 50 tasks and two turns of the loop
    before its packets were even queued. Queuing a packet on an Engine.IO socket never
    waits (its queue is unbounded), so here it is queued on each socket in turn, in
    the emitting task. An emit that asks for a callback keeps python-socketio's path.

    It overrides ``AsyncManager.emit`` of python-socketio 5 (pinned ``<6``); placed
    after AsyncPubSubManager in a manager's bases, it is what that class's
    ``super().emit`` (the local delivery of every emit) reaches.
    """

    async def emit(
        self,
        event: str,
        data: Any,
        namespace: str | None = None,
        room: str | None = None,
        skip_sid: Any = None,
        callback: Any = None,
        to: str | None = None,
        **kwargs: Any,
    ) -> None:
        """Queues the event on each of the room's sockets in this process."""
        if callback is not None or namespace not in self.rooms:
            await super().emit(
                event, data, namespace, room=room, skip_sid=skip_sid, callback=callback, to=to
            )
            return
        args = list(data) if isinstance(data, tuple) else [] if data is None else [data]
        skip = skip_sid if isinstance(skip_sid, list) else [skip_sid]
        encoded = self.server.packet_class(
            sio_packet.EVENT, namespace=namespace, data=[event, *args]
        ).encode()
        packets = [
            eio_packet.Packet(eio_packet.MESSAGE, p)
            for p in (encoded if isinstance(encoded, list) else [encoded])
        ]
        # The room is read whole first: a socket leaving it meanwhile cannot break the loop.
        targets = [
            eio_sid
            for sid, eio_sid in self.get_participants(namespace, to or room)
            if sid not in skip
        ]
        for eio_sid in targets:
            for pkt in packets:
                try:
                    await self.server._send_eio_packet(eio_sid, pkt)
                except Exception:  # one socket's failure is not the others'
                    self._get_logger().exception("an emit to socket %s failed", eio_sid)


class BatchEmits(AsyncPubSubManager):
    """Publishes many emits as one pub/sub message, and expands such messages on arrival.

    A notification for each of 2,000 members is 2,000 rooms: emitted one by one,
    that is 2,000 publishes (round trips to Redis or PostgreSQL, and as many
    wake-ups of every listening process); batched, it is eight. Each process
    delivers the batch's emits to its own sockets as if they had come one by one.
    Processes that predate batches ignore them (a rolling upgrade drops these
    events, which clients catch up on as with any missed event).
    """

    async def emit_many(self, emits: Sequence[Emit]) -> None:
        """Emits each event to its room in every process; JSON data only."""
        messages = [
            {
                "method": "emit",
                "event": e.event,
                "data": [e.data],
                "binary": False,
                "namespace": "/",
                "room": e.room,
                "skip_sid": None,
                "callback": None,
                "host_id": self.host_id,
            }
            for e in emits
        ]
        for message in messages:
            await self._handle_emit(message)  # this process's sockets
        for start in range(0, len(messages), BATCH_EMITS):
            chunk = messages[start : start + BATCH_EMITS]
            await self._publish(
                {"method": BATCH_METHOD, "host_id": self.host_id, "messages": chunk}
            )

    async def move_rooms(self, moves: Sequence[RoomMove]) -> None:
        """Moves the sockets of each move's room in every process, in order with emits.

        This process's sockets move at once; the others' when the message arrives,
        which is before any emit published after it (one channel, delivered in
        order), so a socket that left a room hears nothing emitted to it afterwards.
        """
        self._move_rooms(moves)
        await self._publish(
            {
                "method": ROOMS_METHOD,
                "host_id": self.host_id,
                "moves": [[m.of, list(m.enter), list(m.leave)] for m in moves],
            }
        )

    def _move_rooms(self, moves: Sequence[RoomMove]) -> None:
        for move in moves:
            for sid, eio_sid in list(self.get_participants("/", move.of)):
                for room in move.enter:
                    self.basic_enter_room(sid, "/", room, eio_sid=eio_sid)
                for room in move.leave:
                    self.basic_leave_room(sid, "/", room)

    def _rooms_message(self, message: str | bytes) -> None:
        try:
            data = self.json.loads(message)
            if data.get("host_id") == self.host_id:
                return  # moved here before it was published
            moves = [
                RoomMove(str(of), tuple(enter), tuple(leave)) for of, enter, leave in data["moves"]
            ]
        except (ValueError, TypeError, KeyError):
            self._get_logger().warning("Ignoring a malformed room move")
            return
        self._move_rooms(moves)

    async def _listen(self) -> AsyncIterator[Any]:
        async for message in super()._listen():
            head = message[:200] if isinstance(message, str | bytes) else None
            if isinstance(head, bytes):
                head = head.decode("utf-8", "replace")
            ours = _OURS.match(head) if head is not None else None
            if ours is None:  # Socket.IO's own messages (emit, disconnect, ...)
                yield message
                continue
            method, host = ours.groups()
            if host == self.host_id:
                continue  # this process's own: delivered or moved here when published
            if method == ROOMS_METHOD:
                self._rooms_message(message)
                continue
            if method != BATCH_METHOD:
                continue  # a newer version's message: not ours to read
            try:
                batch = self.json.loads(message)
            except ValueError:
                self._get_logger().warning("Ignoring a malformed batch of emits")
                continue
            for inner in batch.get("messages", ()):
                if isinstance(inner, dict):
                    yield inner


class RedisManager(BatchEmits, AsyncRedisManager, LocalEmits):
    """Socket.IO's Redis manager, with batches of emits."""


class PostgresPubSub(AsyncPubSubManager):
    """Shares Socket.IO emits between processes through PostgreSQL LISTEN/NOTIFY.

    Readers hold one dedicated listening connection, opened by the server when the
    manager is initialised and reopened with backoff when it drops. Publishers use a
    pool of at most two connections, opened on the first publish. Messages too large
    for NOTIFY are stored in ``broadcast_outbox`` and announced as ``@<id>``; rows
    older than five minutes are pruned by publishers at most once a minute.

    Like Redis pub/sub, delivery is at most once: a reader that is reconnecting misses
    what is published meanwhile (events carry ids and sequence numbers, so clients
    catch up).

    Args:
        dsn: PostgreSQL URL, SQLAlchemy style (``postgresql+asyncpg://...``) or libpq
            style; a unix-socket directory may be given as ``?host=/path``.
        channel: NOTIFY channel; the same in every process.
        write_only: Only publish (workers, scripts); never listen.
        logger: Logger for connection trouble; defaults to the server's.
    """

    name = "postgres"

    def __init__(
        self,
        dsn: str,
        channel: str = "missive",
        write_only: bool = False,
        logger: logging.Logger | None = None,
    ) -> None:
        super().__init__(channel=channel, write_only=write_only, logger=logger)
        self._connect_args = connect_args(dsn)
        self._pool: asyncpg.Pool | None = None
        self._pool_lock = asyncio.Lock()
        self._listener: asyncpg.Connection | None = None
        self._listening = asyncio.Event()
        self._last_prune = -math.inf
        self._closed = False

    async def wait_listening(self) -> None:
        """Waits until the listening connection is up (readiness checks, tests).

        The server starts listening when its first client connects; callers bound the
        wait with ``asyncio.timeout``.
        """
        await self._listening.wait()

    async def close(self) -> None:
        """Stops listening and closes every connection; the manager is not usable after."""
        self._closed = True
        task = getattr(self, "thread", None)  # the listening task started by initialize()
        if isinstance(task, asyncio.Task) and not task.done():
            task.cancel()
            await asyncio.wait([task], timeout=CLOSE_TIMEOUT)
        if self._listener is not None:
            await _discard(self._listener)
            self._listener = None
        self._listening.clear()
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                await asyncio.wait_for(pool.close(), CLOSE_TIMEOUT)
            except Exception:
                pool.terminate()

    async def _publish(self, data: Any) -> None:
        """Sends one message to every process; retries once on a fresh connection.

        Raises:
            ProviderUnavailable: PostgreSQL did not take the message twice in a row.
        """
        text = self.json.dumps(data)
        raw = text.encode()
        for attempt in (1, 2):
            try:
                pool = await self._publisher()
                async with pool.acquire(timeout=CONNECT_TIMEOUT) as conn:
                    if len(raw) <= MAX_NOTIFY_BYTES:
                        await conn.execute(_NOTIFY, self.channel, text, timeout=STATEMENT_TIMEOUT)
                    else:
                        await conn.execute(
                            _NOTIFY_BY_REFERENCE, self.channel, raw, timeout=STATEMENT_TIMEOUT
                        )
                        await self._prune_if_due(conn)
                return
            except _CONNECTION_ERRORS as err:
                if self._pool is not None:
                    await self._pool.expire_connections()  # the retry gets a fresh connection
                if attempt == 2:
                    raise ProviderUnavailable(
                        f"cannot publish on PostgreSQL channel {self.channel!r}: {_reason(err)}"
                    ) from None
                self._get_logger().warning(
                    "Publishing on PostgreSQL channel %r failed (%s); retrying",
                    self.channel,
                    _reason(err),
                )

    async def _listen(self) -> AsyncIterator[str]:
        """Yields every message published on the channel, reconnecting as needed."""
        delay = RECONNECT_MIN_SECONDS
        while True:
            queue: asyncio.Queue[str | None] = asyncio.Queue()
            try:
                conn = await self._open_listener(queue)
            except Exception as err:
                self._get_logger().warning(
                    "Cannot listen on PostgreSQL channel %r (%s); retrying in %.1fs",
                    self.channel,
                    _reason(err),
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX_SECONDS)
                continue
            self._listener = conn
            self._listening.set()
            connected_at = time.monotonic()
            try:
                while (payload := await _next_payload(conn, queue)) is not None:
                    message = await self._resolve(conn, payload)
                    if message is not None:
                        yield message
                reason = "connection closed"
            except Exception as err:
                reason = _reason(err)
            finally:
                self._listening.clear()
                self._listener = None
                await _discard(conn)
            self._get_logger().warning(
                "Lost the PostgreSQL listener on channel %r (%s); reconnecting",
                self.channel,
                reason,
            )
            if time.monotonic() - connected_at >= STABLE_SECONDS:
                delay = RECONNECT_MIN_SECONDS  # a drop after a good while: reconnect at once
            else:
                await asyncio.sleep(delay)  # a flapping connection backs off
                delay = min(delay * 2, RECONNECT_MAX_SECONDS)

    async def _publisher(self) -> asyncpg.Pool:
        if self._closed:
            raise RuntimeError("PostgresPubSubManager is closed")
        if self._pool is None:
            async with self._pool_lock:
                if self._pool is None:
                    self._pool = await asyncpg.create_pool(
                        min_size=1,
                        max_size=2,
                        # Idle connections stay open: reconnecting would land on a publish.
                        max_inactive_connection_lifetime=0,
                        # They hold no session state to reset: skip the round trip a
                        # release would cost (RESET ALL, UNLISTEN *, ...).
                        reset=_keep_session,
                        timeout=CONNECT_TIMEOUT,
                        server_settings={"application_name": PUBLISHER_APPLICATION},
                        **self._connect_args,
                    )
        return self._pool

    async def _prune_if_due(self, conn: asyncpg.Connection) -> None:
        now = time.monotonic()
        if now - self._last_prune < PRUNE_EVERY_SECONDS:
            return
        self._last_prune = now
        try:
            await conn.execute(_PRUNE, timeout=STATEMENT_TIMEOUT)
        except Exception as err:
            # The message is sent already: a failed prune must not make the caller resend.
            self._get_logger().warning("Pruning broadcast_outbox failed: %s", _reason(err))

    async def _open_listener(self, queue: asyncio.Queue[str | None]) -> asyncpg.Connection:
        conn = await asyncpg.connect(
            timeout=CONNECT_TIMEOUT,
            server_settings={"application_name": LISTENER_APPLICATION},
            **self._connect_args,
        )
        try:
            conn.add_termination_listener(lambda _conn: queue.put_nowait(None))
            await conn.add_listener(
                self.channel, lambda _conn, _pid, _channel, payload: queue.put_nowait(payload)
            )
        except BaseException:
            await _discard(conn)
            raise
        return conn

    async def _resolve(self, conn: asyncpg.Connection, payload: str) -> str | None:
        """The message a notification carries, fetched from the outbox when it is a reference."""
        if not payload.startswith("@"):
            return payload
        try:
            outbox_id = int(payload[1:])
        except ValueError:
            self._get_logger().warning("Ignoring malformed notification %r", payload[:40])
            return None
        stored = await conn.fetchval(_FETCH, outbox_id, timeout=STATEMENT_TIMEOUT)
        if stored is None:
            self._get_logger().warning(
                "broadcast_outbox row %d is gone; message dropped", outbox_id
            )
            return None
        return bytes(stored).decode()


async def _keep_session(_conn: asyncpg.Connection) -> None:
    """A publisher connection's release: nothing to reset."""


def connect_args(dsn: str) -> dict[str, Any]:
    """``asyncpg.connect`` keyword arguments for a SQLAlchemy or libpq-style PostgreSQL URL."""
    url = make_url(dsn)

    def query(name: str) -> str | None:
        value = url.query.get(name)
        return value[-1] if isinstance(value, tuple) else value

    port = url.port or query("port")
    args: dict[str, Any] = {
        "host": query("host") or url.host,
        "port": int(port) if port else None,
        "user": url.username or query("user"),
        "password": url.password or query("password"),
        "database": url.database or query("dbname"),
        "ssl": query("ssl") or query("sslmode"),
    }
    return {name: value for name, value in args.items() if value is not None}


async def _next_payload(conn: asyncpg.Connection, queue: asyncio.Queue[str | None]) -> str | None:
    """The next notification, or None once the connection is gone."""
    while True:
        try:
            async with asyncio.timeout(IDLE_PING_SECONDS):
                return await queue.get()
        except TimeoutError:
            await conn.fetchval("SELECT 1", timeout=STATEMENT_TIMEOUT)


async def _discard(conn: asyncpg.Connection) -> None:
    if conn.is_closed():
        return
    try:
        await conn.close(timeout=CLOSE_TIMEOUT)
    except Exception:
        conn.terminate()


def _reason(err: BaseException) -> str:
    """One line about an error, for warnings without tracebacks."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:200]}" if text else type(err).__name__


class PostgresPubSubManager(BatchEmits, PostgresPubSub, LocalEmits):
    """Socket.IO's manager over PostgreSQL LISTEN/NOTIFY, with batches of emits."""
