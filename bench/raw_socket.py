"""Socket.IO v4 clients over one WebSocket, written by hand: frames out, acks and events in.

python-socketio's client reads each frame in a task of its own (three turns of its
event loop), so a burst of a thousand acks takes it longer to read than the gateway
takes to send them. A flooder is a script on another machine; these clients cost a
few microseconds a frame, so what a benchmark measures with them is the gateway:

- ``RawSocket`` writes frames back to back and reads their acks (the flood);
- ``ChatSocket`` is a chat app's connection: ``call`` an event and await its ack,
  ``on`` an event the server pushes (the chat mix's 8-58 members, whose reading
  would otherwise take a third of the CPU the server is measured on).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp


class RawSocket:
    """One connected socket: ``write`` frames, ``read_acks`` their answers."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self.acks: dict[int, Any] = {}
        """Each ack received, by the id its event asked with."""
        self.answered_at: dict[int, float] = {}
        """When each ack was read (``time.perf_counter()``)."""

    @staticmethod
    def event(id: int, event: str, data: object) -> str:
        """The text frame of an event that asks for ack ``id``."""
        return f"42{id}{json.dumps([event, data])}"

    async def write(self, frames: list[str], *, sent_at: dict[int, float] | None = None) -> None:
        """Writes the frames back to back (into ``sent_at``, when each was written,
        by its position in ``frames``)."""
        for i, frame in enumerate(frames):
            if sent_at is not None:
                sent_at[i] = time.perf_counter()
            await self._ws.send_str(frame)

    async def read_acks(self, count: int, *, within: float) -> None:
        """Reads until ``count`` acks arrived in all (within ``within`` seconds),
        answering the server's pings."""
        async with asyncio.timeout(within):
            while len(self.acks) < count:
                frame = await self._ws.receive_str()
                if frame == "2":
                    await self._ws.send_str("3")
                elif frame.startswith("43"):
                    id, _, rest = frame[2:].partition("[")
                    self.answered_at[int(id)] = time.perf_counter()
                    self.acks[int(id)] = json.loads("[" + rest)[0]


class ChatSocket:
    """A connected chat client: ``call`` waits for an ack, ``on`` hears pushed events.

    One reader task reads every frame in turn (no task per frame) and answers the
    server's pings; handlers run in it, so they must not block (start a task).
    """

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, early: list[str] | None = None) -> None:
        self._ws = ws
        self._early = early or []
        self._next_id = 0
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._handlers: dict[str, Callable[[Any], None]] = {}
        self._reader: asyncio.Task[None] | None = None

    def on(self, event: str, handler: Callable[[Any], None]) -> None:
        """Calls ``handler(data)`` for each ``event`` the server pushes."""
        self._handlers[event] = handler

    async def call(self, event: str, data: object, *, within: float) -> Any:
        """Emits ``event`` and returns its ack (TimeoutError after ``within`` seconds)."""
        id, self._next_id = self._next_id, self._next_id + 1
        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[id] = answer
        try:
            await self._ws.send_str(RawSocket.event(id, event, data))
            async with asyncio.timeout(within):
                return await answer
        finally:
            self._waiting.pop(id, None)

    def start(self) -> None:
        """Starts reading, once the handlers are set: events that came before the
        connect's answer first."""
        self._reader = asyncio.create_task(self._read(), name="chat-socket-reader")

    async def close(self) -> None:
        """Stops reading and closes the WebSocket; calls still waiting fail at once with
        ConnectionError, as a client's do when its connection drops."""
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        self._fail_waiting()
        await self._ws.close()

    async def _read(self) -> None:
        early, self._early = self._early, []
        for held in early:
            self._frame_in(held)
        async for message in self._ws:
            if message.type is not aiohttp.WSMsgType.TEXT:
                break
            frame: str = message.data
            if frame == "2":
                await self._ws.send_str("3")
            else:
                self._frame_in(frame)
        self._fail_waiting()

    def _frame_in(self, frame: str) -> None:
        if frame.startswith("43"):
            id, _, rest = frame[2:].partition("[")
            answer = self._waiting.get(int(id))
            if answer is not None and not answer.done():
                answer.set_result(json.loads("[" + rest)[0])
        elif frame.startswith("42"):
            event, data = json.loads(frame[frame.index("[") :])[:2]
            handler = self._handlers.get(event)
            if handler is not None:
                handler(data)

    def _fail_waiting(self) -> None:
        for answer in self._waiting.values():
            if not answer.done():
                answer.set_exception(ConnectionError("the connection closed"))


@asynccontextmanager
async def _connected(
    url: str, token: str
) -> AsyncIterator[tuple[aiohttp.ClientWebSocketResponse, list[str]]]:
    """A WebSocket to the gateway that has passed Engine.IO's open and Socket.IO's
    connect, and the frames that came before the connect's answer.

    python-socketio puts a socket in its rooms in the connect handler and sends the
    CONNECT packet once the handler returns, so an event emitted to one of those rooms
    meanwhile (a notification of the returning user) can arrive first; socket.io's
    client keeps such events and hands them on once connected, and so does ChatSocket.
    """
    ws_url = url.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket"
    async with aiohttp.ClientSession() as http, http.ws_connect(ws_url) as ws:
        opened = await ws.receive_str()
        if not opened.startswith("0{"):
            raise RuntimeError(f"not an Engine.IO open packet: {opened[:80]}")
        await ws.send_str("40" + json.dumps({"token": token}))
        early: list[str] = []
        while not (connected := await ws.receive_str()).startswith("40{"):
            if not connected.startswith("42"):
                raise RuntimeError(f"the gateway refused the connection: {connected[:200]}")
            early.append(connected)
        yield ws, early


@asynccontextmanager
async def raw_socket(url: str, token: str) -> AsyncIterator[RawSocket]:
    """A RawSocket connected to the gateway at ``url`` (http://...) with ``token``."""
    async with _connected(url, token) as (ws, _):
        yield RawSocket(ws)


@asynccontextmanager
async def chat_socket(url: str, token: str) -> AsyncIterator[ChatSocket]:
    """A ChatSocket connected to the gateway at ``url`` (http://...) with ``token``,
    reading until the block ends (events that came before the connect's answer first,
    once its handlers are set: ``start``)."""
    async with _connected(url, token) as (ws, early):
        client = ChatSocket(ws, early)
        try:
            yield client
        finally:
            await client.close()
