"""The Socket.IO gateway: one process's server, its services, and its in-process worker.

The events themselves live beside it, one module per area: ``connections``
(tokens), ``messages`` (send, search, receipts), ``conversations`` (sync, the
list, edits, deletes, membership) and ``notifications`` (preferences, the bell,
devices); ``acks`` turns every outcome into one ack.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import timedelta
from typing import Any

import socketio
from temporalio.client import Client
from temporalio.worker import Worker

from gateway.acks import Ack, error, guarded, unknown_event
from gateway.admission import Admission
from gateway.connections import Connections
from gateway.context import Services
from gateway.conversations import ConversationEvents
from gateway.messages import LocalAcks, MessageEvents
from gateway.notifications import NotificationEvents
from gateway.sessions import RevocationListener
from gateway.transport import GatewayServer, redact_server_logs
from missive.broadcast import Broadcaster
from missive.config import Settings
from missive.constants import (
    EVENT_MESSAGE_SEND,
    EVENT_TOKEN_REFRESH,
    TASK_QUEUE_MESSAGES,
    conversation_room,
)
from missive.db import session_factory
from missive.errors import MessagingError, ProviderUnavailable
from missive.metrics import Metrics
from missive.notify.options import send_notify_options
from missive.ratelimit import PostgresBuckets, RedisBuckets, SendLimiter
from missive.sessions import TokenRevocations
from runtime.client import connect
from runtime.receipt_batcher import ReceiptBatcher
from runtime.search import open_search
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


class Gateway:
    """One gateway process: its Socket.IO server and, while started, its services.

    The process also runs a Temporal worker on the messages task queue, so the
    workflows it starts with ``request_eager_start`` run here at once, and their
    broadcasts emit through this process's own Socket.IO server.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        """Where everything is and the limits passed to the workflows."""
        self.metrics = Metrics()
        """The project's metrics of this process, served at ``/metrics``."""
        self.sio = GatewayServer(
            max_message_bytes=settings.gateway_max_message_bytes,
            max_events_per_socket=settings.gateway_max_events_per_socket,
            events_per_second=settings.gateway_socket_events_per_second,
            events_burst=settings.gateway_socket_events_burst,
            refusals_per_second=settings.gateway_socket_refusals_per_second,
            refusals_burst=settings.gateway_socket_refusals_burst,
            metrics=self.metrics,
            async_mode="asgi",
            client_manager=client_manager(settings, write_only=False),
            cors_allowed_origins=settings.cors_origins,
            logger=_library_logger("socketio"),
            engineio_logger=_library_logger("engineio"),
        )
        """The Socket.IO server; its client manager spans every gateway process."""
        self.admission = Admission(settings, None, self.metrics)
        """Send admission: in-flight caps, the send limit (from ``start``), Temporal's breaker."""
        self.connections = Connections(self.sio, settings.gateway_secret, rooms_of=self._rooms_of)
        """The sockets' users and tokens."""
        self._stack: AsyncExitStack | None = None
        self._services: Services | None = None
        self._worker: Worker | None = None
        self._acks = LocalAcks()
        self.sio.on("connect", self.connections.connect)
        self.sio.on("disconnect", self._on_disconnect)
        handlers = {
            **MessageEvents(self, self._acks).handlers(),
            **NotificationEvents(self).handlers(),
            **ConversationEvents(self).handlers(),
            EVENT_TOKEN_REFRESH: self.connections.refresh,
        }
        timeout = settings.gateway_ack_timeout_seconds
        for event, handler in handlers.items():
            answer = guarded(event, handler, timeout=timeout)
            self.sio.on(event, answer)  # events that ask no ack: python-socketio's dispatch
            self.sio.direct_events[event] = answer
        self.sio.on("*", unknown_event)
        self.sio.quick_refusal = self._quick_refusal

    def _quick_refusal(self, sid: str, event: str) -> Ack | None:
        """A ``message:send`` that admission refuses from memory, answered before its
        payload is decoded: a flooding client's refusals cost microseconds."""
        if event != EVENT_MESSAGE_SEND:
            return None
        refused = self.admission.refusal(sid)
        if refused is None:
            return None
        return error(refused.type, str(refused), retry_after=getattr(refused, "retry_after", None))

    @property
    def healthy(self) -> bool:
        """Whether the services are open and the in-process worker is polling."""
        return self._worker is not None and self._worker.is_running

    def services(self) -> Services:
        """The open services.

        Raises:
            ProviderUnavailable: the gateway is not started (or stopping).
        """
        if self._services is None:
            raise ProviderUnavailable("the gateway is not ready; try again shortly")
        return self._services

    async def user_of(self, sid: str) -> str:
        """The socket's user, once its token is known to hold (``Connections.user_of``)."""
        return await self.connections.user_of(sid)

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
            search = open_search(self.settings, core, stack)
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
            self.admission = Admission(
                self.settings, await _send_limiter(self.settings, core, stack), self.metrics
            )
            broadcaster = Broadcaster(self.sio)
            receipts = self._receipt_batcher(core, client, acts, broadcaster)
            receipts.start()
            stack.push_async_callback(receipts.close)
            self.connections.open(TokenRevocations(core.engine))
            stack.callback(self.connections.close)
            listener = RevocationListener(
                self.settings.require_database_url(), self.connections.revoked
            )
            listener.start()
            stack.push_async_callback(listener.close)
            # Listen for other processes' emits now rather than on the first connection.
            if not self.sio.manager_initialized:
                self.sio.manager_initialized = True
                manager.initialize()
        except BaseException:
            await stack.aclose()
            raise
        self._stack, self._worker = stack, worker
        self._services = Services(
            core=core, client=client, receipts=receipts, broadcaster=broadcaster, search=search
        )
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
        self._services = None
        self._worker = None
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

    async def _rooms_of(self, user_id: str) -> list[str]:
        """The conversation rooms a user's socket enters at connect."""
        conversations = await self.services().core.directory.conversations_of(user_id)
        return [conversation_room(conversation_id) for conversation_id in conversations]

    async def _on_disconnect(self, sid: str, *args: object) -> None:
        self.admission.forget(sid)
        self.connections.disconnected(sid)

    def _receipt_batcher(
        self,
        core: Core,
        client: Client,
        acts: MessageQueueActivities,
        broadcaster: Broadcaster,
    ) -> ReceiptBatcher:
        settings = self.settings
        return ReceiptBatcher(
            receipts=core.receipts,
            broadcaster=broadcaster,
            client=client,
            notify_activities=acts.notify,
            notify=send_notify_options(settings),
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


async def _send_limiter(settings: Settings, core: Core, stack: AsyncExitStack) -> SendLimiter:
    """The per-user send limit over Redis when REDIS_URL is set, else PostgreSQL."""
    if settings.redis_url:
        redis_buckets = RedisBuckets(settings.redis_url)
        stack.push_async_callback(redis_buckets.close)
        store: PostgresBuckets | RedisBuckets = redis_buckets
    else:
        store = PostgresBuckets(session_factory(core.engine))
    return SendLimiter(store, rate=settings.send_rate_per_second, burst=settings.send_burst)


def _log_worker_end(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("the gateway's worker stopped: %s; /healthz now fails", task.exception())


async def _stop_worker(worker: Worker, task: asyncio.Task[None]) -> None:
    await worker.shutdown()
    # A worker that died was logged by _log_worker_end; stopping need not raise it again.
    with contextlib.suppress(Exception):
        await task
