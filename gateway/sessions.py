"""Open sockets and their tokens: expiry timers and the revocation listener of one gateway."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

import asyncpg

from missive.pubsub import connect_args
from missive.sessions import WAKE_TOKENS_REVOKED

log = logging.getLogger("missive.gateway")

TOKEN_RECHECK_SECONDS = 30.0
"""How long a socket's revocation check is trusted before an event reads it again:
the safety net under the NOTIFY push, which a listener reconnecting can miss."""

LISTENER_RETRY_SECONDS = 2.0
"""Pause before the revocation listener reconnects to PostgreSQL."""


class ExpiryTimers:
    """One timer per socket that closes it when its token expires."""

    def __init__(self, close: Callable[[str, str], Awaitable[None]]) -> None:
        self._close = close
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def schedule(self, sid: str, expires_at: float) -> None:
        """(Re)arms the socket's timer for ``expires_at`` (Unix seconds)."""
        self.cancel(sid)
        loop = asyncio.get_running_loop()
        delay = max(0.0, expires_at - time.time())
        self._timers[sid] = loop.call_later(delay, self._expired, sid)

    def cancel(self, sid: str) -> None:
        """Forgets the socket's timer (it disconnected)."""
        timer = self._timers.pop(sid, None)
        if timer is not None:
            timer.cancel()

    def _expired(self, sid: str) -> None:
        self._timers.pop(sid, None)
        task = asyncio.ensure_future(self._close(sid, "token expired"))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def close(self) -> None:
        """Cancels every timer (the gateway stops)."""
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()


class RevocationListener:
    """LISTENs on WAKE_TOKENS_REVOKED and calls ``revoked(user_id)`` for each notification."""

    def __init__(self, database_url: str, revoked: Callable[[str], Awaitable[None]]) -> None:
        self._args = connect_args(database_url)
        self._revoked = revoked
        self._task: asyncio.Task[None] | None = None
        self._handling: set[asyncio.Task[None]] = set()
        self.listening = asyncio.Event()
        """Set while the listener's connection is open."""

    def start(self) -> None:
        """Starts listening in a task of its own (it reconnects after a lost connection)."""
        self._task = asyncio.create_task(self._run(), name="gateway-revocations")

    async def close(self) -> None:
        """Stops listening."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            lost = asyncio.Event()
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(timeout=10, **self._args)
                conn.add_termination_listener(lambda _conn, lost=lost: lost.set())
                await conn.add_listener(WAKE_TOKENS_REVOKED, self._notified)
                self.listening.set()
                await lost.wait()
                log.warning("the token revocation listener lost PostgreSQL; reconnecting")
            except (OSError, asyncpg.PostgresError, TimeoutError) as err:
                log.warning("the token revocation listener cannot connect: %s", err)
            finally:
                self.listening.clear()
                if conn is not None and not conn.is_closed():
                    with contextlib.suppress(Exception):
                        await asyncio.shield(conn.close(timeout=2))
            await asyncio.sleep(LISTENER_RETRY_SECONDS)

    def _notified(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        task = asyncio.ensure_future(self._handle(payload))
        self._handling.add(task)
        task.add_done_callback(self._handling.discard)

    async def _handle(self, user_id: str) -> None:
        try:
            await self._revoked(user_id)
        except Exception:
            log.exception("closing the sockets of user %s after a revocation failed", user_id)
