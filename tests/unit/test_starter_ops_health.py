"""``starter health``'s pure parts: which task queues to check, and the summary of problems."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from starter.ops import DependencyHealth, HealthReport, QueueHealth, task_queues
from tests.conftest import base_settings

pytestmark = pytest.mark.unit

ALWAYS = ["missive-messages", "missive-maintenance", "missive-batch"]
NOTIFY = ["missive-notify", "missive-notify-push", "missive-notify-email", "missive-notify-sms"]


def test_the_queues_follow_what_the_settings_turn_on() -> None:
    assert task_queues(base_settings(typesense_url=None, notify_enabled=False)) == ALWAYS
    assert task_queues(base_settings(typesense_url=None, notify_enabled=True)) == ALWAYS + NOTIFY
    searching = base_settings(
        typesense_url="http://127.0.0.1:8108", search_task_queue="my-search", notify_enabled=False
    )
    assert task_queues(searching) == [*ALWAYS, "my-search"]


def queue(name: str, healthy: bool) -> QueueHealth:
    return QueueHealth(
        task_queue=name,
        workflow_pollers=int(healthy),
        activity_pollers=0,
        last_access=None,
        workflow_backlog=None,
        activity_backlog=None,
        healthy=healthy,
    )


def dependency(name: str, reachable: bool, detail: str) -> DependencyHealth:
    return DependencyHealth(
        name=name, target="127.0.0.1:1", reachable=reachable, detail=detail, latency_ms=1.0
    )


def test_problems_list_unpolled_queues_then_unreachable_dependencies() -> None:
    report = HealthReport(
        healthy=False,
        queues=[queue("missive-messages", True), queue("missive-batch", False)],
        dependencies=[
            dependency("PostgreSQL", True, "PostgreSQL 18"),
            dependency("Redis", False, "ConnectionRefusedError: refused"),
        ],
        checked_at=datetime(2026, 1, 10, tzinfo=UTC),
    )
    assert report.problems == [
        "task queue missive-batch: no worker polling",
        "Redis at 127.0.0.1:1: ConnectionRefusedError: refused",
    ]


def test_a_healthy_report_has_no_problems() -> None:
    report = HealthReport(
        healthy=True,
        queues=[queue("missive-messages", True)],
        dependencies=[],
        checked_at=datetime(2026, 1, 10, tzinfo=UTC),
    )
    assert report.problems == []
