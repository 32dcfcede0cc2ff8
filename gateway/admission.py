"""What the gateway lets in: per-user send limits, in-flight caps, and a Temporal breaker.

Every refusal here is immediate and starts nothing, so the ack is honest: a
``RateLimited`` or ``ProviderUnavailable`` from this module means the message
was not stored, and ``retry_after_ms`` says when to try again.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

import socketio
from socketio import packet as sio_packet
from sqlalchemy.exc import SQLAlchemyError
from temporalio.client import RPCTimeoutOrCancelledError
from temporalio.service import RPCError, RPCStatusCode

from missive.config import Settings
from missive.constants import EVENT_MESSAGE_SEND
from missive.errors import MessagingError, ProviderUnavailable, RateLimited
from missive.metrics import Metrics
from missive.ratelimit import SendLimiter, limited

if TYPE_CHECKING:
    from gateway.acks import Ack, Handler

log = logging.getLogger("missive.gateway")

T = TypeVar("T")

LIMIT_CHECK_TIMEOUT = 1.0
"""Longest the shared bucket may take to answer before the send is refused
ProviderUnavailable (the store is down: nothing is started)."""

BREAKER_FAILURES = 3
"""Consecutive "Temporal unavailable" answers that open the breaker."""

BREAKER_OPEN_SECONDS = 2.0
"""While open, sends are answered ProviderUnavailable at once instead of each
waiting out the client's RPC retries; then sends go through again."""

TEMPORAL_DOWN = frozenset(
    {RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED, RPCStatusCode.RESOURCE_EXHAUSTED}
)
"""RPC failures that mean "try again later" rather than a bug."""


class Admission:
    """The gateway's front door for ``message:send`` (one per process)."""

    def __init__(
        self, settings: Settings, limiter: SendLimiter | None, metrics: Metrics | None
    ) -> None:
        self._limiter = limiter
        self._metrics = metrics
        self._per_socket_cap = settings.send_max_in_flight_per_socket
        self._process_cap = settings.gateway_max_in_flight
        self._per_socket: dict[str, int] = {}
        self._users: dict[str, str] = {}
        """Each socket's user, as its last send named it (for refusals from memory)."""
        self._in_flight = 0
        self._failures = 0
        self._open_until = 0.0
        self._last_in_line: dict[str, asyncio.Future[None]] = {}
        """Each socket's latest change in line: done once it and all before it are."""

    @property
    def in_flight(self) -> int:
        """Sends of this process waiting for their ack."""
        return self._in_flight

    def forget(self, sid: str) -> None:
        """A socket disconnected (its sends in flight still finish and are counted down)."""
        self._users.pop(sid, None)
        if self._per_socket.get(sid) == 0:
            del self._per_socket[sid]

    def refusal(self, sid: str) -> MessagingError | None:
        """Why a send of this socket is refused right now, known from memory alone
        (None: it may go on to the user's bucket). Counted as a rejection."""
        if self._per_socket.get(sid, 0) >= self._per_socket_cap:
            self._rejected("in_flight")
            return RateLimited(
                f"{self._per_socket_cap} sends of this connection are waiting for their ack;"
                " wait for one",
                retry_after=0.1,
            )
        if self._in_flight >= self._process_cap:
            self._rejected("overloaded")
            return ProviderUnavailable("the gateway is at capacity; try again", retry_after=0.2)
        wait = self._open_until - time.monotonic()
        if wait > 0:
            self._rejected("temporal_unavailable")
            return ProviderUnavailable(
                "Temporal is unavailable; try again shortly", retry_after=wait
            )
        user_id = self._users.get(sid)
        if user_id is not None and self._limiter is not None:
            wait = self._limiter.refused_for(user_id) or 0.0
            if wait > 0:
                self._rejected("rate_limited")
                return limited(wait)
        return None

    def in_order(self, handler: Handler) -> Handler:
        """``handler`` (a change: a send, an edit, a delete, a membership change) with
        its place in its socket's line, taken as it arrives; ``admit`` waits for its
        turn once the change is admitted.

        A socket's changes start one after another, in the order they came. Run side
        by side, four sends written in a row were stored out of order in 36 of 40
        bursts (whichever lifecycle's first step ran first took the next seq), and of
        three quick edits of a message an older text was left standing in 13 of 20.
        """

        async def ordered(sid: str, data: object) -> Ack:
            place = self.line_up(sid)
            token = _PLACE.set(place)
            try:
                return await handler(sid, data)
            finally:
                _PLACE.reset(token)
                place.leave()

        return ordered

    def line_up(self, sid: str) -> Turn:
        """A change's place among its socket's changes, taken when it arrives (before its
        handler's first await: tasks start in the order their packets were read)."""
        loop = asyncio.get_running_loop()
        mine: asyncio.Future[None] = loop.create_future()
        before = self._last_in_line.get(sid)
        self._last_in_line[sid] = mine
        return Turn(self, sid, before, mine)

    @asynccontextmanager
    async def admit(self, sid: str, user_id: str) -> AsyncIterator[None]:
        """Holds one in-flight place for a send, or refuses it at once.

        Raises:
            RateLimited: the socket has too many sends in flight, or the user's
                bucket is empty.
            ProviderUnavailable: the process is at its in-flight cap, Temporal
                answered unavailable just now (the breaker), or the bucket's
                store did not answer.
        """
        refused = self.refusal(sid)
        if refused is not None:
            raise refused
        self._users[sid] = user_id
        self._per_socket[sid] = self._per_socket.get(sid, 0) + 1
        self._in_flight += 1
        try:
            await self._take(user_id)
            place = _PLACE.get()
            if place is not None:  # in_order: the socket's earlier changes go first
                waited = time.monotonic()
                await place.turn()
                if self._metrics is not None:
                    self._metrics.change_waited(time.monotonic() - waited)
            yield
        finally:
            self._in_flight -= 1
            self._per_socket[sid] -= 1

    async def _take(self, user_id: str) -> None:
        if self._limiter is None:
            return
        try:
            async with asyncio.timeout(LIMIT_CHECK_TIMEOUT):
                await self._limiter.take(user_id)
        except RateLimited:
            self._rejected("rate_limited")
            raise
        except (TimeoutError, SQLAlchemyError, OSError, ConnectionError) as err:
            self._rejected("limit_store_unavailable")
            log.warning("the send limit could not be checked: %s", type(err).__name__)
            raise ProviderUnavailable(
                "the send limit could not be checked (its store is unavailable); try again",
                retry_after=1.0,
            ) from None
        except Exception as err:  # a Redis error: the store is unavailable
            if type(err).__module__.split(".")[0] != "redis":
                raise
            self._rejected("limit_store_unavailable")
            raise ProviderUnavailable(
                "the send limit could not be checked (its store is unavailable); try again",
                retry_after=1.0,
            ) from None

    async def temporal_call(self, call: Awaitable[T]) -> T:
        """Awaits a call into Temporal, opening the breaker when Temporal is down."""
        try:
            result = await call
        except RPCError as err:
            if err.status in TEMPORAL_DOWN:
                self._failed()
            raise
        except RPCTimeoutOrCancelledError:
            self._failed()
            raise
        self._failures = 0
        return result

    def _failed(self) -> None:
        self._failures += 1
        if self._failures >= BREAKER_FAILURES:
            self._open_until = time.monotonic() + BREAKER_OPEN_SECONDS

    def _rejected(self, reason: str) -> None:
        if self._metrics is not None:
            self._metrics.gateway_rejected(EVENT_MESSAGE_SEND, reason)


_PLACE: contextvars.ContextVar[Turn | None] = contextvars.ContextVar(
    "missive_gateway_place", default=None
)
"""The place of the change being handled in its socket's line (``Admission.in_order``)."""


class Turn:
    """One change's place in its socket's line (``Admission.line_up``)."""

    __slots__ = ("_admission", "_before", "_mine", "_sid")

    def __init__(
        self,
        admission: Admission,
        sid: str,
        before: asyncio.Future[None] | None,
        mine: asyncio.Future[None],
    ) -> None:
        self._admission, self._sid, self._before, self._mine = admission, sid, before, mine

    async def turn(self) -> None:
        """Returns once every earlier change of the socket has its answer."""
        if self._before is not None and not self._before.done():
            await asyncio.shield(self._before)  # a deadline here must not end theirs

    def leave(self) -> None:
        """This change has its answer (or gave up): the next may start once the ones
        before this one have theirs too, so a change that timed out waiting lets no
        later one overtake those still running."""
        if self._before is None or self._before.done():
            self._done()
        else:
            self._before.add_done_callback(lambda _: self._done())

    def _done(self) -> None:
        if not self._mine.done():
            self._mine.set_result(None)
        line = self._admission._last_in_line
        if line.get(self._sid) is self._mine:  # the last in line: the socket's line is empty
            del line[self._sid]


class FairServer(socketio.AsyncServer):
    """A Socket.IO server on which one socket cannot take the event loop from the others.

    python-socketio reads a socket's packets one after the other and starts a task
    per event. Here the reading of a socket waits (1) while ``max_events_per_socket``
    of its events are still being handled, and (2) when it sends more than
    ``events_per_second`` packets (bursts of ``events_burst``): events, and every
    other packet too (malformed ones, acks, connects, a binary event's attachments),
    as each costs the reader work. A flooding client then fills its own TCP buffer
    instead of this process's event loop: everyone else's events are never queued
    behind thousands of its refusals, and the flooder still gets an answer to each
    event, in order, at the pace it is read.

    Between the two, an event that asked for an ack and arrives past the socket's
    pace is answered at once, ``RateLimited`` with ``retry_after_ms``, from its
    header alone (no JSON decoded, no handler run, nothing done), at up to
    ``refusals_per_second`` (bursts of ``refusals_burst``). A client that floods
    hears "slow down" within milliseconds instead of after its whole backlog was
    read; past that budget too, its socket is paced again, so a flood's cost to the
    process stays bounded. ``refusals_burst=0`` paces everything.

    It overrides ``_handle_eio_message`` and ``_handle_event`` of python-socketio 5
    (pinned ``<6``); the gateway traffic and malformed-packet tests fail if those
    methods change. A subclass that reads packets itself overrides ``_read_packet``.
    """

    def __init__(
        self,
        *args: object,
        max_events_per_socket: int,
        events_per_second: float,
        events_burst: int,
        refusals_per_second: float = 0.0,
        refusals_burst: int = 0,
        metrics: Metrics | None = None,
        **kwargs: object,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._max_events = max_events_per_socket
        self._rate = events_per_second
        self._burst = float(events_burst)
        self._refusal_rate = refusals_per_second
        self._refusal_burst = float(refusals_burst)
        self._paced_refusals = (
            metrics.gateway_rejections.labels(event="*", reason="socket_rate")
            if metrics is not None
            else None
        )
        self._paced_message = (
            f"this connection sends more than {events_per_second:g} events a second;"
            " nothing was done: wait "
        )
        self._sockets: dict[str, _SocketGate] = {}
        self._in_hand: set[asyncio.Task[None]] = set()
        self.direct_events: dict[str, Callable[..., Awaitable[object]]] = {}
        """Handlers of events read and answered here instead of through python-socketio's
        dispatch (see ``_handle_direct``): by event name, each called with the socket's
        sid and the event's arguments, returning the ack. Handlers that never raise."""
        self.quick_refusal: Callable[[str, str], dict[str, Any] | None] | None = None
        """Given a socket's sid and an event's name (read from the packet's header), the
        ack refusing it when that is known from memory alone (a send past the
        socket's in-flight cap or its user's empty bucket), else None: answered
        without decoding the payload or starting a handler."""

    async def _handle_eio_message(self, eio_sid: str, data: Any) -> None:
        gate = self._sockets.get(eio_sid)
        if gate is None:
            now = time.monotonic()
            gate = self._sockets[eio_sid] = _SocketGate(
                asyncio.Semaphore(self._max_events), self._burst, now, self._refusal_burst
            )
        header = self._event_header(eio_sid, data)
        wait = gate.take(self._rate, self._burst)
        if wait > 0:
            if header is not None and gate.take_refusal(self._refusal_rate, self._refusal_burst):
                gate.tokens += 1.0  # not read: it leaves the socket's pace as it was
                if self._paced_refusals is not None:
                    self._paced_refusals.inc()
                await self.send_ack(eio_sid, header.namespace, header.id, self._paced(wait))
                return
            await asyncio.sleep(wait)  # this socket's reader waits; the others go on
        if header is not None and header.event is not None:
            if self.quick_refusal is not None:
                answer = self.quick_refusal(header.sid, header.event)
                if answer is not None:
                    await self.send_ack(eio_sid, header.namespace, header.id, answer)
                    return
            handler = self.direct_events.get(header.event)
            if handler is not None and header.namespace == "/":
                args = self._direct_args(eio_sid, data, header)
                if args is not None:
                    await self._start_handler(
                        eio_sid,
                        "/",
                        lambda sid: self._handle_direct(handler, sid, eio_sid, header.id, args),
                    )
                    return
        await self._read_packet(eio_sid, data)

    def _direct_args(self, eio_sid: str, data: str, header: _EventHeader) -> list[object] | None:
        """An event's arguments, decoded as python-socketio would (the same strict JSON),
        or None to leave the packet to python-socketio (it answers what cannot decode)."""
        if eio_sid in self._binary_packet:  # what follows a binary event is its attachment
            return None
        try:
            value = self.packet_class.json.loads(data[header.body_at :])
        except ValueError:
            return None
        if not isinstance(value, list) or not value or value[0] != header.event:
            return None
        return value[1:]

    async def _handle_direct(
        self,
        handler: Callable[..., Awaitable[object]],
        sid: str,
        eio_sid: str,
        id: int,
        args: list[object],
    ) -> None:
        """Runs an event's handler and sends its ack: what python-socketio's dispatch does
        for it (``_handle_event_internal``), without the packet objects, the handler
        lookup and the checks around them (in a profile of a receipt burst, a third of
        the gateway's CPU went to that dispatch and the packet objects)."""
        answer = await handler(sid, *args)
        await self.send_ack(eio_sid, "/", id, answer)

    def _event_header(self, eio_sid: str, data: Any) -> _EventHeader | None:
        """The header of an EVENT in text that asks for an ack, from a connected socket
        (None for anything else: binary events and other packets are only paced)."""
        if not isinstance(data, str) or data[:1] != "2":
            return None
        match = _EVENT_HEADER.match(data)
        if match is None:
            return None
        namespace = match.group(1)[:-1] if match.group(1) else "/"
        sid = self.manager.sid_from_eio_sid(eio_sid, namespace)
        if sid is None or not self.manager.is_connected(sid, namespace):
            return None  # python-socketio drops it: let it
        return _EventHeader(namespace, sid, int(match.group(2)), match.group(3), match.end(2))

    def _paced(self, wait: float) -> dict[str, Any]:
        """The ack of an event refused because its socket sends past the pace."""
        retry_ms = max(1, math.ceil(wait * 1000))
        return {
            "ok": False,
            "error": {
                "type": "RateLimited",
                "message": f"{self._paced_message}{retry_ms} ms",
                "retry_after_ms": retry_ms,
            },
        }

    async def send_ack(self, eio_sid: str, namespace: str, id: int, answer: object) -> None:
        """Sends one ack (an event's answer, JSON without binary parts) to a socket: the
        text python-socketio's ACK packet encodes to, written without building one."""
        where = "" if not namespace or namespace == "/" else f"{namespace},"
        encoded = f"{sio_packet.ACK}{where}{id}{self.packet_class.json.dumps([answer])}"
        await self.eio.send(eio_sid, encoded)

    async def _read_packet(self, eio_sid: str, data: Any) -> None:
        """Reads one packet of a socket, in its turn: python-socketio's dispatch."""
        await super()._handle_eio_message(eio_sid, data)

    async def _handle_event(
        self, eio_sid: str, namespace: str | None, id: int | None, data: list[object]
    ) -> None:
        namespace = namespace or "/"
        await self._start_handler(
            eio_sid,
            namespace,
            lambda sid: self._handle_event_internal(self, sid, eio_sid, data, namespace, id),
        )

    async def _start_handler(
        self, eio_sid: str, namespace: str, run: Callable[[str], Coroutine[Any, Any, None]]
    ) -> None:
        """Starts an event's handler (``run``, given the socket's sid) in a task of its own
        once the socket has fewer than ``max_events_per_socket`` in hand."""
        gate = self._sockets.get(eio_sid)
        if gate is None:  # the socket closed while its packet waited for its turn
            return
        await gate.in_hand.acquire()
        sid = self.manager.sid_from_eio_sid(eio_sid, namespace)
        if not self.manager.is_connected(sid, namespace):
            gate.in_hand.release()
            return
        task = asyncio.ensure_future(run(sid))
        self._in_hand.add(task)
        task.add_done_callback(self._in_hand.discard)
        task.add_done_callback(lambda _: gate.in_hand.release())

    async def _handle_eio_disconnect(self, eio_sid: str, reason: object = None) -> None:
        self._sockets.pop(eio_sid, None)
        await super()._handle_eio_disconnect(eio_sid, reason)


class _EventHeader(NamedTuple):
    namespace: str
    sid: str
    id: int
    event: str | None
    body_at: int
    """Where the event's JSON array starts in the packet."""


_EVENT_HEADER = re.compile(r'2(/[^,]{0,200},)?(\d{1,15})\[(?:"([a-z:_]{1,64})")?')
"""An EVENT packet in text that asks for an ack: its namespace, ack id and (when plain)
its event name."""


class _SocketGate:
    """One socket's events in hand, its event bucket and its refusal bucket."""

    __slots__ = ("at", "in_hand", "refusals", "refusals_at", "tokens")

    def __init__(
        self, in_hand: asyncio.Semaphore, tokens: float, at: float, refusals: float
    ) -> None:
        self.in_hand, self.tokens, self.at = in_hand, tokens, at
        self.refusals, self.refusals_at = refusals, at

    def take_refusal(self, rate: float, burst: float) -> bool:
        """Takes a refusal token if there is one."""
        now = time.monotonic()
        self.refusals = min(burst, self.refusals + (now - self.refusals_at) * rate)
        self.refusals_at = now
        if self.refusals < 1.0:
            return False
        self.refusals -= 1.0
        return True

    def take(self, rate: float, burst: float) -> float:
        """Takes a token; returns how long to wait for it (0: there was one)."""
        now = time.monotonic()
        self.tokens = min(burst, self.tokens + (now - self.at) * rate) - 1.0
        self.at = now
        return 0.0 if self.tokens >= 0 else -self.tokens / rate
