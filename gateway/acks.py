"""Acks: the one answer every event gets, and how failures become honest ones."""

from __future__ import annotations

import asyncio
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

    async def event(sid: str, *args: object) -> Ack:
        try:
            async with asyncio.timeout(timeout):
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
