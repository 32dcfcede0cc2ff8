"""runtime.messaging.started_here: whether a lifecycle's first workflow task came with its start."""

from __future__ import annotations

from temporalio.api.workflowservice.v1 import (
    PollWorkflowTaskQueueResponse,
    StartWorkflowExecutionResponse,
)
from temporalio.client import Client, WorkflowHandle

from runtime.messaging import started_here


def handle(response: StartWorkflowExecutionResponse | None) -> WorkflowHandle:  # type: ignore[type-arg]
    return WorkflowHandle(Client.__new__(Client), "message-1", start_workflow_response=response)


def test_an_eager_start_is_acked_by_this_process_and_others_ask_the_workflow() -> None:
    eager = StartWorkflowExecutionResponse(
        run_id="r", started=True, eager_workflow_task=PollWorkflowTaskQueueResponse()
    )
    assert started_here(handle(eager))
    assert not started_here(handle(StartWorkflowExecutionResponse(run_id="r", started=True)))
    assert not started_here(handle(None))
