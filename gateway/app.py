"""The Socket.IO gateway: token-authenticated sockets, message events, and an in-process worker."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import asdict, fields, replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from urllib.parse import parse_qs

import socketio
from sqlalchemy.exc import SQLAlchemyError
from temporalio.client import Client, RPCTimeoutOrCancelledError
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import Worker

from gateway.admission import TEMPORAL_DOWN, Admission
from gateway.sessions import TOKEN_RECHECK_SECONDS, ExpiryTimers, RevocationListener
from gateway.transport import GatewayServer, redact_server_logs
from missive.broadcast import Broadcaster
from missive.config import Settings
from missive.constants import (
    EVENT_DEVICE_REGISTER,
    EVENT_DEVICE_UNREGISTER,
    EVENT_MESSAGE_DELIVERED,
    EVENT_MESSAGE_READ,
    EVENT_MESSAGE_SEARCH,
    EVENT_MESSAGE_SEND,
    EVENT_NOTIFICATION_LIST,
    EVENT_NOTIFICATION_PREFERENCES,
    EVENT_SESSION_CLOSED,
    EVENT_TOKEN_REFRESH,
    TASK_QUEUE_MESSAGES,
    conversation_room,
    user_room,
)
from missive.db import session_factory
from missive.e2e import require_e2e_header
from missive.errors import (
    InvalidInput,
    InvalidToken,
    MessagingError,
    PermanentError,
    ProviderUnavailable,
    TokenExpired,
    TokenRevoked,
)
from missive.metrics import Metrics
from missive.notify.log import NotificationRow
from missive.notify.options import send_notify_options
from missive.notify.preferences import (
    require_platform,
    require_push_token,
    require_timezone,
    validate_conversation_preferences,
    validate_user_preferences,
)
from missive.ratelimit import PostgresBuckets, RedisBuckets, SendLimiter
from missive.schemas import (
    ConversationPreferences,
    MessageAccepted,
    NotificationPreferences,
    PersistMessageInput,
    PersistMessageResult,
    ReceiptStatus,
    SendMessageInput,
)
from missive.search import SearchService, parse_search_request, result_json
from missive.services.receipts import Watermark
from missive.sessions import TokenRevocations, require_not_revoked
from missive.tokens import TokenClaims, read_token
from missive.validation import (
    require_body,
    require_client_message_id,
    require_seq,
    require_uuid,
)
from runtime.client import connect
from runtime.messaging import send_message, with_request_id
from runtime.receipt_batcher import ReceiptBatcher
from runtime.search import open_search
from runtime.search_attributes import KIND_MESSAGE, start_attributes
from runtime.telemetry import open_telemetry, public_metrics
from runtime.wiring import (
    WORKFLOWS,
    Core,
    MessageQueueActivities,
    activity_methods,
    client_manager,
    message_activities,
    open_core,
    workflow_runner,
)

log = logging.getLogger("missive.gateway")

HEALTH_PATH = "/healthz"
METRICS_PATH = "/metrics"

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
Ack = dict[str, Any]


class LocalAcks:
    """Acks for sends whose lifecycle stores the message in this very process.

    A lifecycle started eagerly runs its first workflow task on this process's
    worker, where the persist activity tells this registry the outcome: the
    sender is acked then, without a second round trip (the ``accepted`` update)
    through Temporal. A send whose task ran elsewhere, or a resend that joined
    a running lifecycle, hears nothing here and asks the workflow instead.
    """

    def __init__(self) -> None:
        self._waiting: dict[str, asyncio.Future[MessageAccepted]] = {}

    def expect(self, request_id: str) -> asyncio.Future[MessageAccepted]:
        """A future for the outcome of the send with this request id."""
        future = self._waiting[request_id] = asyncio.get_running_loop().create_future()
        return future

    def forget(self, request_id: str) -> None:
        """Stops waiting for a send (its ack was answered one way or another)."""
        future = self._waiting.pop(request_id, None)
        if future is not None and future.done() and not future.cancelled():
            future.exception()  # retrieved: no "never retrieved" warning

    def __call__(
        self, input: PersistMessageInput, outcome: PersistMessageResult | PermanentError
    ) -> None:
        future = self._waiting.get(input.request_id) if input.request_id else None
        if future is None or future.done():
            return
        if isinstance(outcome, PermanentError):
            future.set_exception(outcome)
            return
        future.set_result(
            MessageAccepted(
                message_id=outcome.message_id,
                conversation_id=outcome.conversation_id,
                seq=outcome.seq,
                created_at=outcome.created_at,
                duplicate=not outcome.created,
            )
        )


class Gateway:
    """One gateway process: its Socket.IO server and, while started, its services.

    The process also runs a Temporal worker on the messages task queue, so the
    workflows it starts with ``request_eager_start`` run here at once, and their
    broadcasts emit through this process's own Socket.IO server.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        """Where everything is and the limits passed to the workflows."""
        self.sio = GatewayServer(
            max_message_bytes=settings.gateway_max_message_bytes,
            max_events_per_socket=settings.gateway_max_events_per_socket,
            events_per_second=settings.gateway_socket_events_per_second,
            events_burst=settings.gateway_socket_events_burst,
            async_mode="asgi",
            client_manager=client_manager(settings, write_only=False),
            cors_allowed_origins=settings.cors_origins,
            logger=_library_logger("socketio"),
            engineio_logger=_library_logger("engineio"),
        )
        """The Socket.IO server; its client manager spans every gateway process."""
        self._stack: AsyncExitStack | None = None
        self._core: Core | None = None
        self._client: Client | None = None
        self._worker: Worker | None = None
        self._acks = LocalAcks()
        self._notify = send_notify_options(settings)  # settings never change: built once
        self._search: SearchService | None = None
        self._receipts: ReceiptBatcher | None = None
        self.metrics = Metrics()
        """The project's metrics of this process, served at ``/metrics``."""
        self._admission = Admission(settings, None, self.metrics)
        self._revocations: TokenRevocations | None = None
        self._expiry = ExpiryTimers(self._close_socket)
        self._closing: set[asyncio.Task[None]] = set()
        self.sio.on("connect", self._on_connect)
        self.sio.on("disconnect", self._on_disconnect)
        self.sio.on(EVENT_MESSAGE_SEND, self._guarded(EVENT_MESSAGE_SEND, self._send))
        self.sio.on(
            EVENT_MESSAGE_SEARCH, self._guarded(EVENT_MESSAGE_SEARCH, self._search_messages)
        )
        for event, status in (
            (EVENT_MESSAGE_DELIVERED, ReceiptStatus.DELIVERED),
            (EVENT_MESSAGE_READ, ReceiptStatus.READ),
        ):
            receipt = functools.partial(self._receipt, status=status)
            self.sio.on(event, self._guarded(event, receipt))
        for event, handler in (
            (EVENT_NOTIFICATION_PREFERENCES, self._preferences),
            (EVENT_NOTIFICATION_LIST, self._notifications),
            (EVENT_DEVICE_REGISTER, self._register_device),
            (EVENT_DEVICE_UNREGISTER, self._unregister_device),
            (EVENT_TOKEN_REFRESH, self._refresh_token),
        ):
            self.sio.on(event, self._guarded(event, handler))
        self.sio.on("*", _unknown_event)

    @property
    def healthy(self) -> bool:
        """Whether the services are open and the in-process worker is polling."""
        return self._worker is not None and self._worker.is_running

    async def start(self) -> None:
        """Opens the database, connects to Temporal and starts the worker.

        Everything opened is closed again if a later step fails.

        Raises:
            ProviderUnavailable: PostgreSQL or Temporal did not answer, or the
                worker could not start (the message is one line).
        """
        if self._stack is not None:
            raise RuntimeError("the gateway is already started")
        stack = AsyncExitStack()
        try:
            core = await open_core(self.settings, stack)
            self._search = open_search(self.settings, core, stack)
            telemetry = open_telemetry(
                self.settings,
                stack,
                service="missive-gateway",
                sdk_metrics_port=self.settings.gateway_sdk_metrics_port,
                metrics_port=self.settings.gateway_metrics_port,
                metrics=self.metrics,
            )
            client = await connect(
                self.settings, interceptors=telemetry.interceptors, runtime=telemetry.runtime
            )
            manager = self.sio.manager
            if hasattr(manager, "close"):
                stack.push_async_callback(manager.close)
            stack.push_async_callback(self.sio.shutdown)
            acts = message_activities(
                core, self.sio, persist_listener=self._acks, metrics=self.metrics
            )
            worker = await self._start_worker(client, acts, stack)
            self._admission = Admission(
                self.settings, await _send_limiter(self.settings, core, stack), self.metrics
            )
            receipts = self._receipt_batcher(core, client, acts)
            receipts.start()
            stack.push_async_callback(receipts.close)
            revocations = TokenRevocations(core.engine)
            listener = RevocationListener(self.settings.require_database_url(), self._revoked)
            listener.start()
            stack.push_async_callback(listener.close)
            stack.callback(self._expiry.close)
            # Listen for other processes' emits now rather than on the first connection.
            if not self.sio.manager_initialized:
                self.sio.manager_initialized = True
                manager.initialize()
        except BaseException:
            await stack.aclose()
            raise
        self._stack, self._core, self._client, self._worker = stack, core, client, worker
        self._receipts, self._revocations = receipts, revocations
        log.info(
            "gateway ready: worker on %s at %s (namespace %s)",
            TASK_QUEUE_MESSAGES,
            self.settings.temporal_address,
            self.settings.temporal_namespace,
        )

    async def stop(self) -> None:
        """Drains the worker (up to graceful_shutdown_seconds) and closes everything."""
        stack, self._stack = self._stack, None
        # New events answer "unavailable" at once instead of waiting on a stopping worker.
        self._core = self._client = self._worker = None
        self._search = None
        self._receipts = None
        self._revocations = None
        if stack is not None:
            log.info("draining in-flight work (up to %ss)", self.settings.graceful_shutdown_seconds)
            await stack.aclose()
            log.info("gateway stopped")

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Gateway]:
        """``start()`` on entry, ``stop()`` on exit."""
        await self.start()
        try:
            yield self
        finally:
            await self.stop()

    def _receipt_batcher(
        self, core: Core, client: Client, acts: MessageQueueActivities
    ) -> ReceiptBatcher:
        settings = self.settings
        return ReceiptBatcher(
            receipts=core.receipts,
            broadcaster=Broadcaster(self.sio),
            client=client,
            notify_activities=acts.notify,
            notify=self._notify,
            lifecycle_window_seconds=settings.lifecycle_window_seconds,
            detail_max_recipients=settings.receipt_detail_max_recipients,
            window_seconds=settings.receipt_batch_window_ms / 1000,
            max_batch=settings.receipt_batch_max,
            max_queued=settings.receipt_queue_max,
            signal_window_seconds=settings.receipt_signal_window_ms / 1000,
            metrics=self.metrics,
        )

    async def _start_worker(
        self, client: Client, acts: MessageQueueActivities, stack: AsyncExitStack
    ) -> Worker:
        worker = Worker(
            client,
            task_queue=TASK_QUEUE_MESSAGES,
            workflows=WORKFLOWS,
            activities=activity_methods(acts),
            graceful_shutdown_timeout=timedelta(seconds=self.settings.graceful_shutdown_seconds),
            workflow_runner=workflow_runner(self.settings),
        )
        # Run in a task of our own: `async with worker` would cancel whichever task
        # entered it (here the ASGI lifespan) on a fatal error.
        task = asyncio.create_task(worker.run(), name="gateway-worker")
        task.add_done_callback(_log_worker_end)
        stack.push_async_callback(_stop_worker, worker, task)
        while not worker.is_running:  # the first step is one namespace check
            if task.done():
                err = task.exception()
                reason = str(err).splitlines()[0][:200] if err else "stopped"
                raise ProviderUnavailable(
                    f"Temporal worker for {TASK_QUEUE_MESSAGES} did not start: {reason}"
                )
            await asyncio.sleep(0.01)
        return worker

    def _services(self) -> tuple[Core, Client]:
        if self._core is None or self._client is None:
            raise ProviderUnavailable("the gateway is not ready; try again shortly")
        return self._core, self._client

    # -- connection ---------------------------------------------------------

    async def _on_connect(self, sid: str, environ: dict[str, Any], auth: object = None) -> None:
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
            claims = read_token(self.settings.gateway_secret, token)
        except InvalidToken as err:
            raise socketio.exceptions.ConnectionRefusedError(str(err)) from None
        user_id = claims.user_id
        try:
            core, _ = self._services()
            await self._check_revocation(claims)
            conversations = await core.directory.conversations_of(user_id)
        except InvalidToken as err:
            raise socketio.exceptions.ConnectionRefusedError(str(err)) from None
        except ProviderUnavailable as err:
            raise socketio.exceptions.ConnectionRefusedError(str(err)) from None
        except Exception:
            log.exception("connect of user %s failed", user_id)
            raise socketio.exceptions.ConnectionRefusedError("internal error") from None
        await self.sio.save_session(sid, _session(claims))
        self._expiry.schedule(sid, claims.expires_at)
        await self.sio.enter_room(sid, user_room(user_id))
        for conversation_id in conversations:
            await self.sio.enter_room(sid, conversation_room(conversation_id))
        log.debug("user %s connected as %s (%d conversations)", user_id, sid, len(conversations))

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
            session = await self.sio.get_session(sid)
        except KeyError:  # the client disconnected before its event was handled
            raise InvalidToken("the connection is closed") from None
        if not isinstance(session, dict) or not isinstance(session.get("user_id"), str):
            raise InvalidToken("the connection is not authenticated")
        return session

    async def _user_of(self, sid: str) -> str:
        """The socket's user, once its token is known to be neither expired nor revoked.

        Expiry is read from the session; revocation too, re-read from PostgreSQL at
        most every TOKEN_RECHECK_SECONDS (a revocation is also pushed: ``_revoked``).

        Raises:
            TokenExpired: the token expired (refresh it with ``token:refresh``).
            TokenRevoked: the user's tokens were revoked; the socket is being closed.
        """
        session = await self._session_of(sid)
        claims = _claims(session)
        if claims.expires_at <= time.time():
            raise TokenExpired(
                f"token expired at {_iso(claims.expires_at)}: send {EVENT_TOKEN_REFRESH}"
                " with a new token, or reconnect"
            )
        if time.monotonic() - session["checked_at"] > TOKEN_RECHECK_SECONDS:
            try:
                await self._check_revocation(claims)
            except InvalidToken as err:
                self._close_soon(sid, "token revoked")
                raise TokenRevoked(str(err)) from None
            session["checked_at"] = time.monotonic()
            await self.sio.save_session(sid, session)
        return claims.user_id

    async def _refresh_token(self, sid: str, data: object) -> Ack:
        """``token:refresh``: a newer token of the same user replaces the socket's token."""
        session = await self._session_of(sid)
        payload = _require_object(data)
        try:
            claims = read_token(self.settings.gateway_secret, payload.get("token"))
        except InvalidToken as err:
            raise InvalidInput(f"token: {err}") from None
        if claims.user_id != session["user_id"]:
            raise InvalidInput("token: it names another user than this connection's")
        await self._check_revocation(claims)
        await self.sio.save_session(sid, _session(claims))
        self._expiry.schedule(sid, claims.expires_at)
        return {"ok": True, "expires_at": _iso(claims.expires_at)}

    async def _revoked(self, user_id: str) -> None:
        """A user's tokens were revoked (a NOTIFY from any process): closes the sockets here
        whose token was issued before it."""
        if self._revocations is None:
            return
        _, valid_after = await self._revocations.lookup(user_id)
        for sid, _eio_sid in list(self.sio.manager.get_participants("/", user_room(user_id))):
            try:
                require_not_revoked(_claims(await self._session_of(sid)), valid_after)
            except InvalidToken:
                await self._close_socket(sid, "token revoked")

    def _close_soon(self, sid: str, reason: str) -> None:
        task = asyncio.ensure_future(self._close_socket(sid, reason))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _close_socket(self, sid: str, reason: str) -> None:
        """Tells the socket why (``session:closed``), then disconnects it."""
        if not self.sio.manager.is_connected(sid, "/"):
            return
        log.info("closing %s: %s", sid, reason)
        # The socket is this process's: no trip through the pub/sub, and in this order.
        with contextlib.suppress(Exception):
            await self.sio.emit(EVENT_SESSION_CLOSED, {"reason": reason}, to=sid, ignore_queue=True)
        await self.sio.disconnect(sid, ignore_queue=True)

    async def _on_disconnect(self, sid: str, *args: object) -> None:
        self._admission.forget(sid)
        self._expiry.cancel(sid)

    # -- events -------------------------------------------------------------

    def _guarded(
        self, name: str, handler: Callable[[str, object], Awaitable[Ack]]
    ) -> Callable[..., Awaitable[Ack]]:
        """Wraps an event handler so that it always acks and never raises."""

        async def event(sid: str, *args: object) -> Ack:
            timeout = self.settings.gateway_ack_timeout_seconds
            try:
                async with asyncio.timeout(timeout):
                    return await handler(sid, args[0] if args else None)
            except MessagingError as err:
                return _error(err.type, str(err), retry_after=getattr(err, "retry_after", None))
            except (TimeoutError, RPCTimeoutOrCancelledError):
                log.warning("%s from %s got no answer in %ss", name, sid, timeout)
                return _error("Timeout", "no answer in time; sending it again is safe")
            except RPCError as err:
                answer = _rpc_answer(err)
                if answer is None:
                    log.exception("%s from %s failed", name, sid)
                    return _error("InternalError", "internal error")
                log.warning("%s from %s: %s (%s)", name, sid, answer["error"]["type"], err.message)
                return answer
            except UnicodeEncodeError:  # a lone surrogate ("\ud800") in a field we store
                return _error("InvalidInput", "a string in the payload is not valid Unicode")
            except SQLAlchemyError as err:
                log.warning("%s from %s: database unavailable (%s)", name, sid, _first_line(err))
                return _error(
                    "ProviderUnavailable",
                    "the database is unavailable; try again shortly",
                    retry_after=1.0,
                )
            except Exception:
                log.exception("%s from %s failed", name, sid)
                return _error("InternalError", "internal error")

        return event

    async def _send(self, sid: str, data: object) -> Ack:
        """``message:send``: starts (or joins) the message's lifecycle, acks when stored."""
        user_id = await self._user_of(sid)
        payload = _require_object(data)
        conversation_id = require_uuid(payload.get("conversation_id"), "conversation_id")
        client_message_id = require_client_message_id(payload.get("client_message_id"))
        body = payload.get("body")
        require_body(body, max_bytes=self.settings.max_body_bytes)
        assert isinstance(body, str)  # require_body checked it
        raw_header = payload.get("e2e_header")
        e2e_header = require_e2e_header(raw_header) if raw_header is not None else None
        mentions = _require_mentions(payload.get("mentions"))
        async with self._admission.admit(sid, user_id):
            return await self._start_send(
                sid, user_id, conversation_id, client_message_id, body, e2e_header, mentions
            )

    async def _start_send(
        self,
        sid: str,
        user_id: str,
        conversation_id: str,
        client_message_id: str,
        body: str,
        e2e_header: dict[str, Any] | None,
        mentions: list[str],
    ) -> Ack:
        send = with_request_id(
            SendMessageInput(
                conversation_id=conversation_id,
                sender_id=user_id,
                client_message_id=client_message_id,
                body=body,
                max_body_bytes=self.settings.max_body_bytes,
                lifecycle_window_seconds=self.settings.lifecycle_window_seconds,
                receipt_detail_max_recipients=self.settings.receipt_detail_max_recipients,
                e2e_header=e2e_header,
                mentions=mentions,
                notify=self._notify,
            )
        )
        _, client = self._services()
        local_ack = self._acks.expect(send.request_id)
        try:
            accepted = await self._admission.temporal_call(
                send_message(
                    client,
                    send,
                    eager=True,
                    local_ack=local_ack,
                    rpc_timeout=timedelta(seconds=self.settings.gateway_ack_timeout_seconds),
                    search_attributes=start_attributes(
                        self.settings, KIND_MESSAGE, conversation_id=conversation_id
                    ),
                )
            )
        finally:
            self._acks.forget(send.request_id)
        return {
            "ok": True,
            "message_id": accepted.message_id,
            "seq": accepted.seq,
            "created_at": accepted.created_at.isoformat(),
            "duplicate": accepted.duplicate,
        }

    async def _search_messages(self, sid: str, data: object) -> Ack:
        """``message:search``: the user's own conversations only (a scoped Typesense key)."""
        user_id = await self._user_of(sid)
        query = parse_search_request(data)
        self._services()
        if self._search is None:
            raise ProviderUnavailable("search is not configured on this gateway (TYPESENSE_URL)")
        return {"ok": True, **result_json(await self._search.search(user_id, query))}

    async def _receipt(self, sid: str, data: object, *, status: ReceiptStatus) -> Ack:
        """``message:delivered`` / ``message:read``: a watermark, acked once its batch committed.

        No workflow per receipt: the process's ReceiptBatcher applies every receipt
        of a short window in one statement (runtime/receipt_batcher.py).
        """
        user_id = await self._user_of(sid)
        payload = _require_object(data)
        conversation_id = require_uuid(payload.get("conversation_id"), "conversation_id")
        raw_seq, raw_message_id = payload.get("up_to_seq"), payload.get("message_id")
        if (raw_seq is None) == (raw_message_id is None):
            raise InvalidInput("give exactly one of up_to_seq and message_id")
        up_to_seq = require_seq(raw_seq) if raw_seq is not None else None
        message_id = require_uuid(raw_message_id, "message_id") if up_to_seq is None else None
        self._services()
        if self._receipts is None:
            raise ProviderUnavailable("the gateway is not ready; try again shortly")
        applied = await self._receipts.submit(
            Watermark(
                user_id=user_id,
                conversation_id=conversation_id,
                status=status,
                up_to_seq=up_to_seq,
                message_id=message_id,
            )
        )
        return {"ok": True, "changed": applied.changed, "up_to_seq": applied.up_to_seq}

    # -- notification settings and the bell ----------------------------------

    async def _preferences(self, sid: str, data: object) -> Ack:
        """``notification:preferences``: reads or changes preferences; acks those now stored.

        Without ``conversation_id`` the user's own, with it their overrides for that
        conversation; ``set`` changes only the fields it names, ``timezone`` the user's
        timezone. Everything is checked before anything is stored.
        """
        user_id = await self._user_of(sid)
        payload = {} if data is None else _require_object(data)
        unknown = sorted(set(payload) - {"conversation_id", "set", "timezone"})
        if unknown:
            raise InvalidInput(
                f"unknown field {', '.join(unknown)}: give conversation_id, set or timezone"
            )
        changes = payload.get("set", {})
        if not isinstance(changes, dict):
            raise InvalidInput("set must be an object of preference fields and their values")
        core, _ = self._services()
        preferences = core.preferences
        if payload.get("conversation_id") is not None:
            if "timezone" in payload:
                raise InvalidInput("timezone is the user's, not a conversation's: omit one")
            conversation_id = require_uuid(payload["conversation_id"], "conversation_id")
            overrides = await preferences.get_conversation(user_id, conversation_id)
            if changes:
                overrides = _changed(overrides, changes)
                validate_conversation_preferences(overrides)
                await preferences.set_conversation(user_id, conversation_id, overrides)
            return {
                "ok": True,
                "conversation_id": conversation_id,
                "preferences": asdict(overrides),
            }
        timezone = require_timezone(payload["timezone"]) if "timezone" in payload else None
        current = await preferences.get_user(user_id)
        if changes:
            current = _changed(current, changes)
            validate_user_preferences(current)
        if timezone is not None:
            await preferences.set_timezone(user_id, timezone)
        if changes:
            await preferences.set_user(user_id, current)
        ack: Ack = {"ok": True, "preferences": asdict(current)}
        if timezone is not None:
            ack["timezone"] = timezone
        return ack

    async def _notifications(self, sid: str, data: object) -> Ack:
        """``notification:list``: the user's in-app notifications (newest first), unread count."""
        user_id = await self._user_of(sid)
        payload = {} if data is None else _require_object(data)
        limit = payload.get("limit", NOTIFICATION_LIST_DEFAULT)
        if isinstance(limit, bool) or not isinstance(limit, int):
            raise InvalidInput(f"limit must be an integer, got {limit!r}")
        if not 1 <= limit <= NOTIFICATION_LIST_MAX:
            raise InvalidInput(f"limit must be between 1 and {NOTIFICATION_LIST_MAX}, got {limit}")
        unread_only = payload.get("unread_only", False)
        if not isinstance(unread_only, bool):
            raise InvalidInput(f"unread_only must be true or false, got {unread_only!r}")
        core, _ = self._services()
        rows = await core.notifications.in_app(user_id, limit=limit, unread_only=unread_only)
        unread = await core.notifications.unread_count(user_id)
        return {
            "ok": True,
            "unread_count": unread,
            "notifications": [_notification_json(row) for row in rows],
        }

    async def _register_device(self, sid: str, data: object) -> Ack:
        """``device:register``: adds a push token (again: refreshed; another user's: moved here)."""
        user_id = await self._user_of(sid)
        payload = _require_object(data)
        platform = require_platform(payload.get("platform"))
        token = require_push_token(payload.get("token"))
        core, _ = self._services()
        device_id = await core.preferences.register_device(user_id, platform.value, token)
        return {"ok": True, "device_id": device_id}

    async def _unregister_device(self, sid: str, data: object) -> Ack:
        """``device:unregister``: forgets one of the user's push tokens (no more pushes to it)."""
        user_id = await self._user_of(sid)
        payload = _require_object(data)
        token = require_push_token(payload.get("token"))
        core, _ = self._services()
        return {"ok": True, "removed": await core.preferences.remove_device(token, user_id=user_id)}

    # -- HTTP ---------------------------------------------------------------

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Every request that is not Socket.IO: ``GET /healthz``, ``GET /metrics``, else 404."""
        if scope["type"] != "http":
            await send({"type": "websocket.close", "code": 1000})
            return
        if scope["path"] == METRICS_PATH:
            await _respond(send, *public_metrics(self.settings, self.metrics, scope))
            return
        if scope["path"] == HEALTH_PATH:
            healthy = self.healthy
            status, body = (200, {"status": "ok"}) if healthy else (503, {"status": "unavailable"})
        else:
            status, body = 404, {"status": "not found"}
        await _respond(send, status, json.dumps(body).encode(), b"application/json")


class GatewayApp(socketio.ASGIApp):
    """The ASGI app: Socket.IO, ``/healthz``, and a lifespan that starts and stops the gateway.

    ``python -m gateway`` starts the gateway itself and runs uvicorn without
    lifespan; any other ASGI server gets it through the lifespan protocol.
    """

    def __init__(self, gateway: Gateway) -> None:
        super().__init__(gateway.sio, other_asgi_app=gateway.http)
        self.gateway = gateway
        """The gateway this app serves."""
        self.startup_error: BaseException | None = None
        """Why the last lifespan startup failed, if it did."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serves a request; a WebSocket's messages over the size limit are answered, not
        dropped with the socket (``GatewayServer.bound_receive``)."""
        if scope["type"] == "websocket":
            receive = self.gateway.sio.bound_receive(receive)
        elif scope["type"] == "http" and scope.get("method") == "POST":
            # Long-polling: Engine.IO would end the session with a bare 400; say why.
            limit = self.gateway.sio.max_message_bytes
            length = dict(scope.get("headers") or []).get(b"content-length", b"0")
            if length.isdigit() and int(length) > limit:
                reason = (
                    f"the request body is {int(length)} bytes, over the gateway's limit of"
                    f" {limit} (GATEWAY_MAX_MESSAGE_BYTES)"
                )
                await _respond(
                    send, 413, json.dumps({"error": reason}).encode(), b"application/json"
                )
                return
        await super().__call__(scope, receive, send)

    async def lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Starts the gateway on ``lifespan.startup``, stops it on ``lifespan.shutdown``."""
        while True:
            event = await receive()
            if event["type"] == "lifespan.startup":
                try:
                    await self.gateway.start()
                except Exception as err:
                    self.startup_error = err
                    if not isinstance(err, MessagingError):
                        log.exception("gateway startup failed")
                    await send({"type": "lifespan.startup.failed", "message": str(err)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif event["type"] == "lifespan.shutdown":
                try:
                    await self.gateway.stop()
                except Exception as err:
                    log.exception("gateway shutdown failed")
                    await send({"type": "lifespan.shutdown.failed", "message": str(err)})
                    return
                await send({"type": "lifespan.shutdown.complete"})
                return


def create_app(settings: Settings) -> GatewayApp:
    """Builds the gateway's ASGI app; nothing is opened until it starts.

    Raises:
        InvalidInput: neither REDIS_URL nor DATABASE_URL is set (no client manager).
    """
    redact_server_logs()
    return GatewayApp(Gateway(settings))


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


def _iso(unix_seconds: float) -> str:
    return datetime.fromtimestamp(unix_seconds, UTC).isoformat()


async def _unknown_event(event: str, sid: str, *args: object) -> Ack:
    """Any event the gateway does not know: acked InvalidInput naming it."""
    return _error("InvalidInput", f"unknown event {event[:64]!r}: see the README's events")


def _library_logger(name: str) -> logging.Logger:
    """A logger under ours for Socket.IO and its client manager.

    Their own default adds a second handler and hides warnings (such as a lost
    pub/sub listener); theirs at INFO logs every event, so we start at WARNING.
    """
    logger = log.getChild(name)
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.WARNING)
    return logger


async def _respond(send: Send, status: int, payload: bytes, content_type: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(payload)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


def _error(type: str, message: str, *, retry_after: float | None = None) -> Ack:
    error: dict[str, Any] = {"type": type, "message": message}
    if retry_after is not None:
        error["retry_after_ms"] = max(1, round(retry_after * 1000))
    return {"ok": False, "error": error}


def _first_line(err: BaseException) -> str:
    lines = str(getattr(err, "orig", None) or err).splitlines()
    return lines[0][:200] if lines else type(err).__name__


def _rpc_answer(err: RPCError) -> Ack | None:
    """The honest ack for a Temporal RPC failure, or None for a bug (InternalError).

    A deadline means the call may have happened (Timeout: resend the same
    client_message_id); unavailable and a lifecycle whose workflow task is failing
    (PostgreSQL down while it persists) mean try again later. Either way a resend
    stores the message at most once.
    """
    if err.status in (RPCStatusCode.DEADLINE_EXCEEDED, RPCStatusCode.CANCELLED):
        return _error("Timeout", "no answer in time; sending it again is safe")
    if err.status in TEMPORAL_DOWN:
        return _error(
            "ProviderUnavailable", "Temporal is unavailable; try again shortly", retry_after=1.0
        )
    if err.status is RPCStatusCode.FAILED_PRECONDITION and "failed state" in err.message:
        return _error(
            "ProviderUnavailable",
            "the message's lifecycle is retrying (a dependency is down); send it again shortly",
            retry_after=1.0,
        )
    return None


async def _send_limiter(settings: Settings, core: Core, stack: AsyncExitStack) -> SendLimiter:
    """The per-user send limit over Redis when REDIS_URL is set, else PostgreSQL."""
    if settings.redis_url:
        redis_buckets = RedisBuckets(settings.redis_url)
        stack.push_async_callback(redis_buckets.close)
        store: PostgresBuckets | RedisBuckets = redis_buckets
    else:
        store = PostgresBuckets(session_factory(core.engine))
    return SendLimiter(store, rate=settings.send_rate_per_second, burst=settings.send_burst)


def _require_object(data: object) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise InvalidInput(f"the payload must be an object, got {type(data).__name__}")
    return data


MAX_MENTIONS = 256
"""Most user ids one message may mention."""


def _require_mentions(value: object) -> list[str]:
    """The ``mentions`` of a send: absent, or a list of user ids (deduplicated)."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise InvalidInput("mentions must be a list of user ids (strings)")
    if len(value) > MAX_MENTIONS:
        raise InvalidInput(f"mentions names {len(value)} users; at most {MAX_MENTIONS}")
    return list(dict.fromkeys(require_uuid(item, "mentions[]") for item in value))


NOTIFICATION_LIST_DEFAULT = 50
"""In-app notifications ``notification:list`` returns when no limit is given."""

NOTIFICATION_LIST_MAX = 100
"""Most in-app notifications one ``notification:list`` returns."""

Preferences = TypeVar("Preferences", NotificationPreferences, ConversationPreferences)


def _changed(current: Preferences, changes: dict[str, Any]) -> Preferences:
    """``current`` with the fields ``changes`` names replaced (types are checked later)."""
    known = [f.name for f in fields(current)]
    unknown = sorted(set(changes) - set(known))
    if unknown:
        raise InvalidInput(
            f"unknown preference {', '.join(unknown)}; the fields are {', '.join(known)}"
        )
    return replace(current, **changes)


def _notification_json(row: NotificationRow) -> dict[str, Any]:
    return {
        "notification_id": row.id,
        "conversation_id": row.conversation_id,
        "message_id": row.message_id,
        "status": row.status.value,
        "created_at": row.created_at.isoformat(),
        "read_at": row.read_at.isoformat() if row.read_at is not None else None,
    }


def _log_worker_end(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("the gateway's worker stopped: %s; /healthz now fails", task.exception())


async def _stop_worker(worker: Worker, task: asyncio.Task[None]) -> None:
    await worker.shutdown()
    # A worker that died was logged by _log_worker_end; stopping need not raise it again.
    with contextlib.suppress(Exception):
        await task
