"""A Socket.IO v4 client over one WebSocket, written by hand: frames out, acks in.

python-socketio's client reads each frame in a task of its own (three turns of its
event loop), so a burst of a thousand acks takes it longer to read than the gateway
takes to send them. A flooder is a script on another machine; this client costs a
few microseconds a frame, so what a flood measures with it is the gateway.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
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


@asynccontextmanager
async def raw_socket(url: str, token: str) -> AsyncIterator[RawSocket]:
    """A RawSocket connected to the gateway at ``url`` (http://...) with ``token``."""
    ws_url = url.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket"
    async with aiohttp.ClientSession() as http, http.ws_connect(ws_url) as ws:
        opened = await ws.receive_str()
        if not opened.startswith("0{"):
            raise RuntimeError(f"not an Engine.IO open packet: {opened[:80]}")
        await ws.send_str("40" + json.dumps({"token": token}))
        connected = await ws.receive_str()
        if not connected.startswith("40{"):
            raise RuntimeError(f"the gateway refused the connection: {connected[:200]}")
        yield RawSocket(ws)
