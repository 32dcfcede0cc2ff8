"""What the per-user send limit costs a send: one bucket take, against one bare round trip.

    python -m bench.ratelimit [--takes 2000] [--redis redis://127.0.0.1:6379/0]

Same run, same servers: PostgreSQL's bucket (one upsert on the UNLOGGED
``send_rate_buckets``) against ``SELECT 1`` through the same pool, and, when a Redis
answers, Redis's bucket (one Lua script) against ``PING``. Each take is for a
different user, as on a busy gateway; p50 / p99 in microseconds and the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import uuid
from contextlib import AsyncExitStack

from sqlalchemy import text

from bench.harness import _database, ratio_row, timed
from missive.config import Settings
from missive.db import autocommit, session_factory
from missive.ratelimit import PostgresBuckets, RedisBuckets
from runtime.wiring import open_core


async def run(takes: int, redis_url: str) -> None:
    """Measures both stores and prints the figures."""
    settings = Settings(database_url=await _database(), master_keys=f"1:{'A' * 43}=")
    users = [str(uuid.uuid4()) for _ in range(takes)]
    print(f"send limit: {takes} takes, one per user, one after another")
    async with AsyncExitStack() as stack:
        core = await open_core(settings, stack, pool_size=2)
        sessions = session_factory(core.engine)
        bare = autocommit(sessions)
        buckets = PostgresBuckets(sessions)

        async def select_one(_: int) -> None:
            async with bare() as session:
                await session.execute(text("SELECT 1"))

        async def pg_take(i: int) -> None:
            await buckets.take(users[i], rate=5.0, burst=10)

        await timed(200, select_one)  # warm up: connections, prepared statements
        await timed(200, pg_take)
        floor, ours = await timed(takes, select_one), await timed(takes, pg_take)
        ratio_row("PostgreSQL bucket (upsert)", ours, floor, unit="us")

    try:
        redis_buckets = RedisBuckets(redis_url)
        await redis_buckets._redis.ping()
    except (OSError, ConnectionError) as err:
        print(f"  Redis at {redis_url}: not measured ({type(err).__name__})")
        return
    except Exception as err:
        print(f"  Redis at {redis_url}: not measured ({type(err).__name__}: {err})")
        return
    try:

        async def ping(_: int) -> None:
            await redis_buckets._redis.ping()

        async def redis_take(i: int) -> None:
            await redis_buckets.take(users[i], rate=5.0, burst=10)

        await timed(200, ping)
        await timed(200, redis_take)
        floor, ours = await timed(takes, ping), await timed(takes, redis_take)
        ratio_row("Redis bucket (Lua script)", ours, floor, unit="us")
    finally:
        await redis_buckets.close()


def main() -> None:
    """Parses the options and runs."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--takes", type=int, default=2000)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    asyncio.run(run(args.takes, args.redis))


if __name__ == "__main__":
    main()
