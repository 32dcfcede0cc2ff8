"""``starter failures``: causes read from close events, grouped by type and message pattern."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any, cast

import pytest
from temporalio.api.enums.v1 import EventType, HistoryEventFilterType
from temporalio.api.failure.v1 import Failure
from temporalio.api.history.v1 import HistoryEvent
from temporalio.api.workflowservice.v1 import (
    GetWorkflowExecutionHistoryRequest,
    GetWorkflowExecutionHistoryResponse,
)
from temporalio.client import Client
from temporalio.converter import DataConverter
from temporalio.exceptions import ActivityError, ApplicationError, RetryState
from temporalio.service import RPCError, RPCStatusCode

from starter.ops import (
    Execution,
    FailureCause,
    FailureGroup,
    RetryRefused,
    UnknownWorkflow,
    failure_cause,
    failures_query,
    group_failures,
)

pytestmark = pytest.mark.unit

U1 = "0b9f5a3e-1d2c-4e8b-a6f7-3c4d5e6f7a81"
U2 = "9e2d7c4b-5a6f-4b3e-8d1c-2f3a4b5c6d7e"
CLOSED = datetime(2026, 1, 10, 12, 0, tzinfo=UTC)


def cause(
    workflow_id: str,
    message: str,
    *,
    workflow_type: str = "MessageLifecycleWorkflow",
    status: str = "Failed",
    error_type: str = "InvalidRecipient",
    activity_type: str | None = "store_message",
) -> FailureCause:
    return FailureCause(
        workflow_id=workflow_id,
        run_id=f"run-{workflow_id}",
        workflow_type=workflow_type,
        status=status,
        error_type=error_type,
        message=message,
        activity_type=activity_type,
        close_time=None,
    )


# --- group_failures ---


def test_ids_and_numbers_are_masked_so_alike_failures_group() -> None:
    groups = group_failures(
        [
            cause("w1", f"user {U1} is not in conversation {U2}"),
            cause("w2", f"user {U2} is not in conversation {U1}"),
            cause("w3", "attempt 3 of 10 failed"),
            cause("w4", "attempt 7 of 10 failed"),
        ],
        examples=3,
    )
    assert [(g.pattern, g.count, g.example_ids) for g in groups] == [
        ("attempt <n> of <n> failed", 2, ["w3", "w4"]),
        ("user <id> is not in conversation <id>", 2, ["w1", "w2"]),
    ]
    # The example message is a real one: the first of its group.
    assert groups[1].example_message == f"user {U1} is not in conversation {U2}"


def test_a_group_keeps_every_key_of_its_members() -> None:
    [group] = group_failures(
        [cause("w1", "boom", workflow_type="BatchWorkflow", status="TimedOut", error_type="X")],
        examples=3,
    )
    assert group == FailureGroup(
        workflow_type="BatchWorkflow",
        status="TimedOut",
        error_type="X",
        activity_type="store_message",
        pattern="boom",
        count=1,
        example_message="boom",
        example_ids=["w1"],
    )


@pytest.mark.parametrize(
    "other",
    [
        {"workflow_type": "ReceiptWorkflow"},
        {"status": "Terminated"},
        {"error_type": "DecryptionFailed"},
        {"activity_type": None},
        {"activity_type": "send_push"},
    ],
    ids=["type", "status", "error", "no-activity", "activity"],
)
def test_any_other_key_makes_another_group(other: dict[str, Any]) -> None:
    groups = group_failures([cause("w1", "boom"), cause("w2", "boom", **other)], examples=3)
    assert [g.count for g in groups] == [1, 1]


def test_groups_come_largest_first_then_by_type_error_and_pattern() -> None:
    causes = [
        cause("a1", "zeta", workflow_type="B"),
        cause("b1", "alpha", workflow_type="B"),
        cause("c1", "late", workflow_type="A", error_type="Z"),
        cause("d1", "late", workflow_type="A", error_type="Y"),
        cause("e1", "many"),
        cause("e2", "many"),
        cause("e3", "many"),
    ]
    groups = group_failures(causes, examples=1)
    assert [(g.workflow_type, g.error_type, g.pattern, g.count) for g in groups] == [
        ("MessageLifecycleWorkflow", "InvalidRecipient", "many", 3),
        ("A", "Y", "late", 1),
        ("A", "Z", "late", 1),
        ("B", "InvalidRecipient", "alpha", 1),
        ("B", "InvalidRecipient", "zeta", 1),
    ]
    assert groups[0].example_ids == ["e1"]  # examples=1


def test_examples_are_capped_and_zero_lists_none() -> None:
    causes = [cause(f"w{i}", f"timeout after {i} seconds") for i in range(10)]
    [group] = group_failures(causes, examples=3)
    assert group.pattern == "timeout after <n> seconds"
    assert group.count == 10 and group.example_ids == ["w0", "w1", "w2"]
    [none] = group_failures(causes, examples=0)
    assert none.example_ids == []


def test_digits_inside_words_are_kept() -> None:
    # v2 and 3xx are names, not counts (so is 30s: a unit glued on keeps the number);
    # a hyphenated number is still a number.
    [group] = group_failures([cause("w1", "v2 api answered 3xx for message-12 in 30s")], examples=1)
    assert group.pattern == "v2 api answered 3xx for message-<n> in 30s"


def test_no_causes_no_groups() -> None:
    assert group_failures([], examples=3) == []


# --- failures_query ---


def test_the_query_looks_at_failed_timed_out_and_terminated_since_a_time() -> None:
    query = failures_query(since=timedelta(hours=1))
    match = re.fullmatch(
        r"ExecutionStatus IN \('Failed', 'TimedOut', 'Terminated'\) AND CloseTime > '(.+)'", query
    )
    assert match is not None
    after = datetime.strptime(match.group(1), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    expected = datetime.now(UTC) - timedelta(hours=1)
    assert abs(after - expected) < timedelta(seconds=5)


def test_the_query_quotes_the_type_and_brackets_the_extra_clause() -> None:
    query = failures_query(
        since=timedelta(days=1),
        workflow_type="It's\\Type",
        extra="WorkflowId STARTS_WITH 'message-' OR WorkflowId = 'x'",
    )
    assert query.endswith(
        " AND WorkflowType = 'It\\'s\\\\Type'"
        " AND (WorkflowId STARTS_WITH 'message-' OR WorkflowId = 'x')"
    )


# --- failure_cause, over a recorded history service ---


class History:
    """The one RPC failure_cause makes, answered with a fixed close event."""

    def __init__(self, events: list[HistoryEvent], error: RPCError | None = None) -> None:
        self.events = events
        self.error = error
        self.requests: list[GetWorkflowExecutionHistoryRequest] = []

    async def get_workflow_execution_history(
        self, request: GetWorkflowExecutionHistoryRequest
    ) -> GetWorkflowExecutionHistoryResponse:
        self.requests.append(request)
        if self.error is not None:
            raise self.error
        answer = GetWorkflowExecutionHistoryResponse()
        answer.history.events.extend(self.events)
        return answer


def client_of(history: History) -> Client:
    fake = SimpleNamespace(
        namespace="missive", workflow_service=history, data_converter=DataConverter.default
    )
    return cast(Client, fake)


EXECUTION = Execution(
    id="message-1",
    run_id="run-1",
    workflow_type="MessageLifecycleWorkflow",
    status="Failed",
    task_queue="missive-messages",
)


def close(event_type: EventType.ValueType, *, at: datetime | None = CLOSED) -> HistoryEvent:
    event = HistoryEvent(event_id=9, event_type=event_type)
    if at is not None:
        event.event_time.FromDatetime(at)
    return event


async def test_a_failed_workflow_is_read_to_its_root_cause() -> None:
    activity = ActivityError(
        "activity task failed",
        scheduled_event_id=5,
        started_event_id=6,
        identity="worker",
        activity_type="store_message",
        activity_id="1",
        retry_state=RetryState.NON_RETRYABLE_FAILURE,
    )
    activity.__cause__ = ApplicationError(
        f"user {U1}\n  is not a member", type="NotAMember", non_retryable=True
    )
    failure = Failure()
    await DataConverter.default.encode_failure(activity, failure)
    event = close(EventType.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED)
    event.workflow_execution_failed_event_attributes.failure.CopyFrom(failure)
    history = History([event])

    found = await failure_cause(client_of(history), EXECUTION)

    assert found == FailureCause(
        workflow_id="message-1",
        run_id="run-1",
        workflow_type="MessageLifecycleWorkflow",
        status="Failed",
        error_type="NotAMember",
        message=f"user {U1} is not a member",  # whitespace folded to one line
        activity_type="store_message",
        close_time=CLOSED,
    )
    [request] = history.requests
    assert request.namespace == "missive"
    assert (request.execution.workflow_id, request.execution.run_id) == ("message-1", "run-1")
    assert request.history_event_filter_type == (
        HistoryEventFilterType.HISTORY_EVENT_FILTER_TYPE_CLOSE_EVENT
    )


@pytest.mark.parametrize(
    ("event", "error_type", "message"),
    [
        (close(EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TERMINATED), "Terminated", "terminated"),
        (
            close(EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TIMED_OUT),
            "WorkflowTimedOut",
            "the workflow's execution or run timeout elapsed",
        ),
        (
            close(EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED),
            "EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED",
            "closed without a failure",
        ),
    ],
    ids=["terminated", "timed-out", "completed"],
)
async def test_other_close_events(event: HistoryEvent, error_type: str, message: str) -> None:
    found = await failure_cause(client_of(History([event])), EXECUTION)
    assert (found.error_type, found.message, found.activity_type) == (error_type, message, None)
    assert found.close_time == CLOSED


async def test_a_termination_reason_is_its_message_and_a_missing_time_is_none() -> None:
    event = close(EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TERMINATED, at=None)
    event.workflow_execution_terminated_event_attributes.reason = "stuck since the outage"
    found = await failure_cause(client_of(History([event])), EXECUTION)
    assert (found.message, found.close_time) == ("stuck since the outage", None)


async def test_a_run_without_a_close_event_has_not_closed() -> None:
    with pytest.raises(RetryRefused, match=r"^workflow message-1 has not closed$"):
        await failure_cause(client_of(History([])), EXECUTION)


async def test_a_run_past_retention_is_unknown() -> None:
    gone = History([], RPCError("workflow not found", RPCStatusCode.NOT_FOUND, b""))
    with pytest.raises(
        UnknownWorkflow, match=r"^no workflow message-1 \(unknown, or past retention\)$"
    ):
        await failure_cause(client_of(gone), EXECUTION)
