"""ProviderQuota: each channel's rows per second in PostgreSQL, shared by worker processes."""

from __future__ import annotations

import asyncio
import time

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import async_sessionmaker

from missive.db import session_factory
from missive.notify.quota import HORIZON, ChannelRate, ProviderQuota
from missive.schemas import Channel
from runtime.wiring import Core

pytestmark = pytest.mark.integration

SLACK = 0.15
"""Seconds a wait may be off by: the statements themselves take time on a busy machine."""


def _quota(core: Core, *, per_second: float, burst: int, horizon: float = HORIZON) -> ProviderQuota:
    return ProviderQuota(
        session_factory(core.engine),
        {Channel.PUSH: ChannelRate(per_second=per_second, burst=burst)},
        horizon=horizon,
    )


async def test_two_workers_share_one_bucket_and_wait_their_turn(core: Core) -> None:
    first, second = (_quota(core, per_second=10, burst=10) for _ in range(2))
    full = await first.reserve(Channel.PUSH, 10)
    assert (full.rows, full.retry_after) == (10, 0.0) and full.wait == 0.0  # the burst
    queued = await second.reserve(Channel.PUSH, 10)  # another worker: the same bucket
    assert queued.rows == 10 and 1.0 - SLACK <= queued.wait <= 1.0
    behind = await first.reserve(Channel.PUSH, 5)
    assert behind.rows == 5 and 1.5 - SLACK <= behind.wait <= 1.5


async def test_what_does_not_fit_within_the_horizon_is_not_reserved(core: Core) -> None:
    quota = _quota(core, per_second=10, burst=10, horizon=2.0)
    # Burst 10 plus 2 s of 10/s: 30 rows fit, the last of them 2 s from now.
    partly = await quota.reserve(Channel.PUSH, 45)
    assert partly.rows == 30 and 2.0 - SLACK <= partly.wait <= 2.0
    assert 0.0 < partly.retry_after <= 0.1 + SLACK
    none = await quota.reserve(Channel.PUSH, 1)
    assert (none.rows, none.wait) == (0, 0.0) and 0.0 < none.retry_after <= 0.1 + SLACK
    await asyncio.sleep(none.retry_after + 0.05)
    later = await quota.reserve(Channel.PUSH, 1)
    assert later.rows == 1 and later.wait <= 2.0


async def test_each_channel_has_its_own_bucket_and_no_quota_means_no_wait(core: Core) -> None:
    quota = ProviderQuota.per_second(
        session_factory(core.engine), {Channel.PUSH: 2.0, Channel.SMS: 1.0}
    )
    await quota.reserve(Channel.PUSH, 12)  # push in debt: 2 now, 10 over the next 5 s
    sms = await quota.reserve(Channel.SMS, 1)
    assert (sms.rows, sms.wait) == (1, 0.0)
    email = await quota.reserve(Channel.EMAIL, 1_000)  # no quota given for email
    assert (email.rows, email.wait) == (1_000, 0.0)
    async with core.engine.connect() as conn:
        buckets = (
            await conn.execute(text("SELECT channel, taken FROM provider_rate_buckets"))
        ).all()
    assert sorted(map(tuple, buckets)) == [("push", 12), ("sms", 1)]


async def test_concurrent_reservations_never_overbook(core: Core) -> None:
    quotas = [_quota(core, per_second=20, burst=5, horizon=1.0) for _ in range(4)]
    started = time.perf_counter()
    grants = await asyncio.gather(*(quotas[i % 4].reserve(Channel.PUSH, 3) for i in range(40)))
    elapsed = time.perf_counter() - started
    # Burst 5 plus 1 s of 20/s: 25 rows may be reserved, however the 40 calls interleave,
    # plus what the bucket refilled while they ran (20/s of the time they took).
    total = sum(g.rows for g in grants)
    assert 25 <= total <= 25 + 20 * elapsed, (total, elapsed)
    assert max(g.wait for g in grants) <= 1.0


def test_a_quota_needs_a_rate_and_a_burst() -> None:
    with pytest.raises(ValueError, match="push quota needs per_second > 0"):
        ProviderQuota(async_sessionmaker(), {Channel.PUSH: ChannelRate(per_second=0, burst=1)})
    with pytest.raises(ValueError, match="horizon must be between 0 and"):
        ProviderQuota(async_sessionmaker(), {}, horizon=60)
