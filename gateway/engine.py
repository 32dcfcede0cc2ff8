"""Engine.IO under the gateway, reading a WebSocket's buffered messages in one turn.

python-engineio 4 reads a WebSocket one message per task: each message waits for a
new task to start and for ``wait_for`` to hand its result back, three turns of the
event loop. On a busy gateway a turn takes milliseconds, so a client's burst of a
thousand packets was read over seconds even when each one was refused from its
header in microseconds (bench/flood.py: the 200th refusal answered 1.9 s into the
flood). Here a socket's reader takes every message its connection has already
buffered, up to READ_BATCH, before it lets the loop turn, and keeps the idle
timeout with ``asyncio.timeout`` instead of a task per message; its writer wakes
the same way, in the turn a packet is queued for it. What each packet then does is
unchanged: FairServer paces and admits it, answers an event that asks an ack itself
(python-socketio dispatches the other packets), and each event's handler runs in a
task of its own.

It overrides ``AsyncSocket._websocket_handler`` and ``poll`` of python-engineio 4
(pinned ``<5``); tests/integration/test_gateway_reading.py fails if the reader changes.
Its server's ``send_packet`` drops an answer to a closed socket without a warning
(test_gateway_traffic's disconnect test fails if the warning comes back).
"""

from __future__ import annotations

import asyncio
from typing import Any

import engineio
from engineio import async_socket, exceptions, packet

READ_BATCH = 64
"""Most messages one socket's reader takes from its buffer before the loop turns."""


class BufferedReadingSocket(async_socket.AsyncSocket):  # type: ignore[misc]
    """An Engine.IO socket whose WebSocket reader drains what is buffered per turn."""

    connected: bool
    upgrading: bool
    upgraded: bool

    async def _websocket_handler(self, ws: Any) -> None:
        """Engine.IO's WebSocket handler (upgrade, writer, reader), reading in batches."""
        if self.connected:  # an upgrade from polling: Engine.IO's probe exchange
            self.upgrading = True  # hold packet sends during the upgrade
            if not await self._upgrade(ws):
                self.upgrading = False
                return
            self.upgraded = True
            self.upgrading = False
        else:
            self.connected = True
            self.upgraded = True
        writer_task = asyncio.ensure_future(self._write(ws))
        self.server.logger.info("%s: Upgrade to websocket successful", self.sid)
        try:
            await self._read(ws)
        finally:
            await self.queue.put(None)  # unlock the writer task so it can exit
            await writer_task
            await self.close(wait=False, abort=True, reason=self.server.reason.TRANSPORT_CLOSE)

    async def _upgrade(self, ws: Any) -> bool:
        """The probe and UPGRADE packets of a socket moving from polling to WebSocket."""
        try:
            probe = packet.Packet(encoded_packet=await self._wait(ws))
        except OSError:
            return False
        if probe.packet_type != packet.PING or probe.data != "probe":
            self.server.logger.info("%s: Failed websocket upgrade, no PING packet", self.sid)
            return False
        await ws.send(packet.Packet(packet.PONG, data="probe").encode())
        await self.queue.put(packet.Packet(packet.NOOP))  # end the pending poll
        try:
            upgrade = packet.Packet(encoded_packet=await self._wait(ws))
        except OSError:
            return False
        if upgrade.packet_type != packet.UPGRADE:
            self.upgraded = False
            self.server.logger.info(
                "%s: Failed websocket upgrade, expected UPGRADE packet", self.sid
            )
            return False
        return True

    async def poll(self) -> list[Any]:
        """The packets queued for the client, waiting up to the ping timeout for the
        first: Engine.IO's poll without its task and ``wait_for`` per wait, so the
        writer wakes in the turn a packet is queued instead of three turns later.

        Raises:
            engineio.exceptions.QueueEmpty: nothing came within the timeout, or the
                wait was cancelled (Engine.IO's answer to both).
        """
        try:
            async with asyncio.timeout(self.server.ping_interval + self.server.ping_timeout):
                first = await self.queue.get()
        except (TimeoutError, asyncio.CancelledError):
            raise exceptions.QueueEmpty() from None
        self.queue.task_done()
        if first is None:  # the socket is closing
            return []
        packets = [first]
        while True:
            try:
                pkt = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                break
            self.queue.task_done()
            if pkt is None:
                self.queue.put_nowait(None)  # for the next poll: the socket is closing
                break
            packets.append(pkt)
        return packets

    async def _write(self, ws: Any) -> None:
        """Sends the socket's queued packets until the queue ends or the socket fails."""
        while True:
            try:
                packets = await self.poll()
            except exceptions.QueueEmpty:
                break
            if not packets:  # the connection closed
                break
            try:
                for pkt in packets:
                    await ws.send(pkt.encode())
            except Exception:
                break
        await ws.close()

    async def _read(self, ws: Any) -> None:
        """Reads messages until the client goes or is silent past the ping timeout.

        ``ws.wait()`` returns at once while the connection has messages buffered, so
        up to READ_BATCH of them are read in one turn of the loop; then it turns.
        """
        idle = self.server.ping_interval + self.server.ping_timeout
        loop = asyncio.get_running_loop()
        read = 0
        try:
            async with asyncio.timeout_at(loop.time() + idle) as deadline:
                moved = loop.time()
                while True:
                    try:
                        data = await self._wait(ws)
                    except Exception:  # closed, or over the size limit: Engine.IO's answer
                        return
                    if data is None:  # the client closed the connection
                        return
                    now = loop.time()
                    if now - moved > 1.0:  # a new timer per message costs a burst dearly
                        deadline.reschedule(now + idle)
                        moved = now
                    try:
                        await self.receive(packet.Packet(encoded_packet=data))
                    except exceptions.UnknownPacketError:
                        pass
                    except exceptions.SocketIsClosedError:
                        self.server.logger.info("Receive error -- socket is closed")
                        return
                    except Exception:
                        self.server.logger.exception("Unknown receive error")
                    read += 1
                    if read >= READ_BATCH:
                        read = 0
                        await asyncio.sleep(0)
        except TimeoutError:
            return

    async def _wait(self, ws: Any) -> Any:
        data = await ws.wait()
        if data and len(data) > self.server.max_http_buffer_size:
            raise ValueError("packet is too large")
        return data


class GatewayEngineIO(engineio.AsyncServer):  # type: ignore[misc]
    """python-engineio's server whose sockets are BufferedReadingSocket."""

    async def send_packet(self, sid: str, pkt: Any) -> None:
        """Engine.IO's send, quiet for a socket that has closed: a phone that drops off
        with answers on their way is routine, and python-engineio logged a warning per
        lost answer (55 in a chat-mix run with a reconnect a second). Its client sends
        again or reads what it missed when it is back."""
        socket = self.sockets.get(sid)
        if socket is None or socket.closed:
            self.logger.debug("not sent to sid %s: the socket closed", sid)
            return
        await super().send_packet(sid, pkt)

    async def _trigger_event(self, event: str, *args: Any, **kwargs: Any) -> Any:
        # Engine.IO creates the socket, then triggers "connect" before it reads
        # anything: the socket takes the buffered reader there.
        if event == "connect":
            socket = self.sockets.get(args[0])
            if type(socket) is async_socket.AsyncSocket:
                socket.__class__ = BufferedReadingSocket
        return await super()._trigger_event(event, *args, **kwargs)
