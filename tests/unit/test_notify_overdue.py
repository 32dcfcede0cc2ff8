"""The worker's overdue-notification gauges, from one look at the log per period."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from missive.metrics import Metrics
from missive.notify.log import OverdueSummary
from runtime.notify import watch_overdue
from tests.conftest import base_settings

pytestmark = pytest.mark.unit

NOW = datetime(2026, 1, 10, 12, 0, tzinfo=UTC)


class Log:
    """Answers overdue() with each summary in turn (an error for a failed look)."""

    def __init__(self, *answers: OverdueSummary | Exception) -> None:
        self.answers = list(answers)
        self.asked: list[datetime] = []
        self.done = asyncio.Event()
        self.second = asyncio.Event()

    async def overdue(self, *, before: datetime, examples: int) -> OverdueSummary:
        self.asked.append(before)
        if len(self.asked) == 2:
            self.second.set()
        answer = self.answers.pop(0)
        if not self.answers:
            self.done.set()
        if isinstance(answer, Exception):
            raise answer
        return answer


def gauge(metrics: Metrics, name: str) -> float | None:
    return metrics.registry.get_sample_value(name)


async def test_the_gauges_follow_the_overdue_rows_and_survive_a_failed_look() -> None:
    settings = base_settings(notify_overdue_seconds=600, notify_overdue_check_seconds=0.01)
    metrics = Metrics()
    oldest = NOW - timedelta(minutes=30)
    log = Log(
        OverdueSummary(count=4, oldest_due=oldest, examples=[]),
        ConnectionRefusedError("PostgreSQL is restarting"),
        OverdueSummary(count=0, oldest_due=None, examples=[]),
    )
    seen: list[tuple[float | None, float | None]] = []

    async def watch() -> None:
        await watch_overdue(settings, log, metrics, clock=lambda: NOW)  # type: ignore[arg-type]

    task = asyncio.create_task(watch())
    try:
        await asyncio.wait_for(log.second.wait(), 5)
        seen.append(
            (
                gauge(metrics, "missive_notifications_overdue"),
                gauge(metrics, "missive_notifications_overdue_oldest_seconds"),
            )
        )
        await asyncio.wait_for(log.done.wait(), 5)
        await asyncio.sleep(0.02)
    finally:
        task.cancel()
    # The first look: 4 rows, the oldest 30 min past due; the failed look kept them.
    assert seen == [(4.0, 1800.0)]
    assert log.asked[0] == NOW - timedelta(seconds=600)
    assert gauge(metrics, "missive_notifications_overdue") == 0.0
    assert gauge(metrics, "missive_notifications_overdue_oldest_seconds") == 0.0
