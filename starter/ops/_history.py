"""What the ops tools share: visibility lists, history reads, failure chains, RPC errors."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.enums.v1 import (
    HistoryEventFilterType,
)
from temporalio.api.failure.v1 import Failure
from temporalio.api.history.v1 import HistoryEvent
from temporalio.api.workflowservice.v1 import (
    GetWorkflowExecutionHistoryRequest,
)
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.exceptions import ActivityError, ApplicationError, ChildWorkflowError, FailureError
from temporalio.service import RPCError, RPCStatusCode

from missive.errors import InvalidInput, PermanentError, ProviderUnavailable

DEFAULT_CONCURRENCY = 32
"""History reads, describes and resets in flight at once."""

_TRANSIENT = frozenset(
    {
        RPCStatusCode.UNAVAILABLE,
        RPCStatusCode.DEADLINE_EXCEEDED,
        RPCStatusCode.RESOURCE_EXHAUSTED,
        RPCStatusCode.CANCELLED,
    }
)

T = TypeVar("T")


class UnknownWorkflow(PermanentError):
    """No workflow with that id (or it is past retention)."""


class RetryRefused(PermanentError):
    """The workflow cannot be retried as asked (it runs, or has no point to reset to)."""


class NothingMatched(PermanentError):
    """A visibility query matched no workflow."""


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
                    status=status_name(wf.status),
                    task_queue=wf.task_queue,
                )
            )
    return found


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


async def fetch_events(client: Client, execution: Execution) -> list[HistoryEvent]:
    """Every event of one run, in order."""
    handle = client.get_workflow_handle(execution.id, run_id=execution.run_id)
    async with rpc_errors(f"history of {execution.id}", workflow_id=execution.id):
        history = await handle.fetch_history()
    return list(history.events)


async def root_cause(client: Client, failure: Failure) -> tuple[str, str, str | None]:
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


async def gather(factories: list[Callable[[], Awaitable[T]]], concurrency: int) -> list[T]:
    """Runs the awaitables at most ``concurrency`` at a time, results in order."""
    gate = asyncio.Semaphore(max(1, concurrency))

    async def run(factory: Callable[[], Awaitable[T]]) -> T:
        async with gate:
            return await factory()

    return list(await asyncio.gather(*(run(f) for f in factories)))


def count(values: Iterable[str]) -> dict[str, int]:
    """How often each value occurs, the most frequent first."""
    counts: dict[str, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def status_name(status: WorkflowExecutionStatus | None) -> str:
    """The status as visibility queries spell it (``TimedOut``, ``ContinuedAsNew``)."""
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


def quote(value: str) -> str:
    """A value escaped for a single-quoted visibility query string."""
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
