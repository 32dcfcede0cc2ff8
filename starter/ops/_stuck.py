"""``starter stuck``: activities that keep failing and notification rows left open."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy.exc import SQLAlchemyError
from temporalio.client import Client

from missive.config import Settings
from missive.db import create_engine, describe, session_factory
from missive.errors import InvalidInput, ProviderUnavailable
from missive.notify.log import NotificationLog, OverdueSummary
from starter.ops._history import (
    DEFAULT_CONCURRENCY,
    Execution,
    UnknownWorkflow,
    gather,
    list_executions,
    root_cause,
    rpc_errors,
)


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
                error_type, message, _ = await root_cause(client, pending.last_failure)
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

    found = await gather([lambda e=e: one(e) for e in running], concurrency)  # type: ignore[misc]
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
