"""``dev.py --demo``: ana, ben and cy chat over Socket.IO and read each other's messages."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

import socketio
from sqlalchemy import select

from devstack.children import wait_ready
from devstack.console import DevError, Stopped, say
from devstack.stack import Running
from missive.config import Settings
from missive.constants import (
    EVENT_MESSAGE_DELIVERED,
    EVENT_MESSAGE_NEW,
    EVENT_MESSAGE_READ,
    EVENT_MESSAGE_RECEIPT,
    EVENT_MESSAGE_SEND,
)
from missive.errors import MessagingError
from missive.models import Conversation, ConversationKind, User
from missive.tokens import issue_token
from runtime.wiring import open_core
from starter.client import MissiveClient

DEMO_HANDLES = ("ana", "ben", "cy")
DEMO_TITLE = "Missive demo"

DEMO_READ_AFTER_SECONDS = 0.5
"""How long a demo client shows a message before it says "read"."""
DEMO_LINES = (
    ("ana", "Hi both, welcome to Missive!"),
    ("ben", "Hey ana, got it."),
    ("cy", "Hello from cy."),
)


@dataclass
class DemoState:
    """What the demo's clients saw."""

    names: dict[str, str]
    """User id -> handle, for printing."""
    fully_read: set[str] = field(default_factory=set)
    """Messages every recipient has read."""
    seen: set[tuple[str, str]] = field(default_factory=set)
    """(handle, event_id) already printed: a retried broadcast repeats its event_id."""


async def demo_people(settings: Settings) -> tuple[dict[str, str], str]:
    """Finds or creates ana, ben and cy and their group conversation, through the starter
    library's provisioning calls (the ones a back-end service makes).

    Returns:
        handle -> user id, and the conversation id.
    """
    async with AsyncExitStack() as stack:
        core = await open_core(settings, stack, pool_size=2)
        async with core.engine.connect() as conn:
            rows = await conn.execute(
                select(User.handle, User.id).where(User.handle.in_(DEMO_HANDLES))
            )
            users = {handle: str(uid) for handle, uid in rows}
            found = await conn.scalar(
                select(Conversation.id)
                .where(Conversation.kind == ConversationKind.GROUP)
                .where(Conversation.title == DEMO_TITLE)
                .order_by(Conversation.created_at)
                .limit(1)
            )
        missive = await stack.enter_async_context(await MissiveClient.connect(settings))
        for handle in DEMO_HANDLES:
            if handle not in users:
                user = await missive.create_user(
                    handle, display_name=handle.title(), client_user_id=f"missive-demo:{handle}"
                )
                users[handle] = user.user_id
        members = [users[h] for h in DEMO_HANDLES]
        if found is None:
            made = await missive.create_conversation(
                "group",
                members,
                title=DEMO_TITLE,
                creator_id=users["ana"],
                client_conversation_id="missive-demo",
            )
            conversation_id = made.conversation.conversation_id
        else:
            conversation_id = str(found)
            await missive.add_members(conversation_id, members)
    return users, conversation_id


async def demo_client(
    url: str, handle: str, user_id: str, token: str, state: DemoState
) -> socketio.AsyncClient:
    """A connected client for one demo user that prints its events and reads what it gets."""
    # Not its own SIGINT handler: it would cancel every task (dev.py's main one too,
    # a CancelledError traceback) instead of letting Ctrl-C stop things in order.
    client = socketio.AsyncClient(reconnection=False, handle_sigint=False)

    def first_time(data: dict[str, Any]) -> bool:
        key = (handle, str(data.get("event_id")))
        new = key not in state.seen
        state.seen.add(key)
        return new

    async def on_new(data: dict[str, Any]) -> None:
        if not first_time(data):
            return
        sender = state.names.get(data["sender_id"], data["sender_id"])
        say(f"{handle:>4} <- {EVENT_MESSAGE_NEW} seq {data['seq']} from {sender}: {data['body']!r}")
        if data["sender_id"] != user_id:
            # As a chat app does: "delivered" the moment it arrives, "read" once it has
            # been on screen a moment; both are watermarks ("everything up to seq").
            where = {"conversation_id": data["conversation_id"], "up_to_seq": data["seq"]}
            await client.emit(EVENT_MESSAGE_DELIVERED, where, callback=receipt_ack("delivered"))
            await asyncio.sleep(DEMO_READ_AFTER_SECONDS)
            await client.emit(EVENT_MESSAGE_READ, where, callback=receipt_ack("read"))

    def receipt_ack(what: str) -> Callable[[dict[str, Any]], None]:
        def answered(ack: dict[str, Any]) -> None:
            if not ack.get("ok"):
                say(f"{handle:>4} <- message:{what} refused: {ack}")

        return answered

    async def on_receipt(data: dict[str, Any]) -> None:
        if not first_time(data):
            return
        reader = state.names.get(data["recipient_id"], data["recipient_id"] or "several")
        say(
            f"{handle:>4} <- {EVENT_MESSAGE_RECEIPT} seq {data['seq']} {data['status']} by"
            f" {reader} ({data['read_count']}/{data['recipient_count']} read)"
        )
        if data["status"] == "read" and data["read_count"] >= data["recipient_count"]:
            state.fully_read.add(data["message_id"])

    client.on(EVENT_MESSAGE_NEW, on_new)
    client.on(EVENT_MESSAGE_RECEIPT, on_receipt)
    await client.connect(url, auth={"token": token}, transports=["websocket"], wait_timeout=10)
    return client


async def run_demo(running: Running, stack: AsyncExitStack, stop: asyncio.Event) -> None:
    """The demo; its failures become one-line DevErrors."""
    try:
        await chat(running, stack, stop)
    except Stopped:
        pass
    except (MessagingError, socketio.exceptions.SocketIOError) as err:
        raise DevError(f"demo: {type(err).__name__}: {err}") from None


async def chat(running: Running, stack: AsyncExitStack, stop: asyncio.Event) -> None:
    """Connects ana, ben and cy, sends a message from each, and waits until all are read."""
    settings = running.settings
    users, conversation_id = await demo_people(settings)
    ids = ", ".join(f"{handle} {user_id}" for handle, user_id in users.items())
    say(f"demo: users {ids}; group conversation {conversation_id}")
    state = DemoState(names={uid: handle for handle, uid in users.items()})
    clients: dict[str, socketio.AsyncClient] = {}
    for handle, user_id in users.items():
        ttl = settings.gateway_token_ttl_seconds
        token = issue_token(settings.gateway_secret, user_id, ttl_seconds=ttl)
        clients[handle] = await demo_client(running.gateway_url, handle, user_id, token, state)
        stack.push_async_callback(clients[handle].disconnect)
    sent: set[str] = set()
    for handle, body in DEMO_LINES:
        message = {"conversation_id": conversation_id, "client_message_id": str(uuid.uuid4())}
        say(f"{handle:>4} -> {EVENT_MESSAGE_SEND} {body!r}")
        ack = await clients[handle].call(EVENT_MESSAGE_SEND, {**message, "body": body}, timeout=30)
        if not isinstance(ack, dict) or not ack.get("ok"):
            raise DevError(f"demo: the gateway refused {handle}'s message: {ack}")
        say(f"{handle:>4} <- ack: seq {ack['seq']}, workflow message-{ack['message_id']}")
        sent.add(ack["message_id"])

    async def all_read() -> bool:
        return sent <= state.fully_read

    await wait_ready("the demo's read receipts", all_read, stop)
    say(
        f"demo: {len(sent)} messages delivered and read by everyone; see their lifecycles"
        f" in the Web UI ({running.ui_url or 'your Temporal UI'})"
    )
