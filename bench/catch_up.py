"""Catch-up, history, edits and deletes as a client sees them, against their baselines.

    python -m bench.catch_up [--rounds 7] [--conversations 20] [--missed 50] [--samples 200]

1. **Reconnect.** A user who missed ``--missed`` messages in each of ``--conversations``
   conversations reconnects and catches up as the README tells clients to:
   ``conversation:list``, then one ``message:sync`` per conversation (in parallel, as a
   client's sync loop would), and again with one batched ``message:sync`` of every
   conversation behind, end to end over the socket. The baseline, in the same
   rounds (alternating), is plain asyncpg reading and decrypting the same rows: the
   user's conversations with their last seq, then each conversation's messages after
   the user's read seq, decrypted with the same cipher. Goal: the socket path is at
   least 0.5 of the baseline's speed.
2. **One page.** p50 / p99 of one 100-message ``message:sync`` over the socket.
3. **Edits and deletes.** p50 from ``message:edit`` / ``message:delete`` to the other
   client's ``message:edited`` / ``message:deleted``, against the send path's p50 from
   ``message:send`` to ``message:new`` in the same conversation (goal: within 2x).
   Each runs to the moment the other client has the event; the sender's acks are
   awaited too and their p50 printed apart (an edit's ack waits for its workflow to
   complete, a send's only for its update). The other client acks delivered and
   read for every message it receives.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from contextlib import AsyncExitStack
from typing import Any

import asyncpg
import orjson
import socketio

from bench.harness import Stack, percentile, stack
from missive.crypto import MessageCipher, WrappedKey
from missive.models import ConversationKind
from missive.schemas import PersistMessageInput
from missive.services.directory import NewUser
from missive.tokens import issue_token
from runtime.wiring import Core, open_core

WAIT = 30.0


class _NativeJson:
    """A browser or app parses JSON natively; orjson stands in for that here."""

    @staticmethod
    def dumps(value: Any, **kwargs: Any) -> str:
        return orjson.dumps(value).decode()

    @staticmethod
    def loads(text: str | bytes, **kwargs: Any) -> Any:
        return orjson.loads(text)


async def _client(stack: Stack, user_id: str) -> socketio.AsyncClient:
    client = socketio.AsyncClient(reconnection=False, json=_NativeJson)
    token = issue_token(stack.settings.gateway_secret, user_id, ttl_seconds=3600)
    await client.connect(stack.gateway_url, auth={"token": token}, transports=["websocket"])
    return client


async def _seed(core: Core, conversations: int, missed: int) -> tuple[str, str, list[str]]:
    """ana and ben in ``conversations`` groups, ``missed`` messages from ana in each."""
    suffix = uuid.uuid4().hex[:6]
    ana = await core.directory.create_user(NewUser(handle=f"ana{suffix}"))
    ben = await core.directory.create_user(NewUser(handle=f"ben{suffix}"))
    ids = []
    for c in range(conversations):
        cid = await core.directory.create_conversation(
            kind=ConversationKind.GROUP, members=[ana, ben], title=f"room {c}"
        )
        ids.append(cid)
        for i in range(missed):
            await core.messages.persist(
                PersistMessageInput(
                    conversation_id=cid,
                    sender_id=ana,
                    client_message_id=f"{cid}-{i}",
                    body=f"message {i} of room {c}: " + "lorem ipsum " * 8,
                )
            )
    return ana, ben, ids


async def _socket_catch_up(stack: Stack, ben: str, *, batched: bool = False) -> tuple[float, int]:
    client = await _client(stack, ben)
    try:
        started = time.perf_counter()
        listed = await client.call("conversation:list", {}, timeout=WAIT)
        assert listed["ok"], listed
        behind = [c for c in listed["conversations"] if c["last_seq"] > c["read_seq"]]
        if batched:  # one message:sync for every conversation behind
            requests = [
                {"conversation_id": c["conversation_id"], "after_seq": c["read_seq"]}
                for c in behind
            ]
            pages = await client.call("message:sync", {"conversations": requests}, timeout=WAIT)
            assert pages["ok"], pages
            count = sum(len(p["messages"]) for p in pages["conversations"])
            return time.perf_counter() - started, count

        async def sync(state: dict[str, Any]) -> int:
            page = await client.call(
                "message:sync",
                {"conversation_id": state["conversation_id"], "after_seq": state["read_seq"]},
                timeout=WAIT,
            )
            assert page["ok"] and not page["has_more"], page
            return len(page["messages"])

        counts = await asyncio.gather(*(sync(state) for state in behind))
        return time.perf_counter() - started, sum(counts)
    finally:
        await client.disconnect()


_LIST = """
SELECT c.id::text AS id, c.last_seq, p.read_seq FROM participants p
JOIN conversations c ON c.id = p.conversation_id WHERE p.user_id = $1
"""
_PAGE = """
SELECT m.id::text AS id, m.body_ciphertext, m.key_version, k.master_key_version, k.wrapped_key
FROM messages m JOIN conversation_keys k
  ON k.conversation_id = m.conversation_id AND k.version = m.key_version
WHERE m.conversation_id = $1 AND m.seq > $2 ORDER BY m.seq LIMIT 100
"""


async def _plain_catch_up(pool: asyncpg.Pool, cipher: MessageCipher, ben: str) -> tuple[float, int]:
    started = time.perf_counter()
    async with pool.acquire() as conn:
        states = await conn.fetch(_LIST, uuid.UUID(ben))

    async def page(state: asyncpg.Record) -> int:
        async with pool.acquire() as conn:
            rows = await conn.fetch(_PAGE, uuid.UUID(state["id"]), state["read_seq"])
        for row in rows:
            key = cipher.data_key(
                state["id"],
                row["key_version"],
                WrappedKey(row["master_key_version"], row["wrapped_key"]),
            )
            cipher.decrypt_body(
                key,
                conversation_id=state["id"],
                message_id=row["id"],
                ciphertext=row["body_ciphertext"],
            ).decode()
        return len(rows)

    counts = await asyncio.gather(*(page(s) for s in states if s["last_seq"] > s["read_seq"]))
    return time.perf_counter() - started, sum(counts)


async def _page_latencies(stack: Stack, ben: str, conversation: str, samples: int) -> list[float]:
    client = await _client(stack, ben)
    try:
        latencies = []
        for _ in range(samples):
            started = time.perf_counter()
            page = await client.call(
                "message:sync", {"conversation_id": conversation, "limit": 100}, timeout=WAIT
            )
            latencies.append(time.perf_counter() - started)
            assert page["ok"] and len(page["messages"]) == 100, page
        return latencies
    finally:
        await client.disconnect()


async def _change_latencies(
    stack: Stack, ana: str, ben: str, cid: str, samples: int
) -> dict[str, list[float]]:
    """Send -> message:new, edit -> message:edited, delete -> message:deleted, at the reader.

    Each latency runs from the call to the moment the reader has the event (whenever
    the sender's ack comes, which is also awaited and checked), under ``<kind>``; the
    sender's ack latency under ``<kind> ack``.
    """
    sender, reader = await _client(stack, ana), await _client(stack, ben)
    arrived: dict[str, asyncio.Queue[float]] = {
        e: asyncio.Queue() for e in ("message:new", "message:edited", "message:deleted")
    }

    async def on_new(data: dict[str, Any]) -> None:
        arrived["message:new"].put_nowait(time.perf_counter())
        where = {"conversation_id": data["conversation_id"], "up_to_seq": data["seq"]}
        await reader.call("message:delivered", where, timeout=WAIT)
        await reader.call("message:read", where, timeout=WAIT)

    reader.on("message:new", on_new)
    reader.on("message:edited", lambda _: arrived["message:edited"].put_nowait(time.perf_counter()))
    reader.on(
        "message:deleted", lambda _: arrived["message:deleted"].put_nowait(time.perf_counter())
    )
    times: dict[str, list[float]] = {
        k: [] for k in ("send", "edit", "delete", "send ack", "edit ack", "delete ack")
    }

    async def timed(kind: str, event: str, name: str, payload: dict[str, Any]) -> dict[str, Any]:
        started = time.perf_counter()
        ack = await sender.call(name, payload, timeout=WAIT)
        times[f"{kind} ack"].append(time.perf_counter() - started)
        assert ack["ok"], ack
        times[kind].append(await asyncio.wait_for(arrived[event].get(), WAIT) - started)
        return ack

    try:
        for i in range(samples):
            ack = await timed(
                "send",
                "message:new",
                "message:send",
                {"conversation_id": cid, "client_message_id": uuid.uuid4().hex, "body": f"m {i}"},
            )
            where = {"conversation_id": cid, "message_id": ack["message_id"]}
            await timed("edit", "message:edited", "message:edit", {**where, "body": f"m {i}!"})
            if i % 2 == 0:
                await timed("delete", "message:deleted", "message:delete", where)
            await asyncio.sleep(0.05)  # paced: latency, not queueing
    finally:
        await sender.disconnect()
        await reader.disconnect()
    return times


def _ms(values: list[float], q: float) -> str:
    return f"{percentile(values, q) * 1000:.1f} ms"


async def run(rounds: int, conversations: int, missed: int, samples: int) -> None:
    # Edits and deletes share the sender's send limit (5/s): lifted here, where the
    # figure is the latency of one change, not the limit.
    lifted = {"SEND_RATE_PER_SECOND": "10000", "SEND_BURST": "10000"}
    async with stack(env=lifted) as running, AsyncExitStack() as exit_stack:
        core = await open_core(running.settings, exit_stack)
        ana, ben, ids = await _seed(core, conversations, missed)
        _, reader, (history,) = await _seed(core, 1, 150)
        dsn = running.settings.require_database_url().replace("postgresql+asyncpg", "postgresql")
        pool = await asyncpg.create_pool(dsn, min_size=4, max_size=10)
        exit_stack.push_async_callback(pool.close)
        cipher = MessageCipher(running.settings.master_keyring)
        await _socket_catch_up(running, ben)  # warm every path
        await _socket_catch_up(running, ben, batched=True)
        await _plain_catch_up(pool, cipher, ben)
        ours, batched, plain = [], [], []
        for _ in range(rounds):
            took, n = await _socket_catch_up(running, ben)
            assert n == conversations * missed, n
            ours.append(took)
            took, n = await _socket_catch_up(running, ben, batched=True)
            assert n == conversations * missed, n
            batched.append(took)
            took, n = await _plain_catch_up(pool, cipher, ben)
            assert n == conversations * missed, n
            plain.append(took)
        base = statistics.median(plain)
        total = conversations * missed
        print(f"reconnect: {conversations} conversations, {missed} missed messages in each")
        print(f"  plain asyncpg      median {base * 1000:.1f} ms ({total / base:,.0f} messages/s)")
        for name, times in (
            (f"list + {conversations} syncs", ours),
            ("list + one batched sync", batched),
        ):
            mine = statistics.median(times)
            print(
                f"  {name:<22} median {mine * 1000:.1f} ms ({total / mine:,.0f} messages/s),"
                f" ratio {base / mine:.2f}  (goal >= 0.5)"
            )
        pages = await _page_latencies(running, reader, history, samples)
        print(f"one 100-message message:sync: p50 {_ms(pages, 50)}, p99 {_ms(pages, 99)}")
        changes = await _change_latencies(running, ana, ben, ids[0], samples)
        send = statistics.median(changes["send"])
        print(
            f"send -> other client's message:new: p50 {send * 1000:.1f} ms,"
            f" p99 {_ms(changes['send'], 99)}; sender's ack p50 {_ms(changes['send ack'], 50)}"
        )
        for kind, event in (("edit", "message:edited"), ("delete", "message:deleted")):
            p50 = statistics.median(changes[kind])
            print(
                f"{kind} -> other client's {event}: p50 {p50 * 1000:.1f} ms, p99"
                f" {_ms(changes[kind], 99)}, ratio to send {p50 / send:.2f}  (goal <= 2);"
                f" sender's ack p50 {_ms(changes[f'{kind} ack'], 50)}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--conversations", type=int, default=20)
    parser.add_argument("--missed", type=int, default=50)
    parser.add_argument("--samples", type=int, default=200)
    args = parser.parse_args()
    asyncio.run(run(args.rounds, args.conversations, args.missed, args.samples))


if __name__ == "__main__":
    main()
