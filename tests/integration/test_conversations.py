"""The conversation as a client sees it: catch-up, history, edits, deletes, membership.

Real Socket.IO clients (each acks ``message:delivered`` on arrival and
``message:read`` once it has the message) against the gateway under uvicorn, on
PostgreSQL and the Temporal dev server.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
import socketio
from temporalio.testing import WorkflowEnvironment

from missive.config import Settings
from missive.constants import (
    EVENT_CONVERSATION_ADD_MEMBERS,
    EVENT_CONVERSATION_CREATE,
    EVENT_CONVERSATION_LEAVE,
    EVENT_CONVERSATION_LIST,
    EVENT_CONVERSATION_MEMBER_ADDED,
    EVENT_CONVERSATION_MEMBER_REMOVED,
    EVENT_CONVERSATION_REMOVE_MEMBER,
    EVENT_CONVERSATION_SET_ROLE,
    EVENT_MESSAGE_DELETE,
    EVENT_MESSAGE_DELETED,
    EVENT_MESSAGE_DELIVERED,
    EVENT_MESSAGE_EDIT,
    EVENT_MESSAGE_EDITED,
    EVENT_MESSAGE_NEW,
    EVENT_MESSAGE_READ,
    EVENT_MESSAGE_SEND,
    EVENT_MESSAGE_SYNC,
    EVENT_NOTIFICATION_LIST,
    clear_pushes_workflow_id,
)
from missive.schemas import PersistMessageInput
from missive.tokens import issue_token
from runtime.wiring import Core
from tests.integration.test_gateway import (
    QUIET,
    WAIT,
    RunningGateway,
    _people,
    _refused,
    _scalar,
    _send,
    gateway,  # noqa: F401  (a fixture)
    gateway_settings,
    serve_gateway,
)

pytestmark = pytest.mark.integration


@dataclass
class Client:
    """A chat client: records every event, acks delivered on arrival and read at once.

    ``drop`` decides which ``message:new`` events are lost on the way (a flaky
    network); the client then notices the seq jump as a real one would.
    """

    user_id: str
    sio: socketio.AsyncClient
    events: dict[str, asyncio.Queue[dict[str, Any]]] = field(
        default_factory=lambda: defaultdict(asyncio.Queue)
    )
    seen: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    drop: Callable[[dict[str, Any]], bool] = lambda _: False
    acks: list[asyncio.Task[Any]] = field(default_factory=list)

    async def call(self, event: str, data: object = None) -> dict[str, Any]:
        """Emits an event and returns the gateway's ack; over the send limit, waits the
        ``retry_after_ms`` it was told and sends it again, as a chat app does."""
        while True:
            ack: dict[str, Any] = await self.sio.call(event, data, timeout=WAIT)
            if ack.get("ok") is False and ack["error"]["type"] == "RateLimited":
                await asyncio.sleep(ack["error"]["retry_after_ms"] / 1000)
                continue
            return ack

    async def next(self, event: str) -> dict[str, Any]:
        """The next ``event`` this client receives."""
        return await asyncio.wait_for(self.events[event].get(), WAIT)

    def received(self, event: str) -> list[dict[str, Any]]:
        """Every ``event`` received and not yet taken, without waiting."""
        queue, found = self.events[event], []
        while not queue.empty():
            found.append(queue.get_nowait())
        return found

    async def on_event(self, event: str, data: Any) -> None:
        if event == EVENT_MESSAGE_NEW:
            if self.drop(data):
                return
            self.seen[data["conversation_id"]].append(data["seq"])
            self.acks.append(asyncio.ensure_future(self._receipts(data)))
        self.events[event].put_nowait(data)

    async def _receipts(self, message: dict[str, Any]) -> None:
        where = {"conversation_id": message["conversation_id"], "up_to_seq": message["seq"]}
        for event in (EVENT_MESSAGE_DELIVERED, EVENT_MESSAGE_READ):
            ack = await self.call(event, where)
            if not ack["ok"] and ack["error"]["type"] == "NotAMember":
                return  # removed meanwhile: nothing to acknowledge any more
            assert ack["ok"] is True, ack


async def open_client(server: RunningGateway, user_id: str, **options: Any) -> Client:
    """A connected client of ``user_id`` (a fresh token)."""
    client = Client(user_id, socketio.AsyncClient(reconnection=False), **options)
    client.sio.on("*", client.on_event)
    token = issue_token(server.settings.gateway_secret, user_id, ttl_seconds=300)
    await client.sio.connect(
        server.url, auth={"token": token}, transports=["websocket"], wait_timeout=WAIT
    )
    return client


@pytest.fixture
async def clients(gateway: RunningGateway) -> AsyncIterator[Callable[..., Awaitable[Client]]]:  # noqa: F811
    """Opens clients on the test's gateway; all are closed at teardown."""
    opened: list[Client] = []

    async def _open(user_id: str, **options: Any) -> Client:
        client = await open_client(gateway, user_id, **options)
        opened.append(client)
        return client

    yield _open
    for client in opened:
        await client.sio.disconnect()
        for task in client.acks:
            task.cancel()


async def _group(owner: Client, *members: str, title: str = "team") -> str:
    ack = await owner.call(
        EVENT_CONVERSATION_CREATE, {"kind": "group", "member_ids": list(members), "title": title}
    )
    assert ack["ok"] is True, ack
    return str(ack["conversation_id"])


async def _sent(client: Client, conversation: str, body: str) -> dict[str, Any]:
    ack = await client.call(EVENT_MESSAGE_SEND, _send(conversation, uuid.uuid4().hex, body))
    assert ack["ok"] is True, ack
    return ack


async def test_a_client_back_from_offline_syncs_exactly_what_it_missed(
    gateway: RunningGateway,  # noqa: F811
    core: Core,
    clients: Callable[..., Awaitable[Client]],
) -> None:
    ana, ben = await _people(core, 2)
    a, b = await clients(ana), await clients(ben)
    conversation = await _group(a, ben)
    await b.next(EVENT_CONVERSATION_MEMBER_ADDED)
    first = await _sent(a, conversation, "before the tunnel")
    assert (await b.next(EVENT_MESSAGE_NEW))["message_id"] == first["message_id"]
    await asyncio.gather(*b.acks)
    await b.sio.disconnect()

    missed = [await _sent(a, conversation, f"missed {i}") for i in range(5)]
    # A send is acked once stored and announced just after: let the last announcement
    # go out before ben is back, or he hears it live and reads it (his client acks).
    while (await a.next(EVENT_MESSAGE_NEW))["seq"] < missed[-1]["seq"]:
        pass

    back = await clients(ben)
    listed = await back.call(EVENT_CONVERSATION_LIST)
    assert listed["ok"] is True, listed
    (state,) = [c for c in listed["conversations"] if c["conversation_id"] == conversation]
    assert state == {
        "conversation_id": conversation,
        "kind": "group",
        "title": "team",
        "encryption_mode": "standard",
        "role": "member",
        "member_count": 2,
        "last_seq": 6,
        "delivered_seq": 1,
        "read_seq": 1,
        "unread_count": 5,
        "muted": False,
        "last_message_at": missed[-1]["created_at"],
    }
    page = await back.call(
        EVENT_MESSAGE_SYNC, {"conversation_id": conversation, "after_seq": state["read_seq"]}
    )
    assert page["ok"] is True, page
    assert [m["message_id"] for m in page["messages"]] == [m["message_id"] for m in missed]
    assert [m["body"] for m in page["messages"]] == [f"missed {i}" for i in range(5)]
    assert [m["seq"] for m in page["messages"]] == [2, 3, 4, 5, 6]
    assert (page["has_more"], page["last_seq"]) == (False, 6)
    message = page["messages"][0]
    assert set(message) == {
        "event_id",
        "message_id",
        "conversation_id",
        "seq",
        "sender_id",
        "client_message_id",
        "body",
        "created_at",
        "edited_at",
        "deleted_at",
    }
    assert (message["sender_id"], message["edited_at"], message["deleted_at"]) == (ana, None, None)

    # Nothing missed after the last seq: an empty page, not an error.
    tail = await back.call(EVENT_MESSAGE_SYNC, {"conversation_id": conversation, "after_seq": 6})
    assert (tail["messages"], tail["has_more"], tail["last_seq"]) == ([], False, 6)

    # A missed message deleted before ben reads it no longer counts as unread.
    gone = await a.call(
        EVENT_MESSAGE_DELETE,
        {"conversation_id": conversation, "message_id": missed[1]["message_id"]},
    )
    assert gone["ok"] is True, gone
    listed = await back.call(EVENT_CONVERSATION_LIST)
    (state,) = [c for c in listed["conversations"] if c["conversation_id"] == conversation]
    assert (state["unread_count"], state["last_seq"]) == (4, 6)


async def test_one_batched_sync_catches_up_on_every_conversation(
    gateway: RunningGateway,  # noqa: F811
    core: Core,
    clients: Callable[..., Awaitable[Client]],
) -> None:
    ana, ben, cy = await _people(core, 3)
    a = await clients(ana)
    first, second = await _group(a, ben), await _group(a, ben, title="second")
    elsewhere = await _group(a, cy, title="not ben's")
    for conversation, count in ((first, 3), (second, 2)):
        for i in range(count):
            await _sent(a, conversation, f"{conversation[:4]} {i}")
    b = await clients(ben)
    requests = [
        {"conversation_id": first, "after_seq": 1},
        {"conversation_id": second},
        {"conversation_id": elsewhere},
    ]
    ack = await b.call(EVENT_MESSAGE_SYNC, {"conversations": requests})
    assert ack["ok"] is True, ack
    one, two, refused = ack["conversations"]
    assert [m["seq"] for m in one["messages"]] == [2, 3]
    assert (one["conversation_id"], one["has_more"], one["last_seq"]) == (first, False, 3)
    assert [m["body"] for m in two["messages"]] == [f"{second[:4]} 0", f"{second[:4]} 1"]
    assert refused["conversation_id"] == elsewhere
    assert refused["error"]["type"] == "NotAMember" and "messages" not in refused
    for payload, match in (
        ({"conversations": []}, "non-empty list"),
        ({"conversations": [{"conversation_id": first}] * 101}, "at most 100"),
        ({"conversations": [{"conversation_id": "nope"}]}, "conversations[].conversation_id"),
    ):
        _refused(await b.call(EVENT_MESSAGE_SYNC, payload), "InvalidInput", match)


async def test_a_client_whose_events_were_dropped_recovers_them_from_the_seq_gap(
    gateway: RunningGateway,  # noqa: F811
    core: Core,
    clients: Callable[..., Awaitable[Client]],
) -> None:
    ana, ben = await _people(core, 2)
    a = await clients(ana)
    conversation = await _group(a, ben)
    # Ben's network loses every third message:new.
    b = await clients(ben, drop=lambda event: event["seq"] % 3 == 0)
    sent = [await _sent(a, conversation, f"m{i}") for i in range(9)]
    last = sent[-1]["seq"]
    async with asyncio.timeout(WAIT):
        while len(b.seen[conversation]) < 6:  # noqa: ASYNC110 (events, counted as they come)
            await asyncio.sleep(0.01)
    seen = b.seen[conversation]
    gaps = [seq for seq in range(1, last + 1) if seq not in seen]
    assert gaps == [3, 6, 9]
    # The client syncs from the last seq before each jump (and after the last event).
    recovered = []
    for gap in gaps:
        page = await b.call(
            EVENT_MESSAGE_SYNC, {"conversation_id": conversation, "after_seq": gap - 1, "limit": 1}
        )
        recovered += page["messages"]
    assert [m["seq"] for m in recovered] == gaps
    assert [m["body"] for m in recovered] == ["m2", "m5", "m8"]


async def test_paging_back_through_1000_messages_returns_each_once(
    gateway: RunningGateway,  # noqa: F811
    core: Core,
    clients: Callable[..., Awaitable[Client]],
) -> None:
    ana, ben = await _people(core, 2)
    a = await clients(ana)
    conversation = await _group(a, ben)
    for i in range(1000):
        await core.messages.persist(
            PersistMessageInput(
                conversation_id=conversation,
                sender_id=ana if i % 2 else ben,
                client_message_id=f"h-{i}",
                body=f"history {i}",
            )
        )
    b = await clients(ben)
    pages, before = [], 1001
    while True:
        page = await b.call(
            EVENT_MESSAGE_SYNC,
            {"conversation_id": conversation, "before_seq": before, "limit": 300},
        )
        assert page["ok"] is True, page
        pages.append(page["messages"])
        if not page["has_more"]:
            break
        before = page["messages"][0]["seq"]
    assert [len(p) for p in pages] == [300, 300, 300, 100]
    seqs = [m["seq"] for p in reversed(pages) for m in p]
    assert seqs == list(range(1, 1001))
    bodies = [m["body"] for p in reversed(pages) for m in p]
    assert bodies == [f"history {i}" for i in range(1000)]
    # The default page is the first 100, oldest first.
    first = await b.call(EVENT_MESSAGE_SYNC, {"conversation_id": conversation})
    assert [m["seq"] for m in first["messages"]] == list(range(1, 101))
    assert first["has_more"] is True


async def test_an_edit_reaches_the_other_clients_and_sync(
    gateway: RunningGateway,  # noqa: F811
    core: Core,
    clients: Callable[..., Awaitable[Client]],
) -> None:
    ana, ben = await _people(core, 2)
    a, b = await clients(ana), await clients(ben)
    conversation = await _group(a, ben)
    sent = await _sent(a, conversation, "see you at 5")
    await b.next(EVENT_MESSAGE_NEW)
    where = {"conversation_id": conversation, "message_id": sent["message_id"]}

    edited = await a.call(EVENT_MESSAGE_EDIT, {**where, "body": "see you at 6"})
    assert (edited["ok"], edited["changed"], edited["seq"]) == (True, True, 1), edited
    event = await b.next(EVENT_MESSAGE_EDITED)
    assert event == {
        "event_id": f"{EVENT_MESSAGE_EDITED}:{sent['message_id']}:{edited['edited_at']}",
        "message_id": sent["message_id"],
        "conversation_id": conversation,
        "seq": 1,
        "sender_id": ana,
        "body": "see you at 6",
        "edited_at": edited["edited_at"],
    }
    # The same edit again (a retry): same answer, the same event id, nothing rewritten.
    again = await a.call(EVENT_MESSAGE_EDIT, {**where, "body": "see you at 6"})
    assert (again["changed"], again["edited_at"]) == (False, edited["edited_at"])
    repeat = await b.next(EVENT_MESSAGE_EDITED)
    assert repeat["event_id"] == event["event_id"]

    page = await b.call(EVENT_MESSAGE_SYNC, {"conversation_id": conversation})
    (message,) = page["messages"]
    assert (message["body"], message["edited_at"]) == ("see you at 6", edited["edited_at"])
    stored = await core.messages.load(sent["message_id"])
    assert stored.body == "see you at 6"
    assert await _scalar(core, "SELECT indexed_at IS NULL FROM messages") is True  # to re-index


async def test_a_delete_destroys_the_body_and_takes_back_its_notifications(
    gateway: RunningGateway,  # noqa: F811
    core: Core,
    dev_env: WorkflowEnvironment,
    clients: Callable[..., Awaitable[Client]],
) -> None:
    ana, ben = await _people(core, 2)
    a, b = await clients(ana), await clients(ben)
    conversation = await _group(a, ben)
    sent = await _sent(a, conversation, "my password is hunter2")
    await b.next(EVENT_MESSAGE_NEW)
    mid = sent["message_id"]
    await asyncio.gather(*b.acks)
    # Ben's notifications of it: an email still to send, an unread in-app one, a shown push
    # (in place of what his read just settled).
    now = datetime.now(UTC)
    async with core.engine.begin() as conn:
        await conn.exec_driver_sql("DELETE FROM notifications")
        for channel, status in (("email", "pending"), ("in_app", "sent"), ("push", "sent")):
            await conn.exec_driver_sql(
                "INSERT INTO notifications (id, recipient_id, channel, dedupe_key, status,"
                " message_id, conversation_id, seq, due_at, sent_at)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, 1, $8, $8)",
                (
                    uuid.uuid4(),
                    uuid.UUID(ben),
                    channel,
                    f"m:{mid}",
                    status,
                    uuid.UUID(mid),
                    uuid.UUID(conversation),
                    now,
                ),
            )
    bell = await b.call(EVENT_NOTIFICATION_LIST)
    assert bell["unread_count"] == 1

    deleted = await b.call(
        EVENT_MESSAGE_DELETE, {"conversation_id": conversation, "message_id": mid}
    )
    _refused(deleted, "NotAllowed", "only its sender or an owner or admin")
    deleted = await a.call(
        EVENT_MESSAGE_DELETE, {"conversation_id": conversation, "message_id": mid}
    )
    assert (deleted["ok"], deleted["changed"]) == (True, True), deleted
    event = await b.next(EVENT_MESSAGE_DELETED)
    assert event == {
        "event_id": f"{EVENT_MESSAGE_DELETED}:{mid}",
        "message_id": mid,
        "conversation_id": conversation,
        "seq": 1,
        "deleted_at": deleted["deleted_at"],
    }
    unread = await b.next("notification:unread")
    while unread.get("message_id") != mid:  # the counts of ben's own read came first
        unread = await b.next("notification:unread")
    assert unread["unread_count"] == 0

    # The body is gone from the row, not just flagged.
    assert await _scalar(core, "SELECT length(body_ciphertext) FROM messages") == 0
    assert await _scalar(core, "SELECT e2e_header IS NULL FROM messages") is True
    page = await b.call(EVENT_MESSAGE_SYNC, {"conversation_id": conversation})
    (tombstone,) = page["messages"]
    assert (tombstone["body"], tombstone["deleted_at"]) == (None, deleted["deleted_at"])
    assert tombstone["seq"] == 1
    statuses = await _scalar(
        core,
        "SELECT string_agg(channel || '=' || status || ':' || (cleared_at IS NOT NULL)::text,"
        " ',' ORDER BY channel) FROM notifications",
    )
    assert statuses == "email=cancelled:false,in_app=cancelled:false,push=sent:true"
    assert (await b.call(EVENT_NOTIFICATION_LIST))["unread_count"] == 0
    # The shown push is cleared by a workflow of its own (the push queue's worker sends it).
    push_id = await _scalar(core, "SELECT id::text FROM notifications WHERE channel = 'push'")
    clearing = dev_env.client.get_workflow_handle(clear_pushes_workflow_id([push_id]))
    assert (await clearing.describe()).id == clear_pushes_workflow_id([push_id])

    # Deleting again answers the same, and changes nothing; an edit now is refused.
    again = await a.call(EVENT_MESSAGE_DELETE, {"conversation_id": conversation, "message_id": mid})
    assert (again["ok"], again["changed"], again["deleted_at"]) == (
        True,
        False,
        deleted["deleted_at"],
    )
    edit = await a.call(
        EVENT_MESSAGE_EDIT, {"conversation_id": conversation, "message_id": mid, "body": "x"}
    )
    _refused(edit, "MessageDeleted", "was deleted")


async def test_an_added_member_receives_the_next_message_without_reconnecting(
    gateway: RunningGateway,  # noqa: F811
    core: Core,
    clients: Callable[..., Awaitable[Client]],
) -> None:
    ana, ben, dan = await _people(core, 3)
    a, d = await clients(ana), await clients(dan)
    conversation = await _group(a, ben)
    added = await a.call(
        EVENT_CONVERSATION_ADD_MEMBERS, {"conversation_id": conversation, "user_ids": [dan, ben]}
    )
    assert added["ok"] is True, added
    assert (added["added"], added["already_members"]) == ([dan], [ben])
    notice = await d.next(EVENT_CONVERSATION_MEMBER_ADDED)
    assert (notice["conversation_id"], notice["user_ids"], notice["added_by"]) == (
        conversation,
        [dan],
        ana,
    )
    assert notice["conversation"]["member_count"] == 3
    sent = await _sent(a, conversation, "welcome dan")
    new = await d.next(EVENT_MESSAGE_NEW)
    assert (new["message_id"], new["body"]) == (sent["message_id"], "welcome dan")
    # Added again: nothing written, named in the answer.
    again = await a.call(
        EVENT_CONVERSATION_ADD_MEMBERS, {"conversation_id": conversation, "user_ids": [dan]}
    )
    assert (again["changed"], again["added"], again["already_members"]) == (False, [], [dan])


async def test_a_removed_members_open_socket_on_another_gateway_receives_nothing_more(
    settings: Settings, core: Core, dev_env: WorkflowEnvironment
) -> None:
    ana, ben, cy = await _people(core, 3)
    config = gateway_settings(settings, dev_env)
    async with serve_gateway(config) as first, serve_gateway(config) as second:
        a, b = await open_client(first, ana), await open_client(first, ben)
        c = await open_client(second, cy)
        try:
            conversation = await _group(a, ben, cy)
            await c.next(EVENT_CONVERSATION_MEMBER_ADDED)
            await _sent(a, conversation, "all three of us")
            assert (await c.next(EVENT_MESSAGE_NEW))["body"] == "all three of us"
            assert (await b.next(EVENT_MESSAGE_NEW))["body"] == "all three of us"

            # A notification to cy still to be sent: removing cy cancels it.
            async with core.engine.begin() as conn:
                await conn.exec_driver_sql(
                    "INSERT INTO notifications (id, recipient_id, channel, dedupe_key, status,"
                    " conversation_id, seq, due_at) VALUES ($1, $2, 'email', 'later', 'pending',"
                    " $3, 1, now() + interval '1 hour')",
                    (uuid.uuid4(), uuid.UUID(cy), uuid.UUID(conversation)),
                )
            removed = await a.call(
                EVENT_CONVERSATION_REMOVE_MEMBER, {"conversation_id": conversation, "user_id": cy}
            )
            assert (removed["ok"], removed["removed"]) == (True, [cy]), removed
            told = await c.next(EVENT_CONVERSATION_MEMBER_REMOVED)
            assert (told["user_id"], told["removed_by"], told["left"]) == (cy, ana, False)
            assert (await b.next(EVENT_CONVERSATION_MEMBER_REMOVED))["user_id"] == cy

            after = await _sent(a, conversation, "just the two of us")
            assert (await b.next(EVENT_MESSAGE_NEW))["message_id"] == after["message_id"]
            edit = {"conversation_id": conversation, "message_id": after["message_id"]}
            assert (await a.call(EVENT_MESSAGE_EDIT, {**edit, "body": "only us"}))["ok"]
            await b.next(EVENT_MESSAGE_EDITED)
            await asyncio.sleep(QUIET)
            assert c.received(EVENT_MESSAGE_NEW) == []
            assert c.received(EVENT_MESSAGE_EDITED) == []
            sync = await c.call(EVENT_MESSAGE_SYNC, {"conversation_id": conversation})
            _refused(sync, "NotAMember", "is not a member")
            send = await c.call(EVENT_MESSAGE_SEND, _send(conversation, "sneak", "hi"))
            _refused(send, "NotAMember", "not a participant")
            listed = await c.call(EVENT_CONVERSATION_LIST)
            assert conversation not in [x["conversation_id"] for x in listed["conversations"]]
            later = await _scalar(
                core, "SELECT status || ':' || reason FROM notifications WHERE dedupe_key = 'later'"
            )
            assert later == "cancelled:no longer a participant"
        finally:
            for client in (a, b, c):
                await client.sio.disconnect()


async def test_leaving_and_roles_follow_the_rules(
    gateway: RunningGateway,  # noqa: F811
    core: Core,
    clients: Callable[..., Awaitable[Client]],
) -> None:
    ana, ben, cy = await _people(core, 3)
    a, b, c = await clients(ana), await clients(ben), await clients(cy)
    conversation = await _group(a, ben, cy)
    where = {"conversation_id": conversation}
    # A plain member removes nobody; the last owner cannot leave while others remain.
    _refused(
        await b.call(EVENT_CONVERSATION_REMOVE_MEMBER, {**where, "user_id": cy}),
        "NotAllowed",
        "only an owner or admin",
    )
    _refused(await a.call(EVENT_CONVERSATION_LEAVE, where), "NotAllowed", "last owner")
    _refused(
        await b.call(EVENT_CONVERSATION_SET_ROLE, {**where, "user_id": cy, "role": "admin"}),
        "NotAllowed",
        "only an owner changes roles",
    )
    promoted = await a.call(EVENT_CONVERSATION_SET_ROLE, {**where, "user_id": ben, "role": "owner"})
    assert (promoted["ok"], promoted["role"]) == (True, "owner"), promoted
    assert (await c.next("conversation:role_changed"))["user_id"] == ben
    left = await a.call(EVENT_CONVERSATION_LEAVE, where)
    assert (left["ok"], left["removed"]) == (True, [ana]), left
    notice = await c.next(EVENT_CONVERSATION_MEMBER_REMOVED)
    assert (notice["user_id"], notice["left"], notice["member_count"]) == (ana, True, 2)
    # Ben is the owner now; ana reads nothing any more.
    _refused(await a.call(EVENT_MESSAGE_SYNC, where), "NotAMember", "is not a member")
    again = await a.call(EVENT_CONVERSATION_LEAVE, where)
    _refused(again, "NotAMember", "is not a member")


async def test_bad_conversation_requests_get_a_clear_error_and_write_nothing(
    gateway: RunningGateway,  # noqa: F811
    core: Core,
    clients: Callable[..., Awaitable[Client]],
) -> None:
    ana, ben, cy = await _people(core, 3)
    a, b = await clients(ana), await clients(ben)
    conversation = await _group(a, ben)
    other = await _group(a, cy, title="elsewhere")
    mine = await _sent(a, conversation, "mine")
    elsewhere = await _sent(a, other, "in the other one")
    e2e = await a.call(
        EVENT_CONVERSATION_CREATE,
        {"kind": "group", "member_ids": [ben], "encryption_mode": "e2e"},
    )
    assert e2e["ok"] is True, e2e
    secret = await a.call(
        EVENT_MESSAGE_SEND,
        {**_send(e2e["conversation_id"], "e-1", "c2VjcmV0"), "e2e_header": {"alg": "x"}},
    )
    assert secret["ok"] is True, secret
    messages = await _scalar(core, "SELECT count(*) FROM messages")
    members = await _scalar(core, "SELECT count(*) FROM participants")
    unknown = str(uuid.uuid4())
    sync = {"conversation_id": conversation}
    edit = {"conversation_id": conversation, "message_id": mine["message_id"]}
    cases: list[tuple[Client, str, dict[str, Any], str, str]] = [
        (b, EVENT_MESSAGE_SYNC, {"conversation_id": other}, "NotAMember", "is not a member"),
        (a, EVENT_MESSAGE_SYNC, {**sync, "after_seq": 99}, "InvalidInput", "past the end"),
        (a, EVENT_MESSAGE_SYNC, {**sync, "after_seq": -1}, "InvalidInput", "after_seq must be"),
        (a, EVENT_MESSAGE_SYNC, {**sync, "before_seq": "3"}, "InvalidInput", "before_seq must"),
        (a, EVENT_MESSAGE_SYNC, {**sync, "after_seq": 1.5}, "InvalidInput", "after_seq must"),
        (a, EVENT_MESSAGE_SYNC, {**sync, "limit": 0}, "InvalidInput", "limit must be"),
        (a, EVENT_MESSAGE_SYNC, {**sync, "limit": 10**6}, "InvalidInput", "limit must be"),
        (
            a,
            EVENT_MESSAGE_SYNC,
            {**sync, "after_seq": 0, "before_seq": 1},
            "InvalidInput",
            "not both",
        ),
        (a, EVENT_MESSAGE_SYNC, {"conversation_id": unknown}, "ConversationNotFound", unknown),
        (b, EVENT_MESSAGE_EDIT, {**edit, "body": "not yours"}, "NotAllowed", "only its sender"),
        (
            a,
            EVENT_MESSAGE_EDIT,
            {**edit, "message_id": elsewhere["message_id"], "body": "x"},
            "MessageNotVisible",
            "is not in conversation",
        ),
        (a, EVENT_MESSAGE_EDIT, {**edit, "body": "   "}, "InvalidInput", "body is empty"),
        (a, EVENT_MESSAGE_EDIT, {**edit, "body": "x" * 20_000}, "InvalidInput", "over the limit"),
        (
            a,
            EVENT_MESSAGE_EDIT,
            {
                "conversation_id": e2e["conversation_id"],
                "message_id": secret["message_id"],
                "body": "bmV3",
            },
            "InvalidInput",
            "e2e_header is required",
        ),
        (
            a,
            EVENT_CONVERSATION_ADD_MEMBERS,
            {"conversation_id": conversation, "user_ids": [cy, unknown]},
            "UserNotFound",
            unknown,
        ),
        (
            a,
            EVENT_CONVERSATION_REMOVE_MEMBER,
            {"conversation_id": conversation, "user_id": ana},
            "NotAllowed",
            "last owner",
        ),
        (
            a,
            EVENT_CONVERSATION_CREATE,
            {"kind": "direct", "member_ids": [ben, cy]},
            "InvalidInput",
            "exactly two members",
        ),
        (a, EVENT_CONVERSATION_CREATE, {"kind": "forum", "member_ids": []}, "InvalidInput", "kind"),
    ]
    for client, event, payload, error, match in cases:
        _refused(await client.call(event, payload), error, match)
    assert await _scalar(core, "SELECT count(*) FROM messages") == messages
    assert await _scalar(core, "SELECT count(*) FROM participants") == members
    assert await _scalar(core, "SELECT count(*) FROM messages WHERE edited_at IS NOT NULL") == 0
    # A direct conversation is found, not made twice.
    direct = [
        await a.call(EVENT_CONVERSATION_CREATE, {"kind": "direct", "member_ids": [cy]})
        for _ in range(2)
    ]
    assert direct[0]["conversation_id"] == direct[1]["conversation_id"]
    assert (direct[0]["created"], direct[1]["created"]) == (True, False)


async def test_a_member_removed_while_their_socket_connects_is_not_left_in_the_room(
    gateway: RunningGateway,  # noqa: F811
    core: Core,
    clients: Callable[..., Awaitable[Client]],
) -> None:
    ana, cy = await _people(core, 2)
    a = await clients(ana)
    conversation = await _group(a, cy)
    connections = gateway.app.gateway.connections
    read_rooms = connections._rooms_of

    async def removed_right_after_the_read(user_id: str) -> list[str]:
        rooms = await read_rooms(user_id)
        if user_id == cy:  # the removal commits between the read and the rooms entered
            connections._rooms_of = read_rooms
            await core.directory.remove_participant(conversation, cy)
        return rooms

    connections._rooms_of = removed_right_after_the_read
    try:
        c = await clients(cy)
    finally:
        connections._rooms_of = read_rooms
    sent = await _sent(a, conversation, "cy is gone")
    assert sent["seq"] == 1
    await asyncio.sleep(QUIET)
    assert c.received(EVENT_MESSAGE_NEW) == []
