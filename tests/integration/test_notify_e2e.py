"""Notifications as users see them: the real gateway and ``python worker.py``, Socket.IO
clients, the FCM sink, and an SMTP server that goes down and comes back."""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Any

import pytest
import socketio
import uvicorn
from sqlalchemy import text
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment

from fakes import FcmSink, Inbox, serve, start_smtp
from gateway import create_app
from gateway.app import GatewayApp
from missive.config import Settings
from missive.constants import (
    EVENT_DEVICE_REGISTER,
    EVENT_MESSAGE_NEW,
    EVENT_MESSAGE_READ,
    EVENT_MESSAGE_SEND,
    EVENT_NOTIFICATION_LIST,
    EVENT_NOTIFICATION_NEW,
    EVENT_NOTIFICATION_PREFERENCES,
    EVENT_NOTIFICATION_UNREAD,
    message_workflow_id,
    notify_digest_workflow_id,
    notify_message_workflow_id,
)
from missive.models import ConversationKind
from missive.notify.log import NotificationRow
from missive.schemas import (
    BatchKind,
    Channel,
    NotificationDigestResult,
    NotificationPreferences,
    NotificationStatus,
    NotifyMessageInput,
    NotifyMessageResult,
    NotifyOptions,
    PersistMessageInput,
)
from missive.services.batch import BatchService
from missive.services.directory import NewUser
from missive.tokens import issue_token
from runtime.notify import AnnouncementNotifier, notify_workers, open_notify
from runtime.wiring import Core
from tests.conftest import ROOT, base_settings, free_port, process_env
from tests.integration.test_gateway import QUIET, WAIT, Peer
from workflows.notify_message import NotifyMessageWorkflow

pytestmark = pytest.mark.integration

GRACE_SECONDS = 1
"""NOTIFY_GRACE_SECONDS here: a push falls due a second after the message."""

MAIL_DOMAIN = "missive.example"

PEER_EVENTS = (EVENT_MESSAGE_NEW, EVENT_NOTIFICATION_NEW, EVENT_NOTIFICATION_UNREAD)
"""What the clients record."""


async def _until(predicate: Callable[[], Awaitable[bool]], what: str) -> None:
    """Waits (real time, up to WAIT) for something another process does."""
    deadline = asyncio.get_running_loop().time() + WAIT
    while not await predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not within {WAIT} s: {what}")
        await asyncio.sleep(0.05)


async def _digest_result(client: Client, workflow_id: str) -> NotificationDigestResult:
    """The result of a digest workflow, which an activity starts (it may not exist yet)."""
    async with asyncio.timeout(WAIT):
        while True:
            try:
                handle = client.get_workflow_handle(
                    workflow_id, result_type=NotificationDigestResult
                )
                return await handle.result()
            except RPCError as err:
                if err.status is not RPCStatusCode.NOT_FOUND:
                    raise
            await asyncio.sleep(0.05)


async def _terminate_running(client: Client, workflow_ids: list[str]) -> None:
    """Ends what a test leaves running (a lifecycle follows receipts for a day), so no
    later test's worker picks it up against another database."""
    for workflow_id in workflow_ids:
        handle = client.get_workflow_handle(workflow_id)
        with suppress(RPCError):
            if (await handle.describe()).status is WorkflowExecutionStatus.RUNNING:
                await handle.terminate("test over")


# --- the gateway and the worker as processes users talk to ----------------------------


@dataclass
class Deployment:
    """A gateway (uvicorn, in this process), ``python worker.py``, and the FCM sink."""

    url: str
    """The gateway's base URL."""
    settings: Settings
    """The gateway's settings (the worker has the same values in its environment)."""
    fcm: FcmSink
    """What FCM received."""
    worker_log: list[str]
    """The worker process's stderr so far."""

    def pushes(self, token: str) -> list[dict[str, Any]]:
        """The push messages FCM accepted for one device token."""
        return [m["message"] for m in self.fcm.received if m["message"]["token"] == token]


@asynccontextmanager
async def _worker_process(env: dict[str, str]) -> AsyncIterator[tuple[asyncio.Event, list[str]]]:
    """``python worker.py``: its readiness (the "polling" log line) and its stderr lines;
    SIGTERM and a clean exit at the end."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "worker.py",
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    lines: list[str] = []
    ready = asyncio.Event()

    async def drain() -> None:
        assert process.stderr is not None
        async for raw in process.stderr:
            line = raw.decode(errors="replace").rstrip()
            lines.append(line)
            if "worker polling" in line:
                ready.set()

    reader = asyncio.create_task(drain())
    try:
        yield ready, lines
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), 60)
        await reader
        print("\n".join(["--- worker.py stderr ---", *lines]))  # shown when a test fails
    assert process.returncode == 0, lines[-20:]


async def _serve_gateway(app: GatewayApp, stack: AsyncExitStack) -> str:
    """Serves ``app`` with uvicorn (lifespan on) on a free port until ``stack`` closes."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    stack.callback(sock.close)
    server = uvicorn.Server(uvicorn.Config(app, lifespan="on", log_config=None, access_log=False))

    async def serve_app() -> None:
        try:
            await server.serve(sockets=[sock])
        except SystemExit:  # uvicorn's answer to a failed startup
            raise RuntimeError(f"gateway did not start: {app.startup_error}") from None

    task = asyncio.create_task(serve_app())

    async def stop() -> None:
        server.should_exit = True
        await asyncio.wait_for(task, 60)

    stack.push_async_callback(stop)
    async with asyncio.timeout(60):
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.02)
    return f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture
async def deployment(settings: Settings, dev_env: WorkflowEnvironment) -> AsyncIterator[Deployment]:
    temporal = dev_env.client.service_client.config.target_host
    async with AsyncExitStack() as stack:
        fcm = FcmSink()
        runner, fcm_url = await serve(fcm.app())
        stack.push_async_callback(runner.cleanup)
        ready, worker_log = await stack.enter_async_context(
            _worker_process(
                process_env(
                    DATABASE_URL=str(settings.database_url),
                    TEMPORAL_ADDRESS=temporal,
                    FCM_ENDPOINT=fcm_url,
                    NOTIFY_GRACE_SECONDS=str(GRACE_SECONDS),
                    GRACEFUL_SHUTDOWN_SECONDS="2",
                    RETENTION_SCHEDULE_ON_START="false",
                    LOG_LEVEL="INFO",
                )
            )
        )
        gateway_settings = base_settings(
            database_url=settings.database_url,
            temporal_address=temporal,
            fcm_endpoint=fcm_url,
            notify_grace_seconds=GRACE_SECONDS,
            graceful_shutdown_seconds=2,
        )
        url = await _serve_gateway(create_app(gateway_settings), stack)
        try:
            await asyncio.wait_for(ready.wait(), 60)
        except TimeoutError:
            raise AssertionError(f"worker.py is not polling: {worker_log[-20:]}") from None
        yield Deployment(url, gateway_settings, fcm, worker_log)


@pytest.fixture
async def connect(deployment: Deployment) -> AsyncIterator[Callable[[str], Awaitable[Peer]]]:
    """Connects a Socket.IO client as a user; all are closed at teardown."""
    peers: list[Peer] = []

    async def _connect(user_id: str) -> Peer:
        peer = Peer(user_id, socketio.AsyncClient(reconnection=False))
        for event in PEER_EVENTS:
            peer.client.on(event, peer.inbox[event].put_nowait)
        token = issue_token(deployment.settings.gateway_secret, user_id, ttl_seconds=60)
        await peer.client.connect(
            deployment.url, auth={"token": token}, transports=["websocket"], wait_timeout=WAIT
        )
        peers.append(peer)
        return peer

    yield _connect
    for peer in peers:
        if peer.client.connected:
            await peer.client.disconnect()


async def _person(core: Core, name: str, *, email: bool = False) -> str:
    return await core.directory.create_user(
        NewUser(
            handle=f"{name}-{uuid.uuid4().hex[:6]}",
            display_name=name.capitalize(),
            email=f"{name}@{MAIL_DOMAIN}" if email else None,
        )
    )


async def _group(core: Core, *members: str) -> str:
    return await core.directory.create_conversation(
        kind=ConversationKind.GROUP, members=list(members), title="ops", owner_id=members[0]
    )


async def _rows(core: Core, message_id: str, recipient: str) -> dict[Channel, NotificationRow]:
    """One recipient's log rows of a message, by channel."""
    rows = await core.notifications.rows(message_id=message_id, recipient_id=recipient)
    return {row.channel: row for row in rows}


def _ok(ack: dict[str, Any]) -> dict[str, Any]:
    assert ack.get("ok") is True, ack
    return ack


async def test_a_group_message_notifies_each_member_the_way_they_chose(
    deployment: Deployment,
    core: Core,
    dev_env: WorkflowEnvironment,
    connect: Callable[[str], Awaitable[Peer]],
) -> None:
    loop = asyncio.get_running_loop()
    ana, ben, cy = [await _person(core, name) for name in ("ana", "ben", "cy")]
    conversation = await _group(core, ana, ben, cy)
    a, b, c = await connect(ana), await connect(ben), await connect(cy)
    # Cy registers his phone, then goes offline.
    device = _ok(await c.call(EVENT_DEVICE_REGISTER, {"platform": "android", "token": "cy-tok"}))
    assert uuid.UUID(device["device_id"])
    await c.client.disconnect()
    leftovers = [message_workflow_id(ana, cmid) for cmid in ("m-1", "m-2")]
    try:
        first = _ok(
            await a.call(
                EVENT_MESSAGE_SEND,
                {
                    "conversation_id": conversation,
                    "client_message_id": "m-1",
                    "body": "deploy done",
                },
            )
        )
        sent_at = loop.time()

        # Ben is online: the bell rings at once, without the message's text.
        new = await b.next(EVENT_NOTIFICATION_NEW)
        assert (new["message_id"], new["conversation_id"]) == (first["message_id"], conversation)
        assert (new["title"], new["unread_count"]) == ("New message from Ana in #ops", 1)
        assert new["event_id"] == f"notification:new:{new['notification_id']}"
        assert "deploy" not in str(new)
        assert not a.received(EVENT_NOTIFICATION_NEW)  # never for one's own message

        # Cy is offline with a device: his push comes after the grace period.
        async def cy_pushed() -> bool:
            return len(deployment.pushes("cy-tok")) == 1

        await _until(cy_pushed, "cy's push reached FCM")
        assert loop.time() - sent_at > GRACE_SECONDS - 0.2
        [push] = deployment.pushes("cy-tok")
        assert push["notification"] == {"title": "Ana in #ops", "body": "deploy done"}
        assert push["data"]["message_id"] == first["message_id"]
        assert push["android"] == {"collapse_key": f"conv-{conversation}"}

        async def cy_push_recorded() -> bool:
            cys = await _rows(core, first["message_id"], cy)
            return cys[Channel.PUSH].status is NotificationStatus.SENT

        await _until(cy_push_recorded, "cy's push row is sent")
        bens = await _rows(core, first["message_id"], ben)
        assert bens[Channel.IN_APP].status is NotificationStatus.SENT
        assert bens[Channel.PUSH].status is NotificationStatus.SKIPPED  # no device
        assert bens[Channel.PUSH].reason == "no push device registered"

        # The bell lists it unread; reading the conversation clears it.
        listed = _ok(await b.call(EVENT_NOTIFICATION_LIST, {}))
        assert listed["unread_count"] == 1
        [row] = listed["notifications"]
        assert row == {
            "notification_id": new["notification_id"],
            "conversation_id": conversation,
            "message_id": first["message_id"],
            "status": "sent",
            "created_at": row["created_at"],
            "read_at": None,
        }
        read = await b.call(EVENT_MESSAGE_READ, {"conversation_id": conversation, "up_to_seq": 1})
        assert read == {"ok": True, "changed": 1, "up_to_seq": 1}
        unread = await b.next(EVENT_NOTIFICATION_UNREAD)
        assert (unread["unread_count"], unread["conversation_id"]) == (0, conversation)
        listed = _ok(await b.call(EVENT_NOTIFICATION_LIST, {"limit": 10}))
        assert listed["unread_count"] == 0
        [row] = listed["notifications"]
        assert row["notification_id"] == new["notification_id"] and row["read_at"] is not None
        unread_only = {"unread_only": True}
        assert _ok(await b.call(EVENT_NOTIFICATION_LIST, unread_only))["notifications"] == []

        # Cy comes back and mutes the group over the socket: the next message spares him.
        c = await connect(cy)
        muted = _ok(
            await c.call(
                EVENT_NOTIFICATION_PREFERENCES,
                {"conversation_id": conversation, "set": {"muted": True}},
            )
        )
        assert muted["preferences"]["muted"] is True
        second = _ok(
            await a.call(
                EVENT_MESSAGE_SEND,
                {"conversation_id": conversation, "client_message_id": "m-2", "body": "rollback"},
            )
        )
        new = await b.next(EVENT_NOTIFICATION_NEW)
        assert (new["message_id"], new["unread_count"]) == (second["message_id"], 1)
        # The agenda was planned before Ben's bell rang: nothing for Cy, so no push.
        assert await _rows(core, second["message_id"], cy) == {}
        await asyncio.sleep(GRACE_SECONDS + QUIET)
        assert len(deployment.pushes("cy-tok")) == 1
        assert not c.received(EVENT_NOTIFICATION_NEW)
        assert [e["seq"] for e in c.received(EVENT_MESSAGE_NEW)] == [2]  # still gets messages
        cys = _ok(await c.call(EVENT_NOTIFICATION_LIST, None))
        assert cys["unread_count"] == 1  # the first message's, never read
        assert [n["message_id"] for n in cys["notifications"]] == [first["message_id"]]

        # Cy reads the first message: the push still shown on his phone is cleared
        # (a data-only message with the same collapse key), and only once.
        read = await c.call(EVENT_MESSAGE_READ, {"conversation_id": conversation, "up_to_seq": 1})
        assert read == {"ok": True, "changed": 1, "up_to_seq": 1}

        async def cy_cleared() -> bool:
            return len(deployment.pushes("cy-tok")) == 2

        await _until(cy_cleared, "cy's shown push was cleared")
        clear = deployment.pushes("cy-tok")[1]
        assert clear["data"]["type"] == "clear" and "notification" not in clear
        assert clear["data"]["conversation_id"] == conversation
        assert clear["android"] == {"collapse_key": f"conv-{conversation}"}
        again = await c.call(EVENT_MESSAGE_READ, {"conversation_id": conversation, "up_to_seq": 1})
        assert again == {"ok": True, "changed": 0, "up_to_seq": 1}
        await asyncio.sleep(QUIET)
        assert len(deployment.pushes("cy-tok")) == 2

        # Ben's bell: newest first, the read one kept; limit and unread_only narrow it.
        def ids(ack: dict[str, Any]) -> list[str]:
            return [n["message_id"] for n in _ok(ack)["notifications"]]

        both = await b.call(EVENT_NOTIFICATION_LIST)
        assert ids(both) == [second["message_id"], first["message_id"]]
        assert both["unread_count"] == 1
        assert ids(await b.call(EVENT_NOTIFICATION_LIST, {"limit": 1})) == [second["message_id"]]
        assert ids(await b.call(EVENT_NOTIFICATION_LIST, unread_only)) == [second["message_id"]]
    finally:
        await _terminate_running(dev_env.client, leftovers)


# --- an SMTP outage, at workflow level on the dev server --------------------------------


async def test_an_email_digest_waits_out_an_smtp_outage_and_arrives_once(
    settings: Settings, core: Core, dev_env: WorkflowEnvironment, task_queue: str
) -> None:
    inbox, port = Inbox(), free_port()
    start_smtp(inbox, port).stop()  # the mail server goes down before the email falls due
    options = NotifyOptions(
        email_delay_seconds=1,
        digest_window_seconds=1,
        email_deadline_seconds=120,  # no fallback: the outage is shorter
        task_queue=f"{task_queue}-notify",
        push_task_queue=f"{task_queue}-push",
        email_task_queue=f"{task_queue}-email",
        sms_task_queue=f"{task_queue}-sms",
    )
    ana = await _person(core, "ana")
    ben = await _person(core, "ben", email=True)
    await core.preferences.set_user(ben, NotificationPreferences(push=False))
    conversation = await _group(core, ana, ben)
    client = dev_env.client
    worker_settings = base_settings(
        database_url=settings.database_url,
        smtp_host="127.0.0.1",
        smtp_port=port,
        email_from=f"Missive <notify@{MAIL_DOMAIN}>",
        workflow_sandbox=True,
    )
    async with AsyncExitStack() as stack:
        senders = open_notify(worker_settings, core, stack)
        for worker in notify_workers(worker_settings, client, core, None, senders, queues=options):
            await stack.enter_async_context(worker)

        stored = await core.messages.persist(
            PersistMessageInput(conversation, ana, "c-1", "deploy done")
        )
        notified: WorkflowHandle[Any, NotifyMessageResult] = await client.start_workflow(
            NotifyMessageWorkflow.run,
            NotifyMessageInput(
                message_id=stored.message_id,
                conversation_id=conversation,
                sender_id=ana,
                seq=stored.seq,
                created_at=stored.created_at,
                options=options,
            ),
            id=notify_message_workflow_id(stored.message_id),
            task_queue=options.task_queue,
        )
        digest_id = notify_digest_workflow_id(Channel.EMAIL, ben)

        async def digest_row() -> NotificationRow | None:
            rows = await core.notifications.rows(recipient_id=ben)
            found = [r for r in rows if r.dedupe_key.startswith("digest:")]
            return found[0] if found else None

        async def retried() -> bool:
            row = await digest_row()
            queued = row is not None and row.status is NotificationStatus.QUEUED
            return queued and row is not None and row.attempts >= 2

        try:
            await _until(retried, "the digest email was tried twice while SMTP was down")
            failing = await digest_row()
            assert failing is not None and "unreachable" in (failing.reason or ""), failing
            assert inbox.emails == []

            # The server comes back on the same port: the next retry gets through.
            stack.callback(start_smtp(inbox, port).stop)
            digested = await _digest_result(client, digest_id)
            result = await asyncio.wait_for(notified.result(), WAIT)
            await asyncio.sleep(QUIET)
        finally:
            await _terminate_running(client, [notified.id, digest_id])

    [mail] = inbox.to(f"ben@{MAIL_DOMAIN}")
    assert len(inbox.emails) == 1  # exactly once
    assert mail["Subject"] == "New message from Ana in #ops"
    sent = await digest_row()
    assert sent is not None and sent.status is NotificationStatus.SENT
    assert sent.attempts > 1 and sent.attempts >= failing.attempts + 1
    assert sent.provider_ref == mail["Message-ID"]
    item = (await _rows(core, stored.message_id, ben))[Channel.EMAIL]
    assert (item.status, item.digest_id) == (NotificationStatus.DIGESTED, sent.id)
    assert (digested.digests, digested.items) == (1, 1)
    assert (result.digested, result.fell_back, result.failed) == (1, 0, 0)


async def test_a_batch_announcement_notifies_its_recipients_and_an_import_does_not(
    settings: Settings, core: Core, dev_env: WorkflowEnvironment, task_queue: str
) -> None:
    fcm = FcmSink()
    options = NotifyOptions(
        grace_seconds=1,
        email_delay_seconds=86_400,
        task_queue=f"{task_queue}-notify",
        push_task_queue=f"{task_queue}-push",
        email_task_queue=f"{task_queue}-email",
        sms_task_queue=f"{task_queue}-sms",
    )
    ana = await _person(core, "ana")
    ben, cy = await _person(core, "ben"), await _person(core, "cy")
    await core.preferences.register_device(ben, "android", "ben-tok")
    await core.preferences.register_device(cy, "ios", "cy-tok")
    announced, imported = await _group(core, ana, ben), await _group(core, ana, cy)
    client = dev_env.client
    service = BatchService(
        core.engine, core.cipher, None, sinks=[AnnouncementNotifier(client, options)]
    )
    async with AsyncExitStack() as stack:
        runner, fcm_url = await serve(fcm.app())
        stack.push_async_callback(runner.cleanup)
        worker_settings = base_settings(
            database_url=settings.database_url, fcm_endpoint=fcm_url, workflow_sandbox=True
        )
        senders = open_notify(worker_settings, core, stack)
        for worker in notify_workers(worker_settings, client, core, None, senders, queues=options):
            await stack.enter_async_context(worker)

        await service.stage_items(
            "ann",
            BatchKind.ANNOUNCEMENT,
            [{"conversation_id": announced, "sender_id": ana, "body": "maintenance at 22:00"}],
        )
        await service.stage_items(
            "imp",
            BatchKind.IMPORT,
            [{"conversation_id": imported, "sender_id": ana, "body": "old news"}],
        )
        await service.process_chunk("ann", 1, 2, max_body_bytes=1000, step=10)
        await service.process_chunk("imp", 1, 2, max_body_bytes=1000, step=10)
        await service.process_chunk("ann", 1, 2, max_body_bytes=1000, step=10)  # a rerun

        ann_id = await _message_of(core, announced)
        handle = client.get_workflow_handle(
            notify_message_workflow_id(ann_id), result_type=NotifyMessageResult
        )
        result = await asyncio.wait_for(handle.result(), WAIT)
        await asyncio.sleep(QUIET)
    assert (result.in_app, result.pushed) == (1, 1)
    assert [m["message"]["token"] for m in fcm.received] == ["ben-tok"]  # once, and not cy's
    imp_id = await _message_of(core, imported)
    assert await core.notifications.rows(message_id=imp_id) == []
    with pytest.raises(RPCError):
        await client.get_workflow_handle(notify_message_workflow_id(imp_id)).describe()


async def _message_of(core: Core, conversation: str) -> str:
    async with core.engine.connect() as conn:
        return str(
            (
                await conn.execute(
                    text("SELECT id FROM messages WHERE conversation_id = :c"), {"c": conversation}
                )
            ).scalar_one()
        )
