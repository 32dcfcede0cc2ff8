"""The gateway under real client traffic: clients that ack everything, floods, disconnects.

Real Socket.IO clients against the gateway under uvicorn, on PostgreSQL and the
Temporal dev server.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import socketio
from sqlalchemy import text
from temporalio.api.enums.v1 import EventType
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment

from bench.raw_socket import RawSocket, raw_socket
from missive.config import Settings
from missive.constants import (
    EVENT_MESSAGE_DELIVERED,
    EVENT_MESSAGE_NEW,
    EVENT_MESSAGE_READ,
    EVENT_MESSAGE_RECEIPT,
    EVENT_MESSAGE_SEND,
    message_workflow_id,
)
from missive.models import ConversationKind
from missive.schemas import LifecyclePhase
from missive.tokens import issue_token
from runtime.wiring import Core
from tests.integration.test_gateway import (
    WAIT,
    Peer,
    _conversation,
    _people,
    _refused,
    _scalar,
    _send,
    connect,  # noqa: F401  (a fixture)
    gateway,  # noqa: F401  (a fixture)
    gateway_settings,
    open_peer,
    serve_gateway,
)
from workflows.message_lifecycle import MessageLifecycleWorkflow

pytestmark = pytest.mark.integration


def _ack_everything(peer: Peer, *, read_after: float) -> list[asyncio.Task[Any]]:
    """Makes ``peer`` behave like a chat app: delivered on arrival, read a moment later."""
    tasks: list[asyncio.Task[Any]] = []

    async def receipts(message: dict[str, Any]) -> None:
        where = {"conversation_id": message["conversation_id"], "up_to_seq": message["seq"]}
        delivered = await peer.call(EVENT_MESSAGE_DELIVERED, where)
        assert delivered["ok"] is True, delivered
        await asyncio.sleep(read_after)
        read = await peer.call(EVENT_MESSAGE_READ, where)
        assert read["ok"] is True, read

    def arrived(message: dict[str, Any]) -> None:
        peer.inbox[EVENT_MESSAGE_NEW].put_nowait(message)
        tasks.append(asyncio.create_task(receipts(message)))

    peer.client.on(EVENT_MESSAGE_NEW, arrived)
    return tasks


async def _history_events(
    dev_env: WorkflowEnvironment, workflow_id: str
) -> list[EventType.ValueType]:
    history = await dev_env.client.get_workflow_handle(workflow_id).fetch_history()
    return [event.event_type for event in history.events]


async def test_a_group_that_acks_everything_costs_each_lifecycle_one_signal(
    gateway: Any,  # noqa: F811
    core: Core,
    dev_env: WorkflowEnvironment,
    connect: Callable[[str], Awaitable[Peer]],  # noqa: F811
) -> None:
    ana, *others = await _people(core, 6)
    group = await _conversation(core, ana, *others)
    a = await connect(ana)
    readers = [await connect(user) for user in others]
    acking = [_ack_everything(peer, read_after=0.2) for peer in readers]

    sent = [await a.call(EVENT_MESSAGE_SEND, _send(group, f"m-{i}", f"hi {i}")) for i in range(3)]
    assert all(ack["ok"] for ack in sent), sent
    for i in range(3):
        handle = dev_env.client.get_workflow_handle_for(
            MessageLifecycleWorkflow.run, message_workflow_id(ana, f"m-{i}")
        )
        result = await asyncio.wait_for(handle.result(), WAIT)
        assert result.phase is LifecyclePhase.ALL_READ
        assert (result.delivered_count, result.read_count) == (5, 5)
        status = await handle.query(MessageLifecycleWorkflow.status)
        assert sorted(status.recipients) == sorted(others)
        assert {r.status for r in status.recipients.values()} == {"read"}
        assert all(r.read_at is not None for r in status.recipients.values())
        events = await _history_events(dev_env, handle.id)
        # Ten receipts (five readers, delivered then read) reached it as one signal
        # (two when a window boundary fell between them): no workflow per receipt.
        signals = events.count(EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED)
        assert 1 <= signals <= 2, events
    for tasks in acking:
        await asyncio.gather(*tasks)
    # The sender heard of each message's reads: the last event says five of five.
    receipts = a.received(EVENT_MESSAGE_RECEIPT)
    for ack in sent:
        mine = [r for r in receipts if r["message_id"] == ack["message_id"]]
        assert max(r["read_count"] for r in mine) == 5, mine
    assert await _scalar(core, "SELECT count(*) FROM deliveries WHERE status = 2") == 15
    running = [
        w.id
        async for w in dev_env.client.list_workflows(
            f"WorkflowType = 'ReceiptWorkflow' AND MissiveConversationId = '{group}'"
        )
    ]
    assert running == []  # the socket path starts no receipt workflows


async def test_sends_over_the_users_limit_are_refused_at_once_and_store_nothing(
    settings: Settings, core: Core, dev_env: WorkflowEnvironment
) -> None:
    ana, ben = await _people(core, 2)
    conversation = await _conversation(core, ana, ben)
    limited = gateway_settings(settings, dev_env, send_burst=5, send_rate_per_second=0.2)
    async with serve_gateway(limited) as running:
        a, b = await open_peer(running, ana), await open_peer(running, ben)
        try:
            answers = []
            for i in range(10):
                started = time.perf_counter()
                ack = await a.call(EVENT_MESSAGE_SEND, _send(conversation, f"f-{i}", "flood"))
                answers.append((ack, time.perf_counter() - started))
            ok = [ack for ack, _ in answers if ack["ok"]]
            refused = [(ack, took) for ack, took in answers if not ack["ok"]]
            assert len(ok) == 5 and len(refused) == 5, answers
            for ack, took in refused:
                _refused(ack, "RateLimited", "sending too fast")
                assert 0 < ack["error"]["retry_after_ms"] <= 5000, ack
                assert took < 0.25, took  # a loaded machine's worst; the median below
            # Answered without starting anything: well within the issue's 50 ms.
            assert statistics.median(took for _, took in refused) < 0.05, refused
            # Nothing was started or stored for the refused sends.
            for i in range(5, 10):
                handle = dev_env.client.get_workflow_handle(message_workflow_id(ana, f"f-{i}"))
                with pytest.raises(RPCError) as missing:
                    await handle.describe()
                assert missing.value.status is RPCStatusCode.NOT_FOUND
            assert await _scalar(core, "SELECT count(*) FROM messages") == 5
            # Another user is not slowed by ana's empty bucket.
            assert (await b.call(EVENT_MESSAGE_SEND, _send(conversation, "b-1", "hi")))["ok"]
        finally:
            await a.client.disconnect()
            await b.client.disconnect()


async def test_the_send_limit_holds_across_gateway_processes(
    settings: Settings, core: Core, dev_env: WorkflowEnvironment
) -> None:
    ana, ben = await _people(core, 2)
    conversation = await _conversation(core, ana, ben)
    limited = gateway_settings(settings, dev_env, send_burst=4, send_rate_per_second=0.1)
    async with serve_gateway(limited) as first, serve_gateway(limited) as second:
        here, there = await open_peer(first, ana), await open_peer(second, ana)
        try:
            acks = []
            for i in range(8):
                peer = here if i % 2 else there
                acks.append(await peer.call(EVENT_MESSAGE_SEND, _send(conversation, f"x-{i}", "x")))
        finally:
            await here.client.disconnect()
            await there.client.disconnect()
    assert sum(1 for ack in acks if ack["ok"]) == 4, acks
    assert {ack["error"]["type"] for ack in acks if not ack["ok"]} == {"RateLimited"}
    assert await _scalar(core, "SELECT count(*) FROM messages") == 4


async def test_a_socket_with_too_many_sends_in_flight_is_refused_at_once(
    settings: Settings, core: Core, dev_env: WorkflowEnvironment
) -> None:
    ana, ben = await _people(core, 2)
    conversation = await _conversation(core, ana, ben)
    capped = gateway_settings(settings, dev_env, send_max_in_flight_per_socket=2)
    async with serve_gateway(capped) as running:
        a = await open_peer(running, ana)
        try:
            # Every other send has no body: read, it would be InvalidInput.
            sends = [
                _send(conversation, f"p-{i}", "x")
                if i % 2 == 0
                else {"conversation_id": conversation, "client_message_id": f"p-{i}"}
                for i in range(16)
            ]
            acks = await asyncio.gather(*(a.call(EVENT_MESSAGE_SEND, send) for send in sends))
        finally:
            await a.client.disconnect()
    good, bodiless = acks[::2], acks[1::2]
    ok = [ack for ack in good if ack["ok"]]
    assert ok and len(ok) < len(good), good
    for ack in good:
        if not ack["ok"]:
            _refused(ack, "RateLimited", "waiting for their ack")
    # While the socket is at its cap, a send is refused from its packet's header,
    # before its payload is decoded or checked: even a bodiless one hears RateLimited.
    kinds = [ack["error"]["type"] for ack in bodiless]
    assert set(kinds) <= {"InvalidInput", "RateLimited"} and "RateLimited" in kinds, bodiless
    # Every ok ack is a stored row, and no refused send is.
    assert await _scalar(core, "SELECT count(*) FROM messages") == len(ok)


Burst = Callable[..., Awaitable[list[dict[str, Any]]]]
"""Writes events (name, data) back to back on one raw socket and returns their acks."""


@asynccontextmanager
async def _one_socket(
    settings: Settings, core: Core, dev_env: WorkflowEnvironment, *others: str
) -> AsyncIterator[tuple[str, Burst]]:
    """A group its owner shares with ``others`` (a second user if none) and the owner's
    raw socket (one frame after the other, no client library between), under a send
    limit a burst does not reach."""
    (ana,) = await _people(core, 1)
    members = [ana, *(others or await _people(core, 1))]
    conversation = await core.directory.create_conversation(
        kind=ConversationKind.GROUP, members=members, owner_id=ana
    )
    roomy = gateway_settings(settings, dev_env, send_rate_per_second=1000, send_burst=1000)
    async with serve_gateway(roomy) as running:
        token = issue_token(running.settings.gateway_secret, ana, ttl_seconds=60)
        async with raw_socket(running.url, token) as a:
            next_id = 0

            async def burst(*events: tuple[str, dict[str, Any]]) -> list[dict[str, Any]]:
                nonlocal next_id
                ids = range(next_id, next_id + len(events))
                next_id += len(events)
                reading = asyncio.create_task(a.read_acks(next_id, within=WAIT))
                await a.write(
                    [RawSocket.event(i, e, d) for i, (e, d) in zip(ids, events, strict=True)]
                )
                await reading
                return [a.acks[i] for i in ids]

            yield conversation, burst


async def test_a_sockets_burst_of_sends_is_stored_in_the_order_it_was_sent(
    settings: Settings, core: Core, dev_env: WorkflowEnvironment
) -> None:
    """Four messages typed in a row and written back to back keep their order: seqs in
    send order, in the acks and in the table."""
    sent: list[str] = []
    async with _one_socket(settings, core, dev_env) as (conversation, burst):
        for n in range(8):
            cmids = [f"burst-{n}-{k}" for k in range(4)]
            acks = await burst(*((EVENT_MESSAGE_SEND, _send(conversation, c, c)) for c in cmids))
            assert all(ack["ok"] for ack in acks), acks
            seqs = [ack["seq"] for ack in acks]
            assert seqs == sorted(seqs), (n, seqs)
            sent += cmids
    async with core.engine.connect() as conn:
        stored = await conn.execute(
            text("SELECT client_message_id FROM messages WHERE conversation_id = :c ORDER BY seq"),
            {"c": conversation},
        )
        assert list(stored.scalars()) == sent


async def test_quick_edits_of_a_message_leave_the_last_text_standing(
    settings: Settings, core: Core, dev_env: WorkflowEnvironment
) -> None:
    """Three edits written back to back (a typo fixed, then fixed again) apply in the
    order they were sent: the text left is the last one, for every burst."""
    left: list[str] = []
    async with _one_socket(settings, core, dev_env) as (conversation, burst):
        for n in range(6):
            (sent,) = await burst((EVENT_MESSAGE_SEND, _send(conversation, f"e-{n}", "v0")))
            where = {"conversation_id": conversation, "message_id": sent["message_id"]}
            edits = await burst(*(("message:edit", {**where, "body": f"v{k}"}) for k in (1, 2, 3)))
            assert all(ack["ok"] for ack in edits), edits
            after = {"conversation_id": conversation, "after_seq": sent["seq"] - 1, "limit": 1}
            (page,) = await burst(("message:sync", after))
            left.append(page["messages"][0]["body"])
    assert left == ["v3"] * 6


async def test_a_member_removed_then_written_about_from_the_same_socket_is_no_recipient(
    settings: Settings, core: Core, dev_env: WorkflowEnvironment
) -> None:
    """The owner removes a member and sends at once, then adds them back and sends at
    once, each pair written back to back: the first message is not theirs, the second is."""
    ben, cy = await _people(core, 2)
    async with _one_socket(settings, core, dev_env, ben, cy) as (conversation, burst):
        for n in range(4):
            removed, after = await burst(
                ("conversation:remove_member", {"conversation_id": conversation, "user_id": ben}),
                (EVENT_MESSAGE_SEND, _send(conversation, f"gone-{n}", "after")),
            )
            added, back = await burst(
                ("conversation:add_members", {"conversation_id": conversation, "user_ids": [ben]}),
                (EVENT_MESSAGE_SEND, _send(conversation, f"back-{n}", "welcome")),
            )
            assert all(a["ok"] for a in (removed, after, added, back)), (removed, after, added)
            for ack, theirs in ((after, 0), (back, 1)):
                found = await _scalar(
                    core,
                    "SELECT count(*) FROM deliveries WHERE message_id = :m AND recipient_id = :u",
                    m=ack["message_id"],
                    u=ben,
                )
                assert found == theirs, (n, ack["seq"], theirs)


async def test_receipts_with_bad_watermarks_get_a_clear_error_each(
    gateway: Any,  # noqa: F811
    core: Core,
    connect: Callable[[str], Awaitable[Peer]],  # noqa: F811
) -> None:
    ana, ben = await _people(core, 2)
    conversation = await _conversation(core, ana, ben)
    a, b = await connect(ana), await connect(ben)
    assert (await a.call(EVENT_MESSAGE_SEND, _send(conversation, "m-1", "one")))["ok"]
    await b.next(EVENT_MESSAGE_NEW)
    for bad in (-1, 0, 1.5, "1", True, [1], {"seq": 1}):
        ack = await b.call(EVENT_MESSAGE_READ, {"conversation_id": conversation, "up_to_seq": bad})
        _refused(ack, "InvalidInput", "up_to_seq must be a positive integer")
    past = await b.call(EVENT_MESSAGE_READ, {"conversation_id": conversation, "up_to_seq": 2})
    _refused(past, "MessageNotVisible", "no message 2 (its last is 1)")
    # Good and bad receipts at once: each gets its own answer, the good ones apply.
    answers = await asyncio.gather(
        b.call(EVENT_MESSAGE_DELIVERED, {"conversation_id": conversation, "up_to_seq": 1}),
        b.call(EVENT_MESSAGE_READ, {"conversation_id": conversation, "up_to_seq": 7}),
        b.call(EVENT_MESSAGE_READ, {"conversation_id": str(uuid.uuid4()), "up_to_seq": 1}),
    )
    assert answers[0] == {"ok": True, "changed": 1, "up_to_seq": 1}
    _refused(answers[1], "MessageNotVisible", "no message 7")
    _refused(answers[2], "ConversationNotFound", "does not exist")
    assert await _scalar(core, "SELECT status FROM deliveries") == 1


async def test_a_client_that_disconnects_with_sends_in_flight_leaves_no_traceback(
    gateway: Any,  # noqa: F811
    core: Core,
    caplog: pytest.LogCaptureFixture,
) -> None:
    ana, ben = await _people(core, 2)
    conversation = await _conversation(core, ana, ben)
    client = socketio.AsyncClient(reconnection=False)
    token = issue_token(gateway.settings.gateway_secret, ana, ttl_seconds=60)
    await client.connect(gateway.url, auth={"token": token}, transports=["websocket"])
    caplog.set_level(logging.WARNING)
    admission = gateway.app.gateway.admission
    for i in range(5):
        await client.emit(EVENT_MESSAGE_SEND, _send(conversation, f"d-{i}", "bye"), callback=print)
    async with asyncio.timeout(WAIT):
        while admission.in_flight == 0:  # noqa: ASYNC110 (the gateway is working on them)
            await asyncio.sleep(0.001)
    await client.disconnect()
    async with asyncio.timeout(WAIT):
        while admission.in_flight:  # noqa: ASYNC110 (a counter, no event)
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.3)  # the acks would have gone out by now
    assert [r for r in caplog.records if r.exc_info] == []
    # Nor a warning per answer that found the socket gone: routine for phones.
    assert [r.getMessage() for r in caplog.records if "sid" in r.getMessage()] == []
    stored = await _scalar(core, "SELECT count(*) FROM messages")
    assert stored >= 1
    assert stored == await _scalar(core, "SELECT count(DISTINCT client_message_id) FROM messages")


async def test_a_flooding_socket_is_refused_at_once_then_paced_and_others_are_answered_at_once(
    settings: Settings, core: Core, dev_env: WorkflowEnvironment
) -> None:
    ana, ben = await _people(core, 2)
    conversation = await _conversation(core, ana, ben)
    paced = gateway_settings(
        settings,
        dev_env,
        gateway_socket_events_per_second=50,
        gateway_socket_events_burst=20,
        # 30 refusals, never refilled: what is past them is read at the pace.
        gateway_socket_refusals_per_second=0,
        gateway_socket_refusals_burst=30,
    )
    async with serve_gateway(paced) as running:
        a, b = await open_peer(running, ana), await open_peer(running, ben)
        try:
            bad = {"conversation_id": conversation, "up_to_seq": -1}
            # The CONNECT packet took one of the socket's 20: let the bucket refill
            # (20 ms at 50/s) so that the flood meets a full burst.
            await asyncio.sleep(0.1)
            started = time.perf_counter()

            async def timed() -> tuple[dict[str, Any], float]:
                ack = await a.call(EVENT_MESSAGE_READ, bad)
                return ack, time.perf_counter() - started

            flood = asyncio.gather(*(timed() for _ in range(90)))
            await asyncio.sleep(0.3)  # the flood's rest is being read at 50/s now
            asked = time.perf_counter()
            other = await b.call(EVENT_MESSAGE_SEND, _send(conversation, "b-1", "hi"))
            answered = time.perf_counter() - asked
            acks = await flood
            took = time.perf_counter() - started
            metrics = running.app.gateway.metrics.render().decode()
        finally:
            await a.client.disconnect()
            await b.client.disconnect()
    assert other["ok"] is True and answered < 0.5, (other, answered)
    kinds = [ack["error"]["type"] for ack, _ in acks]
    # The burst of 20 is read and answered (each its own InvalidInput); the next 30
    # are refused from their header without being read; the rest are read at 50/s.
    assert kinds[:20] == ["InvalidInput"] * 20, kinds
    assert kinds.count("RateLimited") == 30, kinds
    assert kinds[-20:] == ["InvalidInput"] * 20, kinds
    refused = [(ack, at) for ack, at in acks if ack["error"]["type"] == "RateLimited"]
    for ack, at in refused:
        assert ack["error"]["retry_after_ms"] >= 1, ack
        assert "events a second" in ack["error"]["message"], ack
        assert at < 0.5, at  # answered at once, not in the paced turn
    assert took >= 0.5, took  # about 40 paced at 50/s after the burst
    assert 'missive_gateway_rejections_total{event="*",reason="socket_rate"} 30.0' in metrics
