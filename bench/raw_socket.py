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

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
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
        """Starts reading (once connected)."""
        self._reader = asyncio.create_task(self._read(), name="chat-socket-reader")

    async def close(self) -> None:
        """Stops reading and closes the WebSocket."""
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        await self._ws.close()

    async def _read(self) -> None:
        async for message in self._ws:
            if message.type is not aiohttp.WSMsgType.TEXT:
                break
            frame: str = message.data
            if frame == "2":
                await self._ws.send_str("3")
            elif frame.startswith("43"):
                id, _, rest = frame[2:].partition("[")
                answer = self._waiting.get(int(id))
                if answer is not None and not answer.done():
                    answer.set_result(json.loads("[" + rest)[0])
            elif frame.startswith("42"):
                event, data = json.loads(frame[frame.index("[") :])[:2]
                handler = self._handlers.get(event)
                if handler is not None:
                    handler(data)
        for answer in self._waiting.values():
            if not answer.done():
                answer.set_exception(ConnectionError("the gateway closed the socket"))


@asynccontextmanager
async def _connected(url: str, token: str) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
    """A WebSocket to the gateway that has passed Engine.IO's open and Socket.IO's connect."""
    ws_url = url.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket"
    async with aiohttp.ClientSession() as http, http.ws_connect(ws_url) as ws:
        opened = await ws.receive_str()
        if not opened.startswith("0{"):
            raise RuntimeError(f"not an Engine.IO open packet: {opened[:80]}")
        await ws.send_str("40" + json.dumps({"token": token}))
        connected = await ws.receive_str()
        if not connected.startswith("40{"):
            raise RuntimeError(f"the gateway refused the connection: {connected[:200]}")
        yield ws


@asynccontextmanager
async def raw_socket(url: str, token: str) -> AsyncIterator[RawSocket]:
    """A RawSocket connected to the gateway at ``url`` (http://...) with ``token``."""
    async with _connected(url, token) as ws:
        yield RawSocket(ws)


@asynccontextmanager
async def chat_socket(url: str, token: str) -> AsyncIterator[ChatSocket]:
    """A ChatSocket connected to the gateway at ``url`` (http://...) with ``token``,
    reading until the block ends."""
    async with _connected(url, token) as ws:
        client = ChatSocket(ws)
        client.start()
        try:
            yield client
        finally:
            await client.close()
