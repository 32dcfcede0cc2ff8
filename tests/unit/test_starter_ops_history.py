"""What the ops tools share: durations, counts, status names, quoting, RPC errors, causes."""

from __future__ import annotations

import asyncio
import re
from datetime import timedelta
from functools import partial
from types import SimpleNamespace
from typing import cast

import pytest
from temporalio.api.failure.v1 import Failure
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.converter import DataConverter
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    ChildWorkflowError,
    RetryState,
    TimeoutError,
    TimeoutType,
)
from temporalio.service import RPCError, RPCStatusCode

from missive.errors import InvalidInput, PermanentError, ProviderUnavailable
from starter.ops import UnknownWorkflow, parse_duration, rpc_errors
from starter.ops._history import count, gather, quote, root_cause, status_name

pytestmark = pytest.mark.unit


def exactly(message: str) -> str:
    """A ``match`` pattern for exactly this message."""
    return f"^{re.escape(message)}$"


# --- parse_duration ---


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", timedelta(seconds=90)),
        ("15m", timedelta(minutes=15)),
        ("1h", timedelta(hours=1)),
        ("7d", timedelta(days=7)),
        (" 2 h ", timedelta(hours=2)),
    ],
)
def test_durations(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "1", "h", "1.5h", "-1h", "1w", "1H", "1h30m", "1 hour"])
def test_a_malformed_duration_names_itself_and_the_units(text: str) -> None:
    with pytest.raises(
        InvalidInput, match=exactly(f"--since {text!r}: give a number and s, m, h or d (say 1h)")
    ):
        parse_duration(text)


def test_a_zero_duration_is_refused() -> None:
    with pytest.raises(InvalidInput, match=exactly("--since '0m' must be positive")):
        parse_duration("0m")


# --- count, status_name, quote ---


def test_count_puts_the_most_frequent_first_then_by_name() -> None:
    counted = count(["b", "a", "c", "b", "c", "b"])
    assert counted == {"b": 3, "c": 2, "a": 1}
    assert list(counted) == ["b", "c", "a"]
    assert list(count(["z", "y", "x"])) == ["x", "y", "z"]
    assert count([]) == {}


@pytest.mark.parametrize(
    ("status", "name"),
    [
        (WorkflowExecutionStatus.RUNNING, "Running"),
        (WorkflowExecutionStatus.COMPLETED, "Completed"),
        (WorkflowExecutionStatus.FAILED, "Failed"),
        (WorkflowExecutionStatus.CANCELED, "Canceled"),
        (WorkflowExecutionStatus.TERMINATED, "Terminated"),
        (WorkflowExecutionStatus.CONTINUED_AS_NEW, "ContinuedAsNew"),
        (WorkflowExecutionStatus.TIMED_OUT, "TimedOut"),
        (None, "Unknown"),
    ],
)
def test_status_names_are_spelled_as_visibility_queries_spell_them(
    status: WorkflowExecutionStatus | None, name: str
) -> None:
    assert status_name(status) == name


def test_every_status_has_a_name() -> None:
    assert "Unknown" not in {status_name(s) for s in WorkflowExecutionStatus}


def test_quote_escapes_backslashes_then_quotes() -> None:
    assert quote("plain") == "plain"
    assert quote("it's") == "it\\'s"
    assert quote("a\\b") == "a\\\\b"
    # A trailing backslash cannot escape the closing quote.
    assert quote("x\\") == "x\\\\"
    assert quote("\\'") == "\\\\\\'"


# --- rpc_errors ---


def rpc(status: RPCStatusCode, message: str = "went  wrong\n here") -> RPCError:
    return RPCError(message, status, b"")


async def test_not_found_is_an_unknown_workflow_when_one_is_named() -> None:
    with pytest.raises(
        UnknownWorkflow, match=exactly("no workflow batch-7 (unknown, or past retention)")
    ):
        async with rpc_errors("describe batch-7", workflow_id="batch-7"):
            raise rpc(RPCStatusCode.NOT_FOUND)
    with pytest.raises(PermanentError, match=exactly("list: NOT_FOUND: went wrong here")):
        async with rpc_errors("list"):
            raise rpc(RPCStatusCode.NOT_FOUND)


async def test_an_invalid_argument_names_the_refused_query() -> None:
    with pytest.raises(
        InvalidInput,
        match=exactly(
            'the server refused the visibility query "WorkflowType = \'x": went wrong here'
        ),
    ):
        async with rpc_errors("visibility query", query="WorkflowType = 'x"):
            raise rpc(RPCStatusCode.INVALID_ARGUMENT)


@pytest.mark.parametrize(
    "status",
    [
        RPCStatusCode.UNAVAILABLE,
        RPCStatusCode.DEADLINE_EXCEEDED,
        RPCStatusCode.RESOURCE_EXHAUSTED,
        RPCStatusCode.CANCELLED,
    ],
)
async def test_transient_statuses_are_unavailable(status: RPCStatusCode) -> None:
    with pytest.raises(
        ProviderUnavailable, match=exactly("reset of w: Temporal did not answer: went wrong here")
    ):
        async with rpc_errors("reset of w", workflow_id="w"):
            raise rpc(status)


async def test_anything_else_is_permanent_naming_the_status() -> None:
    with pytest.raises(PermanentError) as info:
        async with rpc_errors("reset of w", workflow_id="w", query="q"):
            raise rpc(RPCStatusCode.PERMISSION_DENIED, "no")
    assert type(info.value) is PermanentError
    assert str(info.value) == "reset of w: PERMISSION_DENIED: no"


async def test_other_errors_and_success_pass_through() -> None:
    async with rpc_errors("fine"):
        pass
    with pytest.raises(KeyError):
        async with rpc_errors("bug"):
            raise KeyError("x")


# --- root_cause ---


def converter_client() -> Client:
    return cast(Client, SimpleNamespace(data_converter=DataConverter.default))


async def encoded(error: BaseException) -> Failure:
    failure = Failure()
    await DataConverter.default.encode_failure(error, failure)
    return failure


def activity_error(activity_type: str) -> ActivityError:
    return ActivityError(
        "activity task failed",
        scheduled_event_id=5,
        started_event_id=6,
        identity="worker",
        activity_type=activity_type,
        activity_id="1",
        retry_state=RetryState.MAXIMUM_ATTEMPTS_REACHED,
    )


async def test_the_deepest_application_error_is_the_cause_and_the_outer_activity_named() -> None:
    outer = activity_error("deliver")
    middle = ApplicationError("wrapper", type="Wrapped")
    middle.__cause__ = ApplicationError("the real\nreason", type="ProviderUnavailable")
    outer.__cause__ = middle
    assert await root_cause(converter_client(), await encoded(outer)) == (
        "ProviderUnavailable",
        "the real reason",
        "deliver",
    )


async def test_a_timeout_is_named_by_its_kind() -> None:
    outer = activity_error("send_push")
    outer.__cause__ = TimeoutError(
        "activity StartToClose timeout", type=TimeoutType.START_TO_CLOSE, last_heartbeat_details=[]
    )
    assert await root_cause(converter_client(), await encoded(outer)) == (
        "TimeoutError",
        "activity StartToClose timeout",
        "send_push",
    )


async def test_a_child_workflow_is_looked_through() -> None:
    child = ChildWorkflowError(
        "child workflow failed",
        namespace="missive",
        workflow_id="notify-message-1",
        run_id="r",
        workflow_type="NotifyMessageWorkflow",
        initiated_event_id=3,
        started_event_id=4,
        retry_state=RetryState.NON_RETRYABLE_FAILURE,
    )
    inner = activity_error("plan_notifications")
    inner.__cause__ = ApplicationError("no such user", type="UserNotFound")
    child.__cause__ = inner
    assert await root_cause(converter_client(), await encoded(child)) == (
        "UserNotFound",
        "no such user",
        "plan_notifications",
    )


async def test_a_plain_exception_is_named_by_its_class() -> None:
    assert await root_cause(converter_client(), await encoded(ValueError("bug"))) == (
        "ValueError",
        "bug",
        None,
    )


async def test_a_failure_of_no_known_kind_is_named_by_the_base_class() -> None:
    # (Its message is whatever the SDK writes for an empty one.)
    error_type, _, activity = await root_cause(converter_client(), Failure())
    assert (error_type, activity) == ("FailureError", None)


# --- gather ---


async def test_gather_keeps_order_and_the_concurrency_limit() -> None:
    running = peak = 0

    async def job(value: int) -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.001 * (5 - value))  # later jobs finish first
        running -= 1
        return value * 10

    assert await gather([partial(job, v) for v in range(5)], 2) == [0, 10, 20, 30, 40]
    assert peak == 2
    peak = 0
    assert await gather([lambda: job(1)], 0) == [10]  # at least one at a time
    assert await gather([], 4) == []
