"""Per-user send buckets shared by gateway processes: PostgreSQL, and Redis where it runs."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from contextlib import AsyncExitStack

import pytest

from missive.config import Settings
from missive.db import session_factory
from missive.errors import RateLimited
from missive.ratelimit import BucketStore, PostgresBuckets, RedisBuckets, SendLimiter
from runtime.wiring import open_core

pytestmark = pytest.mark.integration


async def _allowed(limiter: SendLimiter, user: str, n: int) -> list[bool]:
    answers = []
    for _ in range(n):
        try:
            await limiter.take(user)
            answers.append(True)
        except RateLimited:
            answers.append(False)
    return answers


async def _two_processes_share_one_bucket(first: BucketStore, second: BucketStore) -> None:
    user = str(uuid.uuid4())
    here = SendLimiter(first, rate=5.0, burst=3)
    there = SendLimiter(second, rate=5.0, burst=3)
    answers = await asyncio.gather(*(_allowed(limiter, user, 3) for limiter in (here, there)))
    assert sum(a for answers_ in answers for a in answers_) == 3  # one bucket for both
    with pytest.raises(RateLimited) as refused:
        await there.take(user)
    assert 0 < (refused.value.retry_after or 0) <= 0.2 + 1e-6  # one token at 5/s
    await asyncio.sleep(0.25)
    await here.take(user)  # refilled at the rate
    assert (
        await _allowed(SendLimiter(first, rate=5.0, burst=3), str(uuid.uuid4()), 3) == [True] * 3
    )  # another user has a full bucket of their own


async def test_postgres_buckets_are_shared_by_two_processes(settings: Settings) -> None:
    async with AsyncExitStack() as stack:
        first = await open_core(settings, stack, pool_size=2)
        second = await open_core(settings, stack, pool_size=2)  # another engine, as a process
        await _two_processes_share_one_bucket(
            PostgresBuckets(session_factory(first.engine)),
            PostgresBuckets(session_factory(second.engine)),
        )


def _redis_url() -> str | None:
    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=0.5):
            return url
    except OSError:
        return None


@pytest.mark.skipif(_redis_url() is None, reason="no Redis server at 127.0.0.1:6379")
async def test_redis_buckets_are_shared_by_two_processes() -> None:
    url = _redis_url()
    assert url is not None
    prefix = f"missive-test-{uuid.uuid4().hex[:8]}:"
    first, second = RedisBuckets(url, prefix=prefix), RedisBuckets(url, prefix=prefix)
    try:
        await _two_processes_share_one_bucket(first, second)
    finally:
        await first.close()
        await second.close()
