"""What the gateway does with packets it cannot read: it answers them instead of dropping them.

python-socketio decodes a packet before any handler runs, and a packet that fails
to decode (malformed or over-deep JSON, invalid UTF-8, an event that is not an
array) used to raise inside Engine.IO's reader: logged, never answered. Here the
packet's header (type, namespace, ack id) is read first, so an event that asked
for an ack gets one, ``InvalidInput`` naming the problem, and a bad CONNECT gets
``connect_error``. A message over the size limit is answered the same way: the
ASGI receive wrapper swaps it for a short marker before Engine.IO sees it.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qsl, urlencode

import orjson
from engineio import json as engineio_json
from socketio import packet as sio_packet

from gateway.admission import FairServer
from gateway.engine import GatewayEngineIO

log = logging.getLogger("missive.gateway")

MAX_JSON_DEPTH = 32
"""Deepest nesting of arrays and objects a packet may carry (the contract needs 4)."""

Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]

_HEADER = re.compile(r"(\d)(?:(\d{1,10})-)?(/[^,]{0,200},)?(\d{1,100})?")
"""Type, attachment count, namespace and ack id at the start of a Socket.IO packet."""


class MalformedPacket(ValueError):
    """A packet whose header was read but whose payload cannot be used."""

    def __init__(
        self, reason: str, *, packet_type: int | None, namespace: str | None, id: int | None
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        """What is wrong, for the ack."""
        self.packet_type = packet_type
        self.namespace = namespace
        self.id = id


def _depth_over(value: object, limit: int) -> bool:
    """Whether ``value`` nests containers deeper than ``limit`` (iterative: no recursion)."""
    stack: list[tuple[dict[str, Any] | list[Any], int]] = []
    if isinstance(value, dict | list):
        stack.append((value, 1))
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        children = item.values() if isinstance(item, dict) else item
        for child in children:
            if isinstance(child, dict | list):
                stack.append((child, depth + 1))
    return False


def _safe_int(digits: str) -> int:
    """Engine.IO's integer cap: no integer of more than 100 digits is parsed."""
    if len(digits) > 100:
        raise ValueError("Integer is too large")
    return int(digits)


_DECODER = json.JSONDecoder(parse_int=_safe_int)
"""What ``engineio.json.loads`` decodes with, made once: it built a decoder per packet
(its ``parse_int`` option), which was a third of decoding a receipt."""


class StrictJson:
    """The ``json`` module python-socketio's packets use, refusing over-deep nesting."""

    @staticmethod
    def dumps(value: Any, **kwargs: Any) -> str:
        """Compact JSON by orjson: a page of 100 messages encodes in a tenth of the time."""
        return orjson.dumps(value).decode()

    @staticmethod
    def loads(text: str, **kwargs: Any) -> Any:
        """``json.loads`` with Engine.IO's integer cap, at most MAX_JSON_DEPTH levels deep.

        Raises:
            ValueError: malformed JSON, or nested deeper than MAX_JSON_DEPTH.
        """
        try:
            if isinstance(text, str) and not kwargs and not text.startswith("\ufeff"):
                value = _DECODER.decode(text)
            else:  # bytes, a byte order mark (json.loads refuses it), other options
                value = engineio_json.loads(text, **kwargs)
        except RecursionError:
            raise ValueError(f"the JSON is nested deeper than {MAX_JSON_DEPTH} levels") from None
        # Fewer brackets than the limit cannot nest past it: most packets skip the walk.
        brackets = text.count("[") + text.count("{")
        if brackets > MAX_JSON_DEPTH and isinstance(value, dict | list):
            if _depth_over(value, MAX_JSON_DEPTH):
                raise ValueError(f"the JSON is nested deeper than {MAX_JSON_DEPTH} levels")
        return value


class PubSubJson:
    """What the client manager encodes and decodes messages between processes with:
    StrictJson's encoder (what the sockets get is encoded the same way) and the
    standard library's decoder (those messages come from other gateway processes)."""

    dumps = staticmethod(StrictJson.dumps)
    loads = staticmethod(json.loads)


class GatewayPacket(sio_packet.Packet):
    """A Socket.IO packet that says what is wrong with it instead of raising at random."""

    json = StrictJson

    def decode(self, encoded_packet: str | bytes) -> int:
        """Decodes a packet; raises MalformedPacket with its header when it cannot."""
        not_utf8 = None
        if not isinstance(encoded_packet, str | bytes):  # Engine.IO read it as JSON
            raise MalformedPacket(
                "not a Socket.IO packet", packet_type=None, namespace=None, id=None
            )
        if isinstance(encoded_packet, bytes):
            try:
                text = encoded_packet.decode("utf-8")
            except UnicodeDecodeError as err:
                not_utf8 = f"the packet is not valid UTF-8 (byte {err.start})"
                text = encoded_packet.decode("utf-8", "replace")
        else:
            text = encoded_packet
        if not_utf8 is not None:
            raise self._malformed(text, not_utf8)
        try:
            attachments: int = super().decode(text)
        except (ValueError, TypeError, RecursionError) as err:
            raise self._malformed(text, _describe(err)) from None
        if self.packet_type in (sio_packet.EVENT, sio_packet.BINARY_EVENT) and (
            not isinstance(self.data, list) or not self.data or not isinstance(self.data[0], str)
        ):
            raise self._malformed(
                text, "an event must be an array whose first item is the event name"
            )
        return attachments

    def _malformed(self, encoded: str, reason: str) -> MalformedPacket:
        packet_type, namespace, id = _header(encoded)
        return MalformedPacket(reason, packet_type=packet_type, namespace=namespace, id=id)


def _describe(err: BaseException) -> str:
    if isinstance(err, json.JSONDecodeError):
        return f"the packet's JSON is malformed: {err.msg} at character {err.pos}"
    if isinstance(err, RecursionError):
        return f"the JSON is nested deeper than {MAX_JSON_DEPTH} levels"
    return f"malformed packet: {str(err)[:200]}"


def _header(encoded: str) -> tuple[int | None, str | None, int | None]:
    """The type, namespace and ack id of a Socket.IO packet, as far as they can be read."""
    match = _HEADER.match(encoded[:512])
    if match is None:
        return None, None, None
    namespace = match.group(3)[:-1].split("?", 1)[0] if match.group(3) else None
    return int(match.group(1)), namespace, int(match.group(4)) if match.group(4) else None


class GatewayServer(FairServer):
    """The gateway's Socket.IO server: fair reading (FairServer), and an answer to bad packets."""

    def __init__(self, *args: Any, max_message_bytes: int, **kwargs: Any) -> None:
        super().__init__(
            *args, max_http_buffer_size=max_message_bytes, serializer=GatewayPacket, **kwargs
        )
        # The client manager publishes emits to the other processes with this: it took
        # the standard library's encoder, a fifth of announcing a receipt batch.
        self.manager.json = PubSubJson
        self.max_message_bytes = max_message_bytes
        """Largest WebSocket message or polling request body, in bytes."""
        # The marker of an oversized message: nothing a client sends starts with it.
        self._oversize = f"\x00missive-oversize:{secrets.token_hex(8)}:"

    def _engineio_server_class(self) -> type[GatewayEngineIO]:
        """Engine.IO whose WebSocket readers take a burst in one turn (gateway.engine)."""
        return GatewayEngineIO

    def bound_receive(self, receive: Receive) -> Receive:
        """An ASGI ``receive`` that turns a WebSocket message over the limit into a marker.

        Engine.IO would close the socket without a word; the marker keeps the
        packet's header, so the gateway answers it and the socket stays open.
        """
        limit = self.max_message_bytes

        async def bounded() -> MutableMapping[str, Any]:
            event = await receive()
            if event.get("type") != "websocket.receive":
                return event
            text, data = event.get("text"), event.get("bytes")
            if text is not None:
                size = len(text.encode("utf-8", "surrogatepass")) if len(text) * 4 > limit else 0
                head = text[:512]
            elif data is not None:
                size, head = len(data), data[:512].decode("utf-8", "replace")
            else:
                return event
            if size <= limit:
                if text is not None and text[:1] == "4" and text[1:2] in ("[", "{"):
                    # Not Socket.IO (its packets start with a digit), and Engine.IO would
                    # parse it as JSON without a depth limit: hand on what cannot parse.
                    return {"type": "websocket.receive", "text": "4?"}
                return event
            # "4" is Engine.IO's MESSAGE; the Socket.IO header follows it.
            packet_type, namespace, id = _header(head[1:]) if head[:1] == "4" else (None,) * 3
            marker = json.dumps({"size": size, "type": packet_type, "ns": namespace, "id": id})
            return {"type": "websocket.receive", "text": f"4{self._oversize}{marker}"}

        return bounded

    async def _read_packet(self, eio_sid: str, data: Any) -> None:
        """Reads a packet in its turn (FairServer paces the refusals too), answering
        one that is oversized or malformed."""
        if isinstance(data, str) and data.startswith(self._oversize):
            await self._answer_oversized(eio_sid, json.loads(data[len(self._oversize) :]))
            return
        try:
            await super()._read_packet(eio_sid, data)
        except MalformedPacket as err:
            await self._answer(eio_sid, err.packet_type, err.namespace, err.id, err.reason)

    async def _answer_oversized(self, eio_sid: str, marker: dict[str, Any]) -> None:
        reason = (
            f"the packet is {marker['size']} bytes, over the gateway's limit of"
            f" {self.max_message_bytes} (GATEWAY_MAX_MESSAGE_BYTES)"
        )
        pending = self._binary_packet.pop(eio_sid, None)
        if pending is not None:  # an attachment was too large: answer its event
            await self._answer(eio_sid, pending.packet_type, pending.namespace, pending.id, reason)
            return
        await self._answer(eio_sid, marker["type"], marker["ns"], marker["id"], reason)

    async def _answer(
        self,
        eio_sid: str,
        packet_type: int | None,
        namespace: str | None,
        id: int | None,
        reason: str,
    ) -> None:
        """One answer to a packet that cannot be handled: an error ack, connect_error, or none."""
        namespace = namespace or "/"
        if packet_type == sio_packet.CONNECT:
            log.info("connect packet of %s refused: %s", eio_sid, reason)
            await self._send_packet(
                eio_sid,
                self.packet_class(
                    sio_packet.CONNECT_ERROR, data={"message": reason}, namespace=namespace
                ),
            )
            return
        sid = self.manager.sid_from_eio_sid(eio_sid, namespace)
        if packet_type not in (sio_packet.EVENT, sio_packet.BINARY_EVENT) or id is None:
            log.info("dropped a packet of %s that asked no ack: %s", sid or eio_sid, reason)
            return
        if sid is None or not self.manager.is_connected(sid, namespace):
            return
        log.info("event of %s refused: %s", sid, reason)
        error = {"ok": False, "error": {"type": "InvalidInput", "message": reason}}
        await self.send_ack(eio_sid, namespace, id, error)


SAFE_QUERY_KEYS = frozenset({"EIO", "transport"})
"""Query parameters a log line may show; every other value (a token, Engine.IO's sid,
which lets whoever has it post to the session) is redacted."""

_QUERY = re.compile(r"\?[^\s\"']*")


def redact_query(text: str) -> str:
    """``text`` with every query-string value but SAFE_QUERY_KEYS replaced by ``***``."""

    def redact(match: re.Match[str]) -> str:
        pairs = parse_qsl(match.group(0)[1:], keep_blank_values=True)
        kept = [(k, v if k in SAFE_QUERY_KEYS else "***") for k, v in pairs]
        return "?" + urlencode(kept, safe="*")

    return _QUERY.sub(redact, text)


class RedactQueryStrings(logging.Filter):
    """Redacts query strings in log records (uvicorn's request and "[accepted]" lines)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrites the record's message and arguments; never drops it."""
        if isinstance(record.msg, str) and "?" in record.msg:
            record.msg = redact_query(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(
                redact_query(arg) if isinstance(arg, str) and "?" in arg else arg
                for arg in record.args
            )
        return True


SERVER_LOGGERS = ("uvicorn.error", "uvicorn.access", "hypercorn.error", "hypercorn.access")
"""Loggers of the ASGI servers that write request paths (with their query strings)."""


def redact_server_logs() -> None:
    """Puts RedactQueryStrings on the ASGI servers' loggers (once per process)."""
    for name in SERVER_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactQueryStrings) for f in logger.filters):
            logger.addFilter(RedactQueryStrings())
