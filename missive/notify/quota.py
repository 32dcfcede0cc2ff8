"""ProviderQuota: each provider's notifications per second, held across every worker.

A send activity carries from one row (a direct message's push) to NOTIFY_PUSH_BATCH_SIZE
(a large group's), so a limit on activities per second is not a limit on pushes: at
NOTIFY_PUSH_PER_SECOND / NOTIFY_PUSH_BATCH_SIZE activities a second, one-row activities
would be held to a hundredth of the quota. The quota is counted in rows instead, in one
token bucket per channel in PostgreSQL (``provider_rate_buckets``, migration 0013),
which every worker process shares. A send reserves its rows with one statement after
claiming them; the bucket may run into debt up to HORIZON seconds of quota, and the
send waits until its reservation is paid before calling the provider. So sends start
in the order they reserved, at the quota's rate on average and at most ``burst`` at once.

What does not fit within HORIZON is not reserved: the send puts those rows back
``queued`` and raises RateLimited with the wait, which Temporal turns into the retry's
``next_retry_delay``. A backlog therefore waits in Temporal's queue and in the log, not
in a worker's activity slots.

The bucket computes with the database's clock (one statement, atomic under the row
lock), so worker clocks need not agree.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from missive.db import autocommit
from missive.schemas import Channel

HORIZON = 5.0
"""Seconds of quota a send may reserve ahead (its wait before calling the provider).
Well inside the send activity's 30 s and the claim's SEND_WITHIN."""

_BURST, _RATE = "CAST(:burst AS float8)", "CAST(:rate AS float8)"
_WANTED, _AHEAD = "CAST(:wanted AS float8)", "CAST(:rate AS float8) * CAST(:horizon AS float8)"
_REFILLED = (
    f"LEAST({_BURST}, b.tokens + {_RATE} * GREATEST(0, EXTRACT(EPOCH FROM"
    " statement_timestamp() - b.updated_at)))"
)
_TAKEN = f"GREATEST(0, LEAST({_WANTED}, FLOOR({_REFILLED} + {_AHEAD})))"
_FIRST_TAKEN = f"LEAST({_WANTED}, FLOOR({_BURST} + {_AHEAD}))"

_RESERVE_SQL = text(
    f"""
    INSERT INTO provider_rate_buckets AS b (channel, tokens, updated_at, taken)
    VALUES (:channel, {_BURST} - {_FIRST_TAKEN}, statement_timestamp(), {_FIRST_TAKEN})
    ON CONFLICT (channel) DO UPDATE SET
        tokens = {_REFILLED} - {_TAKEN},
        taken = {_TAKEN},
        updated_at = GREATEST(b.updated_at, statement_timestamp())
    RETURNING tokens, taken
    """
)
"""Refills the bucket to now, takes as many of the wanted rows as fit before it is
HORIZON seconds of quota in debt, and returns the tokens left and the rows taken.
statement_timestamp() is one instant for the whole statement; a statement that waited
for the row lock may be older than the last update, hence the GREATESTs (no negative
refill, no clock going back)."""


@dataclass(frozen=True)
class Grant:
    """What a reservation got."""

    rows: int
    """Rows that may be sent (0 to the number wanted)."""
    wait: float
    """Seconds to wait before sending them (0 when the bucket had them)."""
    retry_after: float
    """When ``rows`` is less than wanted: seconds until one more row would fit."""


@dataclass(frozen=True)
class ChannelRate:
    """One channel's quota."""

    per_second: float
    burst: int


class ProviderQuota:
    """The rows-per-second quota of each channel, in PostgreSQL."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        rates: dict[Channel, ChannelRate],
        *,
        horizon: float = HORIZON,
    ) -> None:
        for channel, rate in rates.items():
            if rate.per_second <= 0 or rate.burst < 1:
                raise ValueError(f"the {channel} quota needs per_second > 0 and burst >= 1")
        if not 0 <= horizon <= HORIZON:
            raise ValueError(f"horizon must be between 0 and {HORIZON} s")
        self._autocommit = autocommit(sessions)
        self._rates = dict(rates)
        self._horizon = horizon

    @classmethod
    def per_second(
        cls, sessions: async_sessionmaker[AsyncSession], rates: dict[Channel, float]
    ) -> ProviderQuota:
        """Quotas whose burst is one second's worth (at least one row)."""
        return cls(
            sessions,
            {c: ChannelRate(per_second=r, burst=max(1, int(r))) for c, r in rates.items()},
        )

    async def reserve(self, channel: Channel, wanted: int) -> Grant:
        """Reserves up to ``wanted`` rows of ``channel``'s quota; a channel without a
        quota grants them all at once."""
        rate = self._rates.get(channel)
        if rate is None or wanted <= 0:
            return Grant(rows=max(wanted, 0), wait=0.0, retry_after=0.0)
        async with self._autocommit() as session:
            row = (
                await session.execute(
                    _RESERVE_SQL,
                    {
                        "channel": str(channel),
                        "wanted": wanted,
                        "burst": rate.burst,
                        "rate": rate.per_second,
                        "horizon": self._horizon,
                    },
                )
            ).one()
        tokens, taken = float(row.tokens), int(row.taken)
        wait = max(0.0, -tokens / rate.per_second) if taken else 0.0
        # Short of what was wanted, the bucket is at its debt limit: one more row fits
        # once tokens + rate * horizon reaches 1.
        retry_after = (
            0.0 if taken >= wanted else max(0.0, (1.0 - tokens) / rate.per_second - self._horizon)
        )
        return Grant(rows=taken, wait=wait, retry_after=retry_after)
