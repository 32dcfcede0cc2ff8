"""Per-user send limits: a token bucket shared by every gateway process.

Each user has a bucket of ``burst`` tokens that refills at ``rate`` tokens per
second; a send takes one. The bucket lives where every gateway process sees it:
Redis when the deployment has it (one Lua script, atomic in Redis), else
PostgreSQL (one upsert on an UNLOGGED table, atomic under its row lock). Both
compute with the store's own clock, so gateway clocks need not agree.

A refused user is remembered in the process until their bucket holds a token
again, so a client that keeps flooding costs no round trip at all: it is
answered from memory, in microseconds, and never slows anyone else.
"""

from __future__ import annotations

import time
from typing import Protocol

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from missive.db import autocommit
from missive.errors import RateLimited

_TAKE_SQL = text(
    """
    INSERT INTO send_rate_buckets AS b (user_id, tokens, updated_at, allowed)
    VALUES (:uid, :burst - 1, clock_timestamp(), true)
    ON CONFLICT (user_id) DO UPDATE SET
        tokens = LEAST(:burst, b.tokens + :rate * EXTRACT(EPOCH FROM clock_timestamp()
                                                          - b.updated_at))
                 - CASE WHEN LEAST(:burst, b.tokens + :rate * EXTRACT(EPOCH FROM
                             clock_timestamp() - b.updated_at)) >= 1 THEN 1 ELSE 0 END,
        allowed = LEAST(:burst, b.tokens + :rate * EXTRACT(EPOCH FROM clock_timestamp()
                                                           - b.updated_at)) >= 1,
        updated_at = clock_timestamp()
    RETURNING allowed, tokens
    """
)

_TAKE_LUA = """
local now = redis.call('TIME')
local t = tonumber(now[1]) + tonumber(now[2]) / 1000000
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens, at = tonumber(state[1]), tonumber(state[2])
if tokens == nil then tokens, at = burst, t end
tokens = math.min(burst, tokens + rate * math.max(0, t - at))
local allowed = 0
if tokens >= 1 then tokens = tokens - 1; allowed = 1 end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(t))
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 1)
return {allowed, tostring(tokens)}
"""


class BucketStore(Protocol):
    """Where the buckets live: takes one token of a user's bucket, atomically."""

    async def take(self, user_id: str, *, rate: float, burst: int) -> tuple[bool, float]:
        """Whether a token was taken, and the tokens left (fractional)."""


class PostgresBuckets:
    """Buckets in PostgreSQL's ``send_rate_buckets`` (migration 0008): one statement per send."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._autocommit = autocommit(sessions)

    async def take(self, user_id: str, *, rate: float, burst: int) -> tuple[bool, float]:
        """See BucketStore.take."""
        async with self._autocommit() as session:
            row = (
                await session.execute(_TAKE_SQL, {"uid": user_id, "rate": rate, "burst": burst})
            ).one()
        return bool(row.allowed), float(row.tokens)


class RedisBuckets:
    """Buckets in Redis (a hash per user that expires once it would be full again)."""

    def __init__(self, redis_url: str, *, prefix: str = "missive:send-bucket:") -> None:
        import redis.asyncio

        self._redis = redis.asyncio.Redis.from_url(redis_url)
        self._script = self._redis.register_script(_TAKE_LUA)
        self._prefix = prefix

    async def take(self, user_id: str, *, rate: float, burst: int) -> tuple[bool, float]:
        """See BucketStore.take."""
        allowed, tokens = await self._script(keys=[self._prefix + user_id], args=[rate, burst])
        return bool(int(allowed)), float(tokens)

    async def close(self) -> None:
        """Closes the connection pool."""
        await self._redis.aclose()


def retry_after(tokens: float, rate: float) -> float:
    """Seconds until a bucket holding ``tokens`` has one whole token again."""
    return max(0.0, (1.0 - tokens) / rate)


class SendLimiter:
    """The send limit of every user, checked before a send starts anything."""

    def __init__(self, store: BucketStore, *, rate: float, burst: int) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a send limit needs rate > 0 and burst >= 1")
        self._store = store
        self._rate = rate
        self._burst = burst
        self._refused_until: dict[str, float] = {}

    def refused_for(self, user_id: str) -> float | None:
        """Seconds the user's bucket is known (from memory) to stay empty, else None."""
        until = self._refused_until.get(user_id)
        if until is None:
            return None
        wait = until - time.monotonic()
        return wait if wait > 0 else None

    async def take(self, user_id: str) -> None:
        """Takes one send from the user's bucket.

        Raises:
            RateLimited: the bucket is empty; ``retry_after`` says when it is not.
        """
        now = time.monotonic()
        until = self._refused_until.get(user_id)
        if until is not None:
            if now < until:
                raise limited(until - now)
            del self._refused_until[user_id]
        allowed, tokens = await self._store.take(user_id, rate=self._rate, burst=self._burst)
        if allowed:
            return
        wait = retry_after(tokens, self._rate)
        if len(self._refused_until) > 100_000:  # bounded: a refusal is at most 1/rate s old
            self._refused_until = {u: t for u, t in self._refused_until.items() if t > now}
        self._refused_until[user_id] = now + wait
        raise limited(wait)


def limited(wait: float) -> RateLimited:
    """The refusal of a send whose user's bucket is empty for ``wait`` more seconds."""
    return RateLimited(
        f"sending too fast: wait {wait * 1000:.0f} ms before the next message",
        retry_after=wait,
    )
