"""Batch import and retention cleanup against plain asyncpg doing the same writes, same run.

Run by hand: ``python -m bench.batch [--items N]``. Prints messages/s of a
batch (staging included) and of a plain asyncpg script (same encryption, same
statements, same transaction size and concurrency), rows/s of the retention
cleanup and of a plain batched DELETE (each cleanup phase starts after a VACUUM
ANALYZE and a CHECKPOINT, so none pays for the previous one's dead rows), and the
worker's peak memory for a batch of N/10 and of N items. On DATABASE_URL's server
the run's database is dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections import Counter
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import psutil
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import text
from sqlalchemy.engine import make_url
from temporalio.common import SearchAttributeKey
from temporalio.testing import WorkflowEnvironment

from bench.harness import ROOT, _binary, _database, _key
from missive.config import Settings
from missive.constants import TASK_QUEUE_BATCH, message_id_for
from missive.crypto import MessageCipher, WrappedKey
from missive.models import ConversationKind
from missive.schemas import RetentionInput
from missive.services.directory import NewUser
from runtime.client import data_converter
from runtime.search_attributes import MISSIVE_SEARCH_ATTRIBUTE_KEYS
from runtime.wiring import Core, open_core
from starter.batch import BatchClient, BatchOptions
from workflows.retention import RetentionWorkflow

CONVERSATIONS = 100
CHUNK = 5_000
WINDOW = 4
PER_TX = 1_000


async def _people_and_conversations(core: Core, prefix: str) -> list[tuple[str, str]]:
    pairs = []
    for i in range(CONVERSATIONS):
        users = [
            await core.directory.create_user(NewUser(handle=f"{prefix}{i}-{n}")) for n in range(3)
        ]
        conv = await core.directory.create_conversation(kind=ConversationKind.GROUP, members=users)
        pairs.append((conv, users[0]))
    return pairs


def _write_items(path: Path, pairs: list[tuple[str, str]], count: int) -> None:
    with path.open("w") as handle:
        for i in range(count):
            conv, sender = pairs[i % len(pairs)]
            handle.write(
                json.dumps({"conversation_id": conv, "sender_id": sender, "body": f"hello {i}"})
            )
            handle.write("\n")


async def _plain_writes(
    dsn: str, cipher: MessageCipher, pairs: list[tuple[str, str]], count: int
) -> float:
    """The same writes as a batch chunk, with nothing around them: seconds taken."""
    pool = await asyncpg.create_pool(dsn, min_size=WINDOW, max_size=WINDOW)
    keys: dict[str, tuple[AESGCM, int]] = {}
    async with pool.acquire() as conn:
        for r in await conn.fetch(
            "SELECT c.id, c.key_version, k.master_key_version, k.wrapped_key FROM conversations c"
            " JOIN conversation_keys k ON k.conversation_id = c.id AND k.version = c.key_version"
        ):
            cid = str(r["id"])
            key = cipher.data_key(
                cid, r["key_version"], WrappedKey(r["master_key_version"], r["wrapped_key"])
            )
            keys[cid] = (key, r["key_version"])

    async def one_tx(start: int, end: int) -> None:
        items = [(pairs[i % len(pairs)], f"plain:{i}", f"hello {i}") for i in range(start, end)]
        per_conv = Counter(p[0] for p, _, _ in items)
        ordered = sorted(per_conv)
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "SELECT id FROM conversations WHERE id = ANY($1::uuid[]) ORDER BY id FOR UPDATE",
                ordered,
            )
            last = {
                str(r["id"]): r["last_seq"]
                for r in await conn.fetch(
                    "UPDATE conversations c SET last_seq = c.last_seq + x.n"
                    " FROM unnest($1::uuid[], $2::int8[]) AS x(id, n) WHERE c.id = x.id"
                    " RETURNING c.id, c.last_seq",
                    ordered,
                    [per_conv[c] for c in ordered],
                )
            }
            nxt = {c: last[c] - per_conv[c] + 1 for c in ordered}
            ids, cids, seqs, senders, cmids, bodies, kvs = [], [], [], [], [], [], []
            for (cid, sender), cmid, body in items:
                mid = message_id_for(sender, cmid)
                key, kv = keys[cid]
                ids.append(mid)
                cids.append(cid)
                seqs.append(nxt[cid])
                nxt[cid] += 1
                senders.append(sender)
                cmids.append(cmid)
                bodies.append(
                    cipher.encrypt_body(
                        key, conversation_id=cid, message_id=mid, body=body.encode()
                    )
                )
                kvs.append(kv)
            await conn.execute(
                "INSERT INTO messages (id, conversation_id, seq, sender_id, client_message_id,"
                " body_ciphertext, key_version) SELECT * FROM unnest($1::uuid[], $2::uuid[],"
                " $3::int8[], $4::uuid[], $5::text[], $6::bytea[], $7::int4[])"
                " ON CONFLICT DO NOTHING",
                ids,
                cids,
                seqs,
                senders,
                cmids,
                bodies,
                kvs,
            )
            await conn.execute(
                "INSERT INTO deliveries (message_id, recipient_id, conversation_id, seq, status,"
                " sent_at) SELECT m.id, p.user_id, m.cid, m.seq, 0, now()"
                " FROM unnest($1::uuid[], $2::uuid[], $3::int8[], $4::uuid[])"
                " AS m(id, cid, seq, sender) JOIN participants p ON p.conversation_id = m.cid"
                " AND p.user_id <> m.sender ON CONFLICT DO NOTHING",
                ids,
                cids,
                seqs,
                senders,
            )

    gate = asyncio.Semaphore(WINDOW)

    async def gated(start: int, end: int) -> None:
        async with gate:
            await one_tx(start, end)

    began = time.perf_counter()
    await asyncio.gather(*(gated(s, min(s + PER_TX, count)) for s in range(0, count, PER_TX)))
    elapsed = time.perf_counter() - began
    await pool.close()
    return elapsed


async def _drop_database(database_url: str) -> None:
    """Drops the run's database (millions of rows) from a server that outlives the run."""
    url = make_url(database_url)
    admin = make_url(os.environ["DATABASE_URL"].replace("+asyncpg", ""))
    conn = await asyncpg.connect(
        host=url.query.get("host") or url.host,
        port=url.port,
        user=url.username or "postgres",
        password=url.password,
        database=admin.database or "postgres",
    )
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)')
    finally:
        await conn.close()


async def _settle(dsn: str) -> None:
    """Starts a timed cleanup phase from the same state as the others.

    Backdating every message rewrites every row just before the cleanups, and each
    phase leaves dead rows behind: without this, autovacuum and the checkpoint
    they trigger run during whichever phase comes next, on this 2-core machine.
    """
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("VACUUM ANALYZE")
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()


async def _run_batch(
    client: BatchClient, path: Path, worker: psutil.Process
) -> tuple[float, int, float]:
    """Seconds for start (scan + COPY) to the end, the worker's peak RSS, its RSS before."""
    before = worker.memory_info().rss
    peak = before
    began = time.perf_counter()
    started = await client.start_import(
        path,
        options=BatchOptions(
            chunk_size=CHUNK, max_concurrent_chunks=WINDOW, items_per_transaction=PER_TX
        ),
    )
    waiting = asyncio.ensure_future(client.result(started.batch_id))
    while not waiting.done():
        peak = max(peak, worker.memory_info().rss)
        await asyncio.sleep(0.2)
    result = waiting.result()
    elapsed = time.perf_counter() - began
    assert result.stored == started.total, result
    return elapsed, peak, before


async def main(items: int) -> None:
    async with AsyncExitStack() as stack:
        database_url = await _database()
        if os.environ.get("DATABASE_URL"):
            stack.push_async_callback(_drop_database, database_url)
        keys = {"master_keys": f"1:{_key()}", "codec_keys": f"1:{_key()}"}
        probe = Settings(**keys)  # type: ignore[arg-type]
        env = await WorkflowEnvironment.start_local(
            dev_server_existing_path=_binary("temporal"),
            data_converter=data_converter(probe),
            search_attributes=[
                SearchAttributeKey.for_int("MissiveBatchProgress"),
                SearchAttributeKey.for_keyword("MissiveBatchStatus"),
                *MISSIVE_SEARCH_ATTRIBUTE_KEYS,
            ],
        )
        stack.push_async_callback(env.shutdown)
        settings = Settings(
            database_url=database_url,
            temporal_address=env.client.service_client.config.target_host,
            retention_chunk_size=5_000,
            **keys,  # type: ignore[arg-type]
        )
        core = await open_core(settings, stack, pool_size=4)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "worker.py",
            cwd=ROOT,
            env={
                **os.environ,
                "DATABASE_URL": database_url,
                "TEMPORAL_ADDRESS": settings.temporal_address,
                "MASTER_KEYS": keys["master_keys"],
                "CODEC_KEYS": keys["codec_keys"],
                "LOG_LEVEL": "WARNING",
                "RETENTION_SCHEDULE_ON_START": "false",
            },
        )

        async def _stop() -> None:
            proc.terminate()
            await proc.wait()

        stack.push_async_callback(_stop)
        worker = psutil.Process(proc.pid)
        await asyncio.sleep(3)

        missive_pairs = await _people_and_conversations(core, "m")
        plain_pairs = await _people_and_conversations(core, "p")
        folder = Path(tempfile.mkdtemp(prefix="missive-bench-batch-"))
        small, large = folder / "small.jsonl", folder / "large.jsonl"
        _write_items(small, missive_pairs, items // 10)
        _write_items(large, missive_pairs, items)
        client = BatchClient(env.client, settings)
        stack.push_async_callback(client.__aexit__, None, None, None)

        small_s, small_peak, idle = await _run_batch(client, small, worker)
        large_s, large_peak, _ = await _run_batch(client, large, worker)
        dsn = database_url.replace("+asyncpg", "")
        plain_s = await _plain_writes(dsn, core.cipher, plain_pairs, items)
        batch_rate, plain_rate = items / large_s, items / plain_s

        # Cleanup: every message of both sets expires; Missive archives its set
        # through RetentionWorkflow, the plain script DELETEs the other set.
        missive_convs = [c for c, _ in missive_pairs]
        plain_convs = [c for c, _ in plain_pairs]
        async with core.engine.begin() as conn:
            await conn.execute(text("UPDATE messages SET created_at = now() - interval '10 days'"))
            await conn.execute(
                text("UPDATE conversations SET retention_days = 1 WHERE id = ANY(:c)"),
                {"c": missive_convs},
            )
            rows = (
                await conn.execute(
                    text("SELECT count(*) FROM messages WHERE conversation_id = ANY(:c)"),
                    {"c": missive_convs},
                )
            ).scalar_one()
        await _settle(dsn)
        began = time.perf_counter()
        retention = await env.client.execute_workflow(
            RetentionWorkflow.run,
            RetentionInput(),
            id=f"retention-bench-{time.time_ns()}",
            task_queue=TASK_QUEUE_BATCH,
        )
        archive_s = time.perf_counter() - began
        assert retention.archived == rows, (retention, rows)

        await _settle(dsn)
        conn = await asyncpg.connect(dsn)
        began = time.perf_counter()
        deleted = 0
        while True:
            status = await conn.execute(
                "DELETE FROM messages WHERE id IN (SELECT id FROM messages"
                " WHERE conversation_id = ANY($1::uuid[]) AND created_at < now() - interval '1 day'"
                " LIMIT 5000)",
                plain_convs,
            )
            n = int(status.split()[-1])
            if n == 0:
                break
            deleted += n
        delete_s = time.perf_counter() - began
        await conn.close()
        assert deleted == items, deleted

        # The purge (after the restore window) through the same service the activity uses.
        from runtime.batch_worker import retention_service

        purge_service = retention_service(core, settings)
        await _settle(dsn)
        began = time.perf_counter()
        purged = await purge_service.purge_archived(
            datetime.now(UTC).replace(year=datetime.now(UTC).year + 1)
        )
        purge_s = time.perf_counter() - began

        mb = 1024 * 1024
        print(f"items: {items} over {CONVERSATIONS} conversations of 3 members")
        print(
            f"batch import: {batch_rate:,.0f} msg/s ({large_s:.1f} s incl. staging) | plain "
            f"asyncpg: {plain_rate:,.0f} msg/s ({plain_s:.1f} s) | "
            f"ratio {batch_rate / plain_rate:.2f}"
        )
        print(
            f"cleanup (archive): {rows / archive_s:,.0f} rows/s ({archive_s:.1f} s) | plain "
            f"DELETE: {deleted / delete_s:,.0f} rows/s ({delete_s:.1f} s) | ratio "
            f"{(rows / archive_s) / (deleted / delete_s):.2f}"
        )
        print(
            f"purge after the window: {purged.messages / purge_s:,.0f} rows/s ({purge_s:.1f} s)"
            f" | ratio to plain DELETE {(purged.messages / purge_s) / (deleted / delete_s):.2f}"
        )
        print(
            f"worker RSS: idle {idle / mb:.0f} MB; peak {small_peak / mb:.0f} MB over "
            f"{items // 10} items ({small_s:.1f} s); "
            f"peak {large_peak / mb:.0f} MB over {items} items"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--items", type=int, default=200_000)
    asyncio.run(main(parser.parse_args().items))
