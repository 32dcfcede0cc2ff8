"""``starter health``: whether workers poll every task queue and every dependency answers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
from sqlalchemy.engine import make_url
from temporalio.api.enums.v1 import (
    TaskQueueKind,
    TaskQueueType,
)
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import (
    DescribeTaskQueueRequest,
)
from temporalio.client import Client

from missive.config import Settings
from missive.constants import (
    TASK_QUEUE_BATCH,
    TASK_QUEUE_EMAIL,
    TASK_QUEUE_MAINTENANCE,
    TASK_QUEUE_MESSAGES,
    TASK_QUEUE_NOTIFY,
    TASK_QUEUE_PUSH,
    TASK_QUEUE_SMS,
)
from missive.errors import ProviderUnavailable
from starter.ops._history import (
    rpc_errors,
)

POLLER_STALE_AFTER = timedelta(minutes=1)
"""A poller last seen longer ago than this no longer counts as a live worker."""
CHECK_TIMEOUT = 5.0
"""Seconds each dependency check may take before it counts as unreachable."""


@dataclass(frozen=True)
class QueueHealth:
    """Whether workers poll one task queue."""

    task_queue: str
    """The task queue."""
    workflow_pollers: int
    """Workers that polled for workflow tasks within POLLER_STALE_AFTER."""
    activity_pollers: int
    """Workers that polled for activity tasks within POLLER_STALE_AFTER."""
    last_access: datetime | None
    """The latest poll seen, of either kind."""
    workflow_backlog: int | None
    """Workflow tasks waiting (None: the server does not report it)."""
    activity_backlog: int | None
    """Activity tasks waiting (None: the server does not report it)."""
    healthy: bool
    """At least one worker polls for workflow tasks."""


@dataclass(frozen=True)
class DependencyHealth:
    """Whether one server answers."""

    name: str
    """PostgreSQL, Typesense, SMTP or Redis."""
    target: str
    """Where it was asked (host:port, never credentials)."""
    reachable: bool
    """It answered within CHECK_TIMEOUT."""
    detail: str
    """What it said, or why it did not answer."""
    latency_ms: float
    """How long the check took."""


@dataclass(frozen=True)
class HealthReport:
    """Workers and dependencies, and whether everything is fine."""

    healthy: bool
    """Every task queue is polled and every configured dependency answers."""
    queues: list[QueueHealth]
    """One entry per task queue."""
    dependencies: list[DependencyHealth]
    """One entry per configured dependency."""
    checked_at: datetime
    """When the report was made."""

    @property
    def problems(self) -> list[str]:
        """One line per unhealthy queue or dependency."""
        lines = [
            f"task queue {q.task_queue}: no worker polling" for q in self.queues if not q.healthy
        ]
        lines += [
            f"{d.name} at {d.target}: {d.detail}" for d in self.dependencies if not d.reachable
        ]
        return lines


ACTIVITY_ONLY_QUEUES = frozenset({TASK_QUEUE_PUSH, TASK_QUEUE_EMAIL, TASK_QUEUE_SMS})
"""Provider queues: only activities run there, so their activity pollers are what count."""


def task_queues(settings: Settings) -> list[str]:
    """The task queues ``worker.py`` serves with these settings."""
    queues = [TASK_QUEUE_MESSAGES, TASK_QUEUE_MAINTENANCE, TASK_QUEUE_BATCH]
    if settings.typesense_url:
        queues.append(settings.search_task_queue)
    if settings.notify_enabled:
        queues += [TASK_QUEUE_NOTIFY, TASK_QUEUE_PUSH, TASK_QUEUE_EMAIL, TASK_QUEUE_SMS]
    return queues


async def health(
    client: Client,
    settings: Settings,
    *,
    queues: Iterable[str] | None = None,
    stale_after: timedelta = POLLER_STALE_AFTER,
) -> HealthReport:
    """Pollers and backlog per task queue; PostgreSQL, Typesense, SMTP, Redis where configured.

    Raises:
        ProviderUnavailable: Temporal did not answer.
    """
    names = list(queues) if queues is not None else task_queues(settings)
    queue_reports = await asyncio.gather(*(_queue(client, q, stale_after) for q in names))
    checks: list[Awaitable[DependencyHealth]] = []
    if settings.database_url:
        checks.append(_check_postgres(settings.database_url))
    if settings.typesense_url:
        checks.append(_check_typesense(settings.typesense_url))
    if settings.smtp_host:
        checks.append(_check_smtp(settings.smtp_host, settings.smtp_port))
    if settings.redis_url:
        checks.append(_check_redis(settings.redis_url))
    dependencies = list(await asyncio.gather(*checks))
    return HealthReport(
        healthy=all(q.healthy for q in queue_reports) and all(d.reachable for d in dependencies),
        queues=list(queue_reports),
        dependencies=dependencies,
        checked_at=datetime.now(UTC),
    )


async def _queue(client: Client, name: str, stale_after: timedelta) -> QueueHealth:
    cutoff = datetime.now(UTC) - stale_after
    counts: dict[int, int] = {}
    backlogs: dict[int, int | None] = {}
    last: datetime | None = None
    for kind in (TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW, TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY):
        async with rpc_errors(f"describe task queue {name}"):
            described = await client.workflow_service.describe_task_queue(
                DescribeTaskQueueRequest(
                    namespace=client.namespace,
                    task_queue=TaskQueue(name=name, kind=TaskQueueKind.TASK_QUEUE_KIND_NORMAL),
                    task_queue_type=kind,
                    report_stats=True,
                )
            )
        seen = [
            p.last_access_time.ToDatetime(tzinfo=UTC)
            for p in described.pollers
            if p.HasField("last_access_time")
        ]
        counts[kind] = sum(1 for at in seen if at >= cutoff)
        if seen:
            last = max([*seen, last] if last else seen)
        backlogs[kind] = (
            int(described.stats.approximate_backlog_count) if described.HasField("stats") else None
        )
    return QueueHealth(
        task_queue=name,
        workflow_pollers=counts[TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW],
        activity_pollers=counts[TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY],
        last_access=last,
        workflow_backlog=backlogs[TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW],
        activity_backlog=backlogs[TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY],
        healthy=counts[
            TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY
            if name in ACTIVITY_ONLY_QUEUES
            else TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW
        ]
        > 0,
    )


async def _timed(name: str, target: str, check: Callable[[], Awaitable[str]]) -> DependencyHealth:
    began = time.perf_counter()
    try:
        async with asyncio.timeout(CHECK_TIMEOUT):
            detail = await check()
        reachable = True
    except TimeoutError:
        detail, reachable = f"no answer within {CHECK_TIMEOUT:g}s", False
    except Exception as err:  # any failure to answer is the finding, not a crash
        reason = (str(err).splitlines() or [""])[0][:200] or type(err).__name__
        detail, reachable = reason, False
    return DependencyHealth(
        name=name,
        target=target,
        reachable=reachable,
        detail=detail,
        latency_ms=round((time.perf_counter() - began) * 1000, 1),
    )


async def _check_postgres(database_url: str) -> DependencyHealth:
    url = make_url(database_url)
    target = f"{url.host or url.query.get('host') or 'localhost'}:{url.port or 5432}/{url.database}"

    async def check() -> str:
        conn = await asyncpg.connect(
            host=url.query.get("host") or url.host,
            port=url.port,
            user=url.username,
            password=url.password,
            database=url.database,
        )
        try:
            version = await conn.fetchval("SHOW server_version")
        finally:
            await conn.close()
        return f"PostgreSQL {version}"

    return await _timed("PostgreSQL", target, check)


async def _check_typesense(base_url: str) -> DependencyHealth:
    async def check() -> str:
        async with httpx.AsyncClient(timeout=CHECK_TIMEOUT) as http:
            answer = await http.get(base_url.rstrip("/") + "/health")
        if answer.status_code != 200 or not answer.json().get("ok"):
            raise ProviderUnavailable(f"/health answered {answer.status_code}: {answer.text[:100]}")
        return "ok"

    return await _timed("Typesense", base_url, check)


async def _check_smtp(host: str, port: int) -> DependencyHealth:
    import aiosmtplib

    async def check() -> str:
        smtp = aiosmtplib.SMTP(hostname=host, port=port, timeout=CHECK_TIMEOUT)
        await smtp.connect()
        try:
            code, _ = await smtp.noop()
        finally:
            smtp.close()
        return f"NOOP answered {code}"

    return await _timed("SMTP", f"{host}:{port}", check)


async def _check_redis(redis_url: str) -> DependencyHealth:
    import redis.asyncio

    parsed = make_url(redis_url.replace("rediss://", "redis://", 1))
    target = f"{parsed.host}:{parsed.port or 6379}"

    async def check() -> str:
        conn = redis.asyncio.from_url(redis_url, socket_connect_timeout=CHECK_TIMEOUT)
        try:
            await conn.ping()
        finally:
            await conn.aclose()
        return "PONG"

    return await _timed("Redis", target, check)
