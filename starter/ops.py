"""Operating Missive: health, failure analysis, stuck activities and notifications, retries."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal, TypeVar

import asyncpg
import httpx
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.enums.v1 import (
    EventType,
    HistoryEventFilterType,
    TaskQueueKind,
    TaskQueueType,
    WorkflowIdReusePolicy,
)
from temporalio.api.failure.v1 import Failure
from temporalio.api.history.v1 import HistoryEvent
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import (
    DescribeTaskQueueRequest,
    GetWorkflowExecutionHistoryRequest,
    ResetWorkflowExecutionRequest,
    StartWorkflowExecutionRequest,
)
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.exceptions import ActivityError, ApplicationError, ChildWorkflowError, FailureError
from temporalio.service import RPCError, RPCStatusCode

from missive.config import Settings
from missive.constants import (
    TASK_QUEUE_EMAIL,
    TASK_QUEUE_MAINTENANCE,
    TASK_QUEUE_MESSAGES,
    TASK_QUEUE_NOTIFY,
    TASK_QUEUE_PUSH,
    TASK_QUEUE_SMS,
)
from missive.db import create_engine, describe, session_factory
from missive.errors import InvalidInput, PermanentError, ProviderUnavailable
from missive.jobs import TASK_QUEUE_BATCH
from missive.notify.log import NotificationLog, OverdueSummary

POLLER_STALE_AFTER = timedelta(minutes=1)
"""A poller last seen longer ago than this no longer counts as a live worker."""
CHECK_TIMEOUT = 5.0
"""Seconds each dependency check may take before it counts as unreachable."""
DEFAULT_CONCURRENCY = 32
"""History reads, describes and resets in flight at once."""
EXAMPLES_PER_GROUP = 3
"""Example workflow ids listed per failure group."""

FAILED_STATUSES = ("Failed", "TimedOut", "Terminated")
"""The visibility ExecutionStatus values failure analysis and retry look at."""

_TRANSIENT = frozenset(
    {
        RPCStatusCode.UNAVAILABLE,
        RPCStatusCode.DEADLINE_EXCEEDED,
        RPCStatusCode.RESOURCE_EXHAUSTED,
        RPCStatusCode.CANCELLED,
    }
)
_VARIABLE = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|\b\d+\b"
)

T = TypeVar("T")


class UnknownWorkflow(PermanentError):
    """No workflow with that id (or it is past retention)."""


class RetryRefused(PermanentError):
    """The workflow cannot be retried as asked (it runs, or has no point to reset to)."""


class NothingMatched(PermanentError):
    """A visibility query matched no workflow."""


# --- health ----------------------------------------------------------------------------


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


# --- failure analysis -----------------------------------------------------------------


@dataclass(frozen=True)
class FailureCause:
    """Why one closed workflow failed, read from its close event."""

    workflow_id: str
    """The workflow."""
    run_id: str
    """The run that failed."""
    workflow_type: str
    """Its type."""
    status: str
    """Failed, TimedOut or Terminated."""
    error_type: str
    """The root cause's type (ApplicationError.type, or the failure's kind)."""
    message: str
    """The root cause's message, decoded through the payload codec."""
    activity_type: str | None
    """The activity whose failure failed the workflow, if one did."""
    close_time: datetime | None
    """When it closed."""


@dataclass(frozen=True)
class FailureGroup:
    """Workflows that failed the same way."""

    workflow_type: str
    """Their type."""
    status: str
    """Failed, TimedOut or Terminated."""
    error_type: str
    """The root cause's type."""
    activity_type: str | None
    """The activity that failed, if any."""
    pattern: str
    """The message with ids and numbers replaced by ``<id>`` / ``<n>``."""
    count: int
    """How many workflows failed this way."""
    example_message: str
    """One real message of the group."""
    example_ids: list[str]
    """A few workflow ids of the group."""


@dataclass(frozen=True)
class FailureReport:
    """Failed, timed-out and terminated workflows, grouped by type and cause."""

    query: str
    """The visibility query used."""
    total: int
    """Workflows matched."""
    by_type: dict[str, int]
    """Counts per workflow type."""
    groups: list[FailureGroup]
    """Counts per (type, status, error type, activity, message pattern), largest first."""
    elapsed_seconds: float
    """How long the analysis took."""


def failures_query(
    *, since: timedelta, workflow_type: str | None = None, extra: str | None = None
) -> str:
    """The visibility query of workflows that failed, timed out or were terminated recently."""
    after = (datetime.now(UTC) - since).strftime("%Y-%m-%dT%H:%M:%SZ")
    statuses = ", ".join(f"'{s}'" for s in FAILED_STATUSES)
    query = f"ExecutionStatus IN ({statuses}) AND CloseTime > '{after}'"
    if workflow_type:
        query += f" AND WorkflowType = '{_quote(workflow_type)}'"
    if extra:
        query += f" AND ({extra})"
    return query


async def failures(
    client: Client,
    *,
    since: timedelta = timedelta(hours=1),
    workflow_type: str | None = None,
    extra_query: str | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
    examples: int = EXAMPLES_PER_GROUP,
) -> FailureReport:
    """Groups recent failures by workflow type and cause.

    Args:
        client: A client with the project's data converter (to decode messages).
        since: How far back to look (by close time).
        workflow_type: Only this type.
        extra_query: A visibility clause ANDed to the query (say ``WorkflowId
            STARTS_WITH 'message-'`` or ``MissiveConversationId = '...'``).
        concurrency: History reads in flight at once.
        examples: Example ids per group.

    Raises:
        InvalidInput: the server refused the query (its message says why).
        ProviderUnavailable: Temporal did not answer.
    """
    began = time.perf_counter()
    query = failures_query(since=since, workflow_type=workflow_type, extra=extra_query)
    executions = await list_executions(client, query)
    causes = await _gather(
        [lambda e=e: failure_cause(client, e) for e in executions],  # type: ignore[misc]
        concurrency,
    )
    return FailureReport(
        query=query,
        total=len(causes),
        by_type=_count(c.workflow_type for c in causes),
        groups=group_failures(causes, examples=examples),
        elapsed_seconds=time.perf_counter() - began,
    )


def group_failures(causes: Iterable[FailureCause], *, examples: int) -> list[FailureGroup]:
    """Groups causes by (type, status, error type, activity, message pattern), largest first."""
    groups: dict[tuple[str, str, str, str | None, str], list[FailureCause]] = {}
    for cause in causes:
        pattern = _VARIABLE.sub(_placeholder, cause.message)
        key = (cause.workflow_type, cause.status, cause.error_type, cause.activity_type, pattern)
        groups.setdefault(key, []).append(cause)
    out = [
        FailureGroup(
            workflow_type=key[0],
            status=key[1],
            error_type=key[2],
            activity_type=key[3],
            pattern=key[4],
            count=len(members),
            example_message=members[0].message,
            example_ids=[m.workflow_id for m in members[:examples]],
        )
        for key, members in groups.items()
    ]
    out.sort(key=lambda g: (-g.count, g.workflow_type, g.error_type, g.pattern))
    return out


def _placeholder(match: re.Match[str]) -> str:
    return "<id>" if "-" in match.group(0) else "<n>"


@dataclass(frozen=True)
class Execution:
    """A workflow execution as visibility lists it."""

    id: str
    """Workflow id."""
    run_id: str
    """Run id."""
    workflow_type: str
    """Type."""
    status: str
    """Running, Completed, Failed, TimedOut, Terminated, ..."""
    task_queue: str
    """Task queue."""


async def list_executions(
    client: Client, query: str, *, limit: int | None = None
) -> list[Execution]:
    """The executions matching a visibility query.

    Raises:
        InvalidInput: the server refused the query.
        ProviderUnavailable: Temporal did not answer.
    """
    found: list[Execution] = []
    async with rpc_errors("visibility query", query=query):
        async for wf in client.list_workflows(query, limit=limit, page_size=1000):
            found.append(
                Execution(
                    id=wf.id,
                    run_id=wf.run_id,
                    workflow_type=wf.workflow_type,
                    status=_status_name(wf.status),
                    task_queue=wf.task_queue,
                )
            )
    return found


async def failure_cause(client: Client, execution: Execution) -> FailureCause:
    """Reads one closed workflow's close event and decodes its failure.

    Raises:
        UnknownWorkflow: the run is gone (past retention).
    """
    event = await close_event(client, execution.id, execution.run_id)
    close_time = event.event_time.ToDatetime(tzinfo=UTC) if event.HasField("event_time") else None
    activity: str | None = None
    if event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED:
        error_type, message, activity = await _root_cause(
            client, event.workflow_execution_failed_event_attributes.failure
        )
    elif event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TERMINATED:
        attrs = event.workflow_execution_terminated_event_attributes
        error_type, message = "Terminated", attrs.reason or "terminated"
    elif event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TIMED_OUT:
        error_type, message = "WorkflowTimedOut", "the workflow's execution or run timeout elapsed"
    else:
        error_type, message = EventType.Name(event.event_type), "closed without a failure"
    return FailureCause(
        workflow_id=execution.id,
        run_id=execution.run_id,
        workflow_type=execution.workflow_type,
        status=execution.status,
        error_type=error_type,
        message=message,
        activity_type=activity,
        close_time=close_time,
    )


async def close_event(client: Client, workflow_id: str, run_id: str) -> HistoryEvent:
    """The last event of a closed run (one small read, not the whole history)."""
    async with rpc_errors(f"history of {workflow_id}", workflow_id=workflow_id):
        answer = await client.workflow_service.get_workflow_execution_history(
            GetWorkflowExecutionHistoryRequest(
                namespace=client.namespace,
                execution=WorkflowExecution(workflow_id=workflow_id, run_id=run_id),
                history_event_filter_type=HistoryEventFilterType.HISTORY_EVENT_FILTER_TYPE_CLOSE_EVENT,
                skip_archival=True,
            )
        )
    if not answer.history.events:
        raise RetryRefused(f"workflow {workflow_id} has not closed")
    return answer.history.events[-1]


async def _root_cause(client: Client, failure: Failure) -> tuple[str, str, str | None]:
    """(error type, message, failing activity) of a failure chain, decoded."""
    err: BaseException | None = await client.data_converter.decode_failure(failure)
    activity: str | None = None
    error_type, message = "Unknown", ""
    for _ in range(20):  # chains are short; never loop on a cycle
        if err is None:
            break
        if isinstance(err, ActivityError):
            activity = activity or err.activity_type
        if isinstance(err, ApplicationError):
            error_type, message = err.type or "ApplicationError", err.message
        elif isinstance(err, FailureError) and not isinstance(
            err, ActivityError | ChildWorkflowError
        ):
            error_type, message = type(err).__name__, err.message
        err = err.cause if isinstance(err, FailureError) else None
    return error_type, " ".join(message.split()), activity


# --- stuck activities -----------------------------------------------------------------


@dataclass(frozen=True)
class StuckActivity:
    """An activity of a running workflow that keeps failing."""

    workflow_id: str
    """The workflow."""
    run_id: str
    """Its run."""
    workflow_type: str
    """Its type."""
    activity_type: str
    """The activity."""
    attempt: int
    """The attempt it is on."""
    error_type: str | None
    """The last failure's type."""
    message: str | None
    """The last failure's message, decoded."""
    next_attempt_at: datetime | None
    """When the next attempt is scheduled."""


async def stuck(
    client: Client,
    *,
    min_attempts: int = 3,
    extra_query: str | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
) -> list[StuckActivity]:
    """Pending activities of running workflows on attempt ``min_attempts`` or later.

    Raises:
        InvalidInput: min_attempts below 1, or the server refused the query.
        ProviderUnavailable: Temporal did not answer.
    """
    if min_attempts < 1:
        raise InvalidInput(f"--min-attempts must be at least 1, got {min_attempts}")
    query = "ExecutionStatus = 'Running'" + (f" AND ({extra_query})" if extra_query else "")
    running = await list_executions(client, query)

    async def one(execution: Execution) -> list[StuckActivity]:
        handle = client.get_workflow_handle(execution.id, run_id=execution.run_id)
        try:
            async with rpc_errors(f"describe {execution.id}", workflow_id=execution.id):
                described = await handle.describe()
        except UnknownWorkflow:
            return []  # closed and gone since the list
        out = []
        for pending in described.raw_description.pending_activities:
            if pending.attempt < min_attempts:
                continue
            error_type = message = None
            if pending.HasField("last_failure"):
                error_type, message, _ = await _root_cause(client, pending.last_failure)
            out.append(
                StuckActivity(
                    workflow_id=execution.id,
                    run_id=execution.run_id,
                    workflow_type=execution.workflow_type,
                    activity_type=pending.activity_type.name,
                    attempt=pending.attempt,
                    error_type=error_type,
                    message=message,
                    next_attempt_at=pending.next_attempt_schedule_time.ToDatetime(tzinfo=UTC)
                    if pending.HasField("next_attempt_schedule_time")
                    else None,
                )
            )
        return out

    found = await _gather([lambda e=e: one(e) for e in running], concurrency)  # type: ignore[misc]
    return sorted((a for batch in found for a in batch), key=lambda a: (-a.attempt, a.workflow_id))


OVERDUE_EXAMPLES = 20
"""Overdue notification rows ``stuck`` lists (the oldest first; the count covers all)."""


async def overdue_notifications(
    settings: Settings,
    *,
    older_than: timedelta | None = None,
    examples: int = OVERDUE_EXAMPLES,
    now: datetime | None = None,
) -> OverdueSummary:
    """Notification rows still open (pending, queued, sending) ``older_than`` past their due
    time (default NOTIFY_OVERDUE_SECONDS): a lifecycle that completed may have left them,
    so only the log shows them.

    Raises:
        InvalidInput: DATABASE_URL is unset, or older_than is not positive.
        ProviderUnavailable: PostgreSQL did not answer.
    """
    if not settings.database_url:
        raise InvalidInput("DATABASE_URL is required to look for overdue notifications")
    margin = older_than or timedelta(seconds=settings.notify_overdue_seconds)
    if margin <= timedelta(0):
        raise InvalidInput(f"the overdue margin must be positive, got {margin}")
    engine = create_engine(settings.database_url, pool_size=1)
    try:
        log = NotificationLog(session_factory(engine))
        at = now or datetime.now(UTC)
        return await log.overdue(before=at - margin, examples=examples)
    except (SQLAlchemyError, OSError) as err:
        reason = str(getattr(err, "orig", None) or err).splitlines()[0][:200]
        raise ProviderUnavailable(
            f"cannot reach PostgreSQL at {describe(settings.database_url)}: {reason}"
        ) from None
    finally:
        await engine.dispose()


# --- retry ----------------------------------------------------------------------------

RetryMode = Literal["reset", "restart"]
ResetPoint = Literal["last", "first"]


@dataclass(frozen=True)
class RetryItem:
    """What a retry did (or would do) to one workflow."""

    workflow_id: str
    """The workflow."""
    run_id: str
    """The closed run it retried."""
    workflow_type: str
    """Its type."""
    status: str
    """Its status before the retry."""
    action: str
    """What was done: ``reset to event N``, ``restarted``, or ``skipped``."""
    new_run_id: str | None = None
    """The new run (None in a dry run or when skipped)."""
    skipped: str | None = None
    """Why it was skipped (it runs), else None."""


@dataclass(frozen=True)
class RetryReport:
    """The outcome of a retry."""

    dry_run: bool
    """Nothing was changed: the items say what would be done."""
    mode: str
    """reset or restart."""
    items: list[RetryItem]
    """One entry per workflow matched."""

    @property
    def retried(self) -> int:
        """Workflows retried (or that would be, in a dry run)."""
        return sum(1 for i in self.items if i.skipped is None)


async def retry(
    client: Client,
    *,
    workflow_id: str | None = None,
    query: str | None = None,
    mode: RetryMode = "reset",
    reset_point: ResetPoint = "last",
    dry_run: bool = False,
    reason: str = "retried with python -m starter retry",
    concurrency: int = DEFAULT_CONCURRENCY,
) -> RetryReport:
    """Re-runs closed workflows: one by id, or every closed one a visibility query matches.

    ``reset`` makes a new run from the run's history up to its last (or first)
    completed workflow task, so the workflow's code runs again from there (use
    it after fixing the workflow or the data it read). ``restart`` starts a new
    run with the same id, task queue, input, memo and search attributes, as
    recorded in the run's first event.

    Raises:
        InvalidInput: not exactly one of workflow_id and query, or a refused query.
        UnknownWorkflow: no workflow with that id.
        RetryRefused: the workflow (by id) is running, or has nothing to reset to.
        NothingMatched: the query matched no closed workflow.
        ProviderUnavailable: Temporal did not answer.
    """
    if (workflow_id is None) == (query is None):
        raise InvalidInput("give exactly one of --workflow-id and --query")
    if mode not in ("reset", "restart"):
        raise InvalidInput(f"--mode must be reset or restart, got {mode!r}")
    if reset_point not in ("last", "first"):
        raise InvalidInput(f"--reset-point must be last or first, got {reset_point!r}")
    if workflow_id is not None:
        handle = client.get_workflow_handle(workflow_id)
        async with rpc_errors(f"describe {workflow_id}", workflow_id=workflow_id):
            described = await handle.describe()
        execution = Execution(
            id=described.id,
            run_id=described.run_id,
            workflow_type=described.workflow_type,
            status=_status_name(described.status),
            task_queue=described.task_queue,
        )
        if execution.status == "Running":
            raise RetryRefused(
                f"workflow {workflow_id} is running: only a closed workflow can be retried "
                "(terminate or cancel it first)"
            )
        executions = [execution]
    else:
        assert query is not None
        executions = await list_executions(client, query)
        if not executions:
            raise NothingMatched(f"no workflow matches the query: {query}")

    async def one(execution: Execution) -> RetryItem:
        if execution.status == "Running":
            return RetryItem(
                workflow_id=execution.id,
                run_id=execution.run_id,
                workflow_type=execution.workflow_type,
                status=execution.status,
                action="skipped",
                skipped="running",
            )
        if mode == "reset":
            return await _reset(client, execution, reset_point, dry_run, reason)
        return await _restart(client, execution, dry_run)

    items = await _gather([lambda e=e: one(e) for e in executions], concurrency)  # type: ignore[misc]
    if workflow_id is None and not any(i.skipped is None for i in items):
        raise NothingMatched(
            f"the query matched {len(items)} workflow(s), all still running: nothing to retry"
        )
    return RetryReport(dry_run=dry_run, mode=mode, items=list(items))


async def _history(client: Client, execution: Execution) -> list[HistoryEvent]:
    handle = client.get_workflow_handle(execution.id, run_id=execution.run_id)
    async with rpc_errors(f"history of {execution.id}", workflow_id=execution.id):
        history = await handle.fetch_history()
    return list(history.events)


async def _reset(
    client: Client, execution: Execution, point: ResetPoint, dry_run: bool, reason: str
) -> RetryItem:
    events = await _history(client, execution)
    completed = [
        e.event_id for e in events if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED
    ]
    if not completed:
        raise RetryRefused(
            f"workflow {execution.id} never completed a workflow task: nothing to reset to; "
            "use --mode restart"
        )
    event_id = completed[-1] if point == "last" else completed[0]
    new_run: str | None = None
    if not dry_run:
        async with rpc_errors(f"reset of {execution.id}", workflow_id=execution.id):
            answer = await client.workflow_service.reset_workflow_execution(
                ResetWorkflowExecutionRequest(
                    namespace=client.namespace,
                    workflow_execution=WorkflowExecution(
                        workflow_id=execution.id, run_id=execution.run_id
                    ),
                    reason=reason,
                    workflow_task_finish_event_id=event_id,
                    request_id=str(uuid.uuid4()),
                )
            )
        new_run = answer.run_id
    return RetryItem(
        workflow_id=execution.id,
        run_id=execution.run_id,
        workflow_type=execution.workflow_type,
        status=execution.status,
        action=f"reset to event {event_id} ({point} workflow task)",
        new_run_id=new_run,
    )


async def _restart(client: Client, execution: Execution, dry_run: bool) -> RetryItem:
    events = await _history(client, execution)
    first = events[0].workflow_execution_started_event_attributes
    new_run: str | None = None
    if not dry_run:
        # The recorded payloads go back as they are (still codec-encoded): the same input.
        async with rpc_errors(f"restart of {execution.id}", workflow_id=execution.id):
            answer = await client.workflow_service.start_workflow_execution(
                StartWorkflowExecutionRequest(
                    namespace=client.namespace,
                    workflow_id=execution.id,
                    workflow_type=first.workflow_type,
                    task_queue=first.task_queue,
                    input=first.input,
                    workflow_execution_timeout=first.workflow_execution_timeout,
                    workflow_run_timeout=first.workflow_run_timeout,
                    workflow_task_timeout=first.workflow_task_timeout,
                    identity=client.identity,
                    request_id=str(uuid.uuid4()),
                    workflow_id_reuse_policy=WorkflowIdReusePolicy.WORKFLOW_ID_REUSE_POLICY_ALLOW_DUPLICATE,
                    retry_policy=first.retry_policy if first.HasField("retry_policy") else None,
                    memo=first.memo if first.HasField("memo") else None,
                    search_attributes=first.search_attributes
                    if first.HasField("search_attributes")
                    else None,
                    header=first.header if first.HasField("header") else None,
                )
            )
        new_run = answer.run_id
    return RetryItem(
        workflow_id=execution.id,
        run_id=execution.run_id,
        workflow_type=execution.workflow_type,
        status=execution.status,
        action=f"restart on task queue {first.task_queue.name} with the recorded input",
        new_run_id=new_run,
    )


# --- plumbing -------------------------------------------------------------------------


@asynccontextmanager
async def rpc_errors(
    what: str, *, workflow_id: str | None = None, query: str | None = None
) -> AsyncIterator[None]:
    """Turns Temporal RPC errors into domain errors with one-line messages."""
    try:
        yield
    except RPCError as err:
        message = " ".join(err.message.split())
        if err.status == RPCStatusCode.NOT_FOUND and workflow_id is not None:
            raise UnknownWorkflow(
                f"no workflow {workflow_id} (unknown, or past retention)"
            ) from None
        if err.status == RPCStatusCode.INVALID_ARGUMENT and query is not None:
            raise InvalidInput(
                f"the server refused the visibility query {query!r}: {message}"
            ) from None
        if err.status in _TRANSIENT:
            raise ProviderUnavailable(f"{what}: Temporal did not answer: {message}") from None
        raise PermanentError(f"{what}: {err.status.name}: {message}") from None


async def _gather(factories: list[Callable[[], Awaitable[T]]], concurrency: int) -> list[T]:
    """Runs the awaitables at most ``concurrency`` at a time, results in order."""
    gate = asyncio.Semaphore(max(1, concurrency))

    async def run(factory: Callable[[], Awaitable[T]]) -> T:
        async with gate:
            return await factory()

    return list(await asyncio.gather(*(run(f) for f in factories)))


def _count(values: Iterable[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _status_name(status: WorkflowExecutionStatus | None) -> str:
    names = {
        WorkflowExecutionStatus.RUNNING: "Running",
        WorkflowExecutionStatus.COMPLETED: "Completed",
        WorkflowExecutionStatus.FAILED: "Failed",
        WorkflowExecutionStatus.CANCELED: "Canceled",
        WorkflowExecutionStatus.TERMINATED: "Terminated",
        WorkflowExecutionStatus.CONTINUED_AS_NEW: "ContinuedAsNew",
        WorkflowExecutionStatus.TIMED_OUT: "TimedOut",
    }
    return names.get(status, "Unknown") if status is not None else "Unknown"


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


def parse_duration(text: str) -> timedelta:
    """``90s``, ``15m``, ``1h``, ``7d`` as a timedelta.

    Raises:
        InvalidInput: naming the text.
    """
    match = re.fullmatch(r"\s*(\d+)\s*([smhd])\s*", text)
    if not match:
        raise InvalidInput(f"--since {text!r}: give a number and s, m, h or d (say 1h)")
    amount, unit = int(match.group(1)), match.group(2)
    seconds = {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit]
    if amount <= 0:
        raise InvalidInput(f"--since {text!r} must be positive")
    return timedelta(seconds=amount * seconds)
