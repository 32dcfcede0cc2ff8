"""Acks: the one answer every event gets, and how failures become honest ones."""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from temporalio.client import RPCTimeoutOrCancelledError
from temporalio.service import RPCError, RPCStatusCode

from gateway.admission import TEMPORAL_DOWN
from missive.errors import InvalidInput, MessagingError

log = logging.getLogger("missive.gateway")

Ack = dict[str, Any]
Handler = Callable[[str, object], Awaitable[Ack]]


def guarded(name: str, handler: Handler, *, timeout: float) -> Callable[..., Awaitable[Ack]]:
    """Wraps an event handler so that it always acks, within ``timeout``, and never raises.

    A domain error acks its type and message; a deadline acks ``Timeout`` (the
    event may have happened: sending it again is safe); Temporal or PostgreSQL
    unavailable acks ``ProviderUnavailable`` with ``retry_after_ms``; anything else
    is logged and acks ``InternalError``.
    """

    deadline = Deadlines(timeout)

    async def event(sid: str, *args: object) -> Ack:
        try:
            async with deadline():
                return await handler(sid, args[0] if args else None)
        except MessagingError as err:
            return error(err.type, str(err), retry_after=getattr(err, "retry_after", None))
        except (TimeoutError, RPCTimeoutOrCancelledError):
            log.warning("%s from %s got no answer in %ss", name, sid, timeout)
            return error("Timeout", "no answer in time; sending it again is safe")
        except RPCError as err:
            answer = rpc_answer(err)
            if answer is None:
                log.exception("%s from %s failed", name, sid)
                return error("InternalError", "internal error")
            log.warning("%s from %s: %s (%s)", name, sid, answer["error"]["type"], err.message)
            return answer
        except UnicodeEncodeError:  # a lone surrogate ("\ud800") in a field we store
            return error("InvalidInput", "a string in the payload is not valid Unicode")
        except SQLAlchemyError as err:
            log.warning("%s from %s: database unavailable (%s)", name, sid, first_line(err))
            return error(
                "ProviderUnavailable",
                "the database is unavailable; try again shortly",
                retry_after=1.0,
            )
        except Exception:
            log.exception("%s from %s failed", name, sid)
            return error("InternalError", "internal error")

    return event


class Deadlines:
    """Deadlines of one length for many tasks, kept by one timer.

    ``asyncio.timeout`` schedules a timer per use. With thousands of events in hand,
    every handle went through the loop's heap by Python-level comparisons (the
    cancelled ones stay in it until they come due): in a profile, a tenth of the
    gateway's CPU per receipt. Deadlines of one length fall due in the order they
    were set, so one queue in that order and one timer, every ``resolution``
    seconds while any is set, keep them all. Use ``async with deadlines():`` as
    ``asyncio.timeout``: past its deadline (at most ``resolution`` late) the task is
    cancelled and the block raises TimeoutError.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._resolution = min(0.1, seconds / 10)
        self._set: collections.deque[_Deadline] = collections.deque()
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def __call__(self) -> _Deadline:
        """A deadline ``seconds`` from when its block is entered."""
        return _Deadline(self)

    def _add(self, deadline: _Deadline, loop: asyncio.AbstractEventLoop) -> None:
        if loop is not self._loop:  # first use, or a new loop: the old one's timer is gone
            self._loop, self._timer = loop, None
            self._set.clear()
        self._set.append(deadline)
        if self._timer is None:
            self._timer = loop.call_later(self._resolution, self._sweep)

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        pending = self._set
        while pending and (pending[0].state != _OPEN or pending[0].due <= now):
            pending.popleft().expire()
        self._timer = loop.call_later(self._resolution, self._sweep) if pending else None


_OPEN, _EXPIRING, _CLOSED = range(3)


class _Deadline:
    """One task's deadline: ``asyncio.timeout``'s cancel-and-raise, without its timer."""

    __slots__ = ("_cancelling", "_deadlines", "_task", "due", "state")

    def __init__(self, deadlines: Deadlines) -> None:
        self._deadlines = deadlines
        self.state = _OPEN
        self.due = 0.0

    async def __aenter__(self) -> None:
        task = asyncio.current_task()
        assert task is not None, "a deadline is kept for a task"
        self._task = task
        self._cancelling = task.cancelling()
        loop = asyncio.get_running_loop()
        self.due = loop.time() + self._deadlines.seconds
        self._deadlines._add(self, loop)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        expired, self.state = self.state == _EXPIRING, _CLOSED
        # As asyncio.timeout: our cancel, and no other since, becomes TimeoutError.
        if expired and self._task.uncancel() <= self._cancelling:
            if exc_type is asyncio.CancelledError and exc is not None:
                raise TimeoutError from exc

    def expire(self) -> None:
        """Cancels the task if its block is still running (the sweep found it due)."""
        if self.state == _OPEN:
            self.state = _EXPIRING
            self._task.cancel()


async def unknown_event(event: str, sid: str, *args: object) -> Ack:
    """Any event the gateway does not know: acked InvalidInput naming it."""
    return error("InvalidInput", f"unknown event {event[:64]!r}: see the README's events")


def error(type: str, message: str, *, retry_after: float | None = None) -> Ack:
    """The ack of a failed event: ``{"ok": false, "error": {"type", "message", ...}}``."""
    body: dict[str, Any] = {"type": type, "message": message}
    if retry_after is not None:
        body["retry_after_ms"] = max(1, round(retry_after * 1000))
    return {"ok": False, "error": body}


def first_line(err: BaseException) -> str:
    """The first line of an error (a driver's original error for SQLAlchemy's), at most 200."""
    lines = str(getattr(err, "orig", None) or err).splitlines()
    return lines[0][:200] if lines else type(err).__name__


def rpc_answer(err: RPCError) -> Ack | None:
    """The honest ack for a Temporal RPC failure, or None for a bug (InternalError).

    A deadline means the call may have happened (Timeout: resend the same
    client_message_id); unavailable and a lifecycle whose workflow task is failing
    (PostgreSQL down while it persists) mean try again later. Either way a resend
    stores the message at most once.
    """
    if err.status in (RPCStatusCode.DEADLINE_EXCEEDED, RPCStatusCode.CANCELLED):
        return error("Timeout", "no answer in time; sending it again is safe")
    if err.status in TEMPORAL_DOWN:
        return error(
            "ProviderUnavailable", "Temporal is unavailable; try again shortly", retry_after=1.0
        )
    if err.status is RPCStatusCode.FAILED_PRECONDITION and "failed state" in err.message:
        return error(
            "ProviderUnavailable",
            "the message's lifecycle is retrying (a dependency is down); send it again shortly",
            retry_after=1.0,
        )
    return None


def require_object(data: object) -> dict[str, Any]:
    """An event's payload, which must be a JSON object."""
    if not isinstance(data, dict):
        raise InvalidInput(f"the payload must be an object, got {type(data).__name__}")
    return data


def optional_object(data: object) -> dict[str, Any]:
    """An event's payload that may be omitted (an empty object then)."""
    return {} if data is None else require_object(data)
