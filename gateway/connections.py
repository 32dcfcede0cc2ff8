"""Who is on a socket: authentication at connect, expiry, refresh and revocation."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

import socketio

from gateway import sessions
from gateway.acks import Ack, require_object
from gateway.sessions import ExpiryTimers
from gateway.transport import GatewayServer
from missive.constants import EVENT_SESSION_CLOSED, EVENT_TOKEN_REFRESH, user_room
from missive.errors import (
    InvalidInput,
    InvalidToken,
    ProviderUnavailable,
    TokenExpired,
    TokenRevoked,
)
from missive.sessions import TokenRevocations, require_not_revoked
from missive.tokens import TokenClaims, read_token

log = logging.getLogger("missive.gateway")


class Connections:
    """The gateway's sockets and their tokens.

    A socket authenticates once at connect (the token in ``auth``); every event
    then asks ``user_of``, which refuses an expired token and re-reads revocation
    at most every ``TOKEN_RECHECK_SECONDS`` (a revocation is also pushed through
    PostgreSQL ``NOTIFY``: ``revoked``).
    """

    def __init__(
        self,
        sio: GatewayServer,
        secret: str,
        *,
        rooms_of: Callable[[str], Awaitable[list[str]]],
    ) -> None:
        """Builds the registry; ``open`` gives it the revocation store once it exists.

        Args:
            sio: The Socket.IO server whose sockets these are.
            secret: The gateway secret tokens are signed with.
            rooms_of: The rooms a user's socket enters at connect (besides the user's own).
        """
        self._sio = sio
        self._secret = secret
        self._rooms_of = rooms_of
        self._revocations: TokenRevocations | None = None
        self._expiry = ExpiryTimers(self.close_socket)
        self._closing: set[asyncio.Task[None]] = set()
        self._rechecks: dict[str, asyncio.Future[None]] = {}

    def open(self, revocations: TokenRevocations) -> None:
        """Starts answering: tokens are checked against ``revocations`` from now on."""
        self._revocations = revocations

    def close(self) -> None:
        """Stops answering and cancels the expiry timers."""
        self._revocations = None
        self._expiry.close()

    async def connect(self, sid: str, environ: dict[str, Any], auth: object = None) -> None:
        """Authenticates a socket and puts it in its user's and conversations' rooms.

        Raises:
            socketio.exceptions.ConnectionRefusedError: no, a forged, malformed,
                expired or revoked token, a token in the query string, an unknown
                user, or the gateway is not ready.
        """
        if "token" in parse_qs(environ.get("QUERY_STRING", "")):
            # Query strings end up in access logs and proxies' logs: never accept one there.
            raise socketio.exceptions.ConnectionRefusedError(
                'token in the query string: send it in auth ({"token": ...})'
            )
        token = auth.get("token") if isinstance(auth, dict) else None
        try:
            claims = read_token(self._secret, token)
        except InvalidToken as err:
            raise socketio.exceptions.ConnectionRefusedError(str(err)) from None
        user_id = claims.user_id
        try:
            await self._check_revocation(claims)
            rooms = await self._rooms_of(user_id)
        except (InvalidToken, ProviderUnavailable) as err:
            raise socketio.exceptions.ConnectionRefusedError(str(err)) from None
        except Exception:
            log.exception("connect of user %s failed", user_id)
            raise socketio.exceptions.ConnectionRefusedError("internal error") from None
        await self._sio.save_session(sid, _session(claims))
        self._expiry.schedule(sid, claims.expires_at)
        await self._sio.enter_room(sid, user_room(user_id))
        for room in rooms:
            await self._sio.enter_room(sid, room)
        # A membership change committed between the read above and the rooms entered
        # moved this socket's rooms before it had them: read again and follow it.
        try:
            now = await self._rooms_of(user_id)
        except ProviderUnavailable as err:
            raise socketio.exceptions.ConnectionRefusedError(str(err)) from None
        except Exception:
            log.exception("connect of user %s failed", user_id)
            raise socketio.exceptions.ConnectionRefusedError("internal error") from None
        for room in set(rooms) - set(now):
            await self._sio.leave_room(sid, room)
        for room in set(now) - set(rooms):
            await self._sio.enter_room(sid, room)
        log.debug("user %s connected as %s (%d rooms)", user_id, sid, len(now))

    def disconnected(self, sid: str) -> None:
        """Forgets a socket that closed."""
        self._expiry.cancel(sid)

    async def user_of(self, sid: str) -> str:
        """The socket's user, once its token is known to be neither expired nor revoked.

        Raises:
            InvalidToken: the socket closed or never authenticated.
            TokenExpired: the token expired (refresh it with ``token:refresh``).
            TokenRevoked: the user's tokens were revoked; the socket is being closed.
        """
        session = await self._session_of(sid)
        claims = _claims(session)
        if claims.expires_at <= time.time():
            raise TokenExpired(
                f"token expired at {iso(claims.expires_at)}: send {EVENT_TOKEN_REFRESH}"
                " with a new token, or reconnect"
            )
        if time.monotonic() - session["checked_at"] > sessions.TOKEN_RECHECK_SECONDS:
            try:
                await self._recheck(sid, claims)
            except InvalidToken as err:
                self._close_soon(sid, "token revoked")
                raise TokenRevoked(str(err)) from None
            session["checked_at"] = time.monotonic()
            await self._sio.save_session(sid, session)
        return claims.user_id

    async def _recheck(self, sid: str, claims: TokenClaims) -> None:
        """One revocation read per socket at a time: a burst of events that all find the
        check due share the first one's query instead of each sending its own."""
        pending = self._rechecks.get(sid)
        if pending is None:
            pending = self._rechecks[sid] = asyncio.ensure_future(self._check_revocation(claims))
            pending.add_done_callback(lambda _: self._rechecks.pop(sid, None))
        await asyncio.shield(pending)

    async def refresh(self, sid: str, data: object) -> Ack:
        """``token:refresh``: a newer token of the same user replaces the socket's token."""
        session = await self._session_of(sid)
        payload = require_object(data)
        try:
            claims = read_token(self._secret, payload.get("token"))
        except InvalidToken as err:
            raise InvalidInput(f"token: {err}") from None
        if claims.user_id != session["user_id"]:
            raise InvalidInput("token: it names another user than this connection's")
        await self._check_revocation(claims)
        await self._sio.save_session(sid, _session(claims))
        self._expiry.schedule(sid, claims.expires_at)
        return {"ok": True, "expires_at": iso(claims.expires_at)}

    async def revoked(self, user_id: str) -> None:
        """A user's tokens were revoked (a NOTIFY from any process): closes the sockets here
        whose token was issued before it."""
        if self._revocations is None:
            return
        _, valid_after = await self._revocations.lookup(user_id)
        for sid in self.sockets_of(user_id):
            try:
                require_not_revoked(_claims(await self._session_of(sid)), valid_after)
            except InvalidToken:
                await self.close_socket(sid, "token revoked")

    def sockets_of(self, user_id: str) -> list[str]:
        """The sockets of a user that are connected to this process."""
        return [sid for sid, _ in self._sio.manager.get_participants("/", user_room(user_id))]

    async def close_socket(self, sid: str, reason: str) -> None:
        """Tells the socket why (``session:closed``), then disconnects it."""
        if not self._sio.manager.is_connected(sid, "/"):
            return
        log.info("closing %s: %s", sid, reason)
        # The socket is this process's: no trip through the pub/sub, and in this order.
        with contextlib.suppress(Exception):
            await self._sio.emit(
                EVENT_SESSION_CLOSED, {"reason": reason}, to=sid, ignore_queue=True
            )
        await self._sio.disconnect(sid, ignore_queue=True)

    def _close_soon(self, sid: str, reason: str) -> None:
        task = asyncio.ensure_future(self.close_socket(sid, reason))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _check_revocation(self, claims: TokenClaims) -> None:
        """Raises TokenRevoked (or InvalidToken: unknown user) unless the token still holds."""
        if self._revocations is None:
            raise ProviderUnavailable("the gateway is not ready; try again shortly")
        exists, valid_after = await self._revocations.lookup(claims.user_id)
        if not exists:
            raise InvalidToken("unknown user")
        require_not_revoked(claims, valid_after)

    async def _session_of(self, sid: str) -> dict[str, Any]:
        try:
            session = await self._sio.get_session(sid)
        except KeyError:  # the client disconnected before its event was handled
            raise InvalidToken("the connection is closed") from None
        if not isinstance(session, dict) or not isinstance(session.get("user_id"), str):
            raise InvalidToken("the connection is not authenticated")
        return session


def iso(unix_seconds: float) -> str:
    """Unix seconds as an ISO 8601 UTC timestamp."""
    return datetime.fromtimestamp(unix_seconds, UTC).isoformat()


def _session(claims: TokenClaims) -> dict[str, Any]:
    """A socket's session: its token's claims, and when its revocation was last read."""
    return {
        "user_id": claims.user_id,
        "expires_at": claims.expires_at,
        "issued_at": claims.issued_at,
        "checked_at": time.monotonic(),
    }


def _claims(session: dict[str, Any]) -> TokenClaims:
    return TokenClaims(
        user_id=session["user_id"],
        expires_at=session["expires_at"],
        issued_at=session["issued_at"],
    )
