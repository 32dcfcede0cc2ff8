"""``starter retry``: re-runs closed workflows by reset or by restart."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Literal

from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.enums.v1 import (
    EventType,
    WorkflowIdReusePolicy,
)
from temporalio.api.workflowservice.v1 import (
    ResetWorkflowExecutionRequest,
    StartWorkflowExecutionRequest,
)
from temporalio.client import Client

from missive.errors import InvalidInput
from starter.ops._history import (
    DEFAULT_CONCURRENCY,
    Execution,
    NothingMatched,
    RetryRefused,
    fetch_events,
    gather,
    list_executions,
    rpc_errors,
    status_name,
)

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
            status=status_name(described.status),
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

    items = await gather([lambda e=e: one(e) for e in executions], concurrency)  # type: ignore[misc]
    if workflow_id is None and not any(i.skipped is None for i in items):
        raise NothingMatched(
            f"the query matched {len(items)} workflow(s), all still running: nothing to retry"
        )
    return RetryReport(dry_run=dry_run, mode=mode, items=list(items))


async def _reset(
    client: Client, execution: Execution, point: ResetPoint, dry_run: bool, reason: str
) -> RetryItem:
    events = await fetch_events(client, execution)
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
    events = await fetch_events(client, execution)
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
