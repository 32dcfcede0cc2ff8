"""``starter failures``: recent failed workflows grouped by type and root cause."""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from temporalio.api.enums.v1 import (
    EventType,
)
from temporalio.client import Client

from starter.ops._history import (
    DEFAULT_CONCURRENCY,
    Execution,
    close_event,
    count,
    gather,
    list_executions,
    quote,
    root_cause,
)

EXAMPLES_PER_GROUP = 3
"""Example workflow ids listed per failure group."""

FAILED_STATUSES = ("Failed", "TimedOut", "Terminated")
"""The visibility ExecutionStatus values failure analysis and retry look at."""

_VARIABLE = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|\b\d+\b"
)


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
        query += f" AND WorkflowType = '{quote(workflow_type)}'"
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
    causes = await gather(
        [lambda e=e: failure_cause(client, e) for e in executions],  # type: ignore[misc]
        concurrency,
    )
    return FailureReport(
        query=query,
        total=len(causes),
        by_type=count(c.workflow_type for c in causes),
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


async def failure_cause(client: Client, execution: Execution) -> FailureCause:
    """Reads one closed workflow's close event and decodes its failure.

    Raises:
        UnknownWorkflow: the run is gone (past retention).
    """
    event = await close_event(client, execution.id, execution.run_id)
    close_time = event.event_time.ToDatetime(tzinfo=UTC) if event.HasField("event_time") else None
    activity: str | None = None
    if event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED:
        error_type, message, activity = await root_cause(
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
