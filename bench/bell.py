"""The bell (``notification:list``) against a user's in-app history.

    python -m bench.bell [--history 1000,20000,100000,100000] [--unread 500,500,500,10000]
        [--calls 200] [--limit 50]

Every message a user receives leaves an in-app row in the notification log, read or
not, until retention takes it: an active member of a few groups has tens of thousands.
For each history size, one user's rows (``--unread`` of them unread, spread evenly,
the rest read, over time and five conversations) are written straight into a fresh
migrated database beside a thousand rows each of nine other users; then the bell's
page (``NotificationLog.in_app``, newest ``--limit`` first) and its unread-only page
are timed against the floor: the same rows fetched by primary key through the same
pool. p50 / p99 in milliseconds and the ratio (goal: flat as the history grows; the
unread rows are sorted, so they still count).
"""

from __future__ import annotations

import argparse
import asyncio
from contextlib import AsyncExitStack

from sqlalchemy import text

from bench.harness import _database, ratio_row, timed
from missive.config import Settings
from missive.db import autocommit, session_factory
from missive.models import ConversationKind
from missive.services.directory import NewUser
from runtime.wiring import Core, open_core

_ROWS = text(
    """
    INSERT INTO notifications (id, recipient_id, channel, dedupe_key, status, message_id,
        conversation_id, seq, due_at, created_at, updated_at, sent_at, read_at)
    SELECT gen_random_uuid(), CAST(:rid AS uuid), 'in_app', 'bench-' || n, 'sent',
        gen_random_uuid(), (CAST(:cids AS uuid[]))[1 + n % cardinality(CAST(:cids AS uuid[]))],
        n, t, t, t, t, CASE WHEN n % :every = 0 THEN NULL ELSE t + interval '1 minute' END
    FROM generate_series(1, :n) AS n,
        LATERAL (SELECT now() - (:n - n) * interval '1 minute' AS t) AS at
    """
)


async def _history(core: Core, rid: str, conversations: list[str], rows: int, unread: int) -> None:
    every = max(1, rows // max(1, unread))
    async with core.engine.begin() as conn:
        await conn.execute(_ROWS, {"rid": rid, "cids": conversations, "n": rows, "every": every})


async def _one(size: int, unread: int, calls: int, limit: int) -> None:
    """One history size, in a database of its own."""
    settings = Settings(database_url=await _database(), master_keys=f"1:{'A' * 43}=")
    async with AsyncExitStack() as stack:
        core = await open_core(settings, stack, pool_size=2)
        users = [await core.directory.create_user(NewUser(handle=f"b{i}")) for i in range(10)]
        conversations = [
            await core.directory.create_conversation(
                kind=ConversationKind.GROUP, members=users, owner_id=users[0]
            )
            for _ in range(5)
        ]
        await _history(core, users[0], conversations, size, unread)
        for other in users[1:]:
            await _history(core, other, conversations, 1_000, 100)
        async with core.engine.begin() as conn:
            await conn.execute(text("ANALYZE notifications"))
        bare = autocommit(session_factory(core.engine))
        log = core.notifications

        async def by_key(ids: list[str]) -> None:
            async with bare() as session:
                found = await session.execute(
                    text("SELECT * FROM notifications WHERE id = ANY(CAST(:ids AS uuid[]))"),
                    {"ids": ids},
                )
                assert len(found.all()) == len(ids)

        unread = size // max(1, size // max(1, unread))
        print(f"  {size} rows in the user's history ({unread} unread)")
        for unread_only in (False, True):

            async def page(u: bool = unread_only) -> list[str]:
                return [n.id for n in await log.in_app(users[0], limit=limit, unread_only=u)]

            ids = await page()
            assert len(ids) == min(limit, unread if unread_only else size)

            async def floor(ids: list[str] = ids) -> None:
                await by_key(ids)

            ratio_row(
                "unread only" if unread_only else "all shown",
                await timed(calls, lambda _: page()),
                await timed(calls, lambda _: floor()),
            )


async def run(histories: list[int], unread: list[int], calls: int, limit: int) -> None:
    """Measures each history size and prints the figures."""
    print(f"bell: newest {limit} of one user's in-app rows, {calls} calls each")
    for size, unread_rows in zip(histories, unread, strict=True):
        await _one(size, unread_rows, calls, limit)


def main() -> None:
    """Parses the options and runs."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--history", default="1000,20000,100000,100000")
    parser.add_argument("--unread", default="500,500,500,10000", help="one per history size")
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--limit", type=int, default=50)
    args = parser.parse_args()
    asyncio.run(
        run(
            [int(h) for h in args.history.split(",")],
            [int(u) for u in args.unread.split(",")],
            args.calls,
            args.limit,
        ),
    )


if __name__ == "__main__":
    main()
