"""Health, failure analysis, stuck activities and retry against the Temporal dev server."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from temporalio import activity, workflow
from temporalio.client import Client, WorkflowFailureError
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from missive.config import Settings
from missive.constants import TASK_QUEUE_PUSH
from missive.errors import InvalidInput
from starter import ops
from tests.conftest import process_env

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")

HEALED: set[str] = set()
"""Workflow ids whose activity succeeds from now on (a fix made by the operator)."""


@activity.defn(name="ops_test_charge")
async def charge(order_id: str) -> str:
    """Fails for good with an id in its message until the order is healed."""
    if activity.info().workflow_id in HEALED:
        return f"charged {order_id}"
    raise ApplicationError(
        f"card declined for order {order_id} (attempt 1)", type="CardDeclined", non_retryable=True
    )


@activity.defn(name="ops_test_flaky")
async def flaky(order_id: str) -> str:
    """Fails every attempt, retryably."""
    raise ApplicationError(f"ledger unavailable for {order_id}", type="LedgerDown")


@workflow.defn(name="OpsTestOrder")
class OrderWorkflow:
    """Charges an order; fails when the charge is declined."""

    @workflow.run
    async def run(self, order_id: str) -> str:
        return await workflow.execute_activity(
            charge,
            order_id,
            start_to_close_timeout=timedelta(seconds=10),
            retry_policy=RetryPolicy(maximum_attempts=1),
        )


@workflow.defn(name="OpsTestStuck")
class StuckWorkflow:
    """Retries a failing activity every second, for ever."""

    @workflow.run
    async def run(self, order_id: str) -> str:
        return await workflow.execute_activity(
            flaky,
            order_id,
            start_to_close_timeout=timedelta(seconds=10),
            retry_policy=RetryPolicy(
                initial_interval=timedelta(milliseconds=200), backoff_coefficient=1.0
            ),
        )


@pytest.fixture
async def worker(dev_env: WorkflowEnvironment, task_queue: str) -> AsyncIterator[Worker]:
    async with Worker(
        dev_env.client,
        task_queue=task_queue,
        workflows=[OrderWorkflow, StuckWorkflow],
        activities=[charge, flaky],
        workflow_runner=UnsandboxedWorkflowRunner(),
    ) as running:
        yield running


async def eventually(check: Callable[[], Awaitable[T | None]], *, seconds: float = 30) -> T:
    """The first truthy answer of ``check``, polled (visibility lags a little)."""
    async with asyncio.timeout(seconds):
        while True:
            if answer := await check():
                return answer
            await asyncio.sleep(0.3)


async def _failed_orders(client: Client, task_queue: str, n: int) -> tuple[str, list[str]]:
    """Runs n orders that fail; returns their id prefix and workflow ids."""
    prefix = f"opsorder-{uuid.uuid4().hex[:10]}"
    ids = []
    for _ in range(n):
        order = str(uuid.uuid4())
        ids.append(f"{prefix}-{order}")
        with pytest.raises(WorkflowFailureError):
            await client.execute_workflow(
                OrderWorkflow.run, order, id=ids[-1], task_queue=task_queue
            )
    return prefix, ids


async def test_failures_are_grouped_by_type_and_cause_with_decoded_messages(
    dev_env: WorkflowEnvironment, worker: Worker, task_queue: str
) -> None:
    client = dev_env.client
    prefix, ids = await _failed_orders(client, task_queue, 3)
    stuck_id = f"{prefix}-terminated"
    handle = await client.start_workflow(StuckWorkflow.run, "t", id=stuck_id, task_queue=task_queue)
    await handle.terminate(reason="operator gave up")
    clause = f"WorkflowId STARTS_WITH '{prefix}'"

    async def four() -> ops.FailureReport | None:
        report = await ops.failures(client, since=timedelta(minutes=10), extra_query=clause)
        return report if report.total == 4 else None

    report = await eventually(four)

    assert report.by_type == {"OpsTestOrder": 3, "OpsTestStuck": 1}
    first, second = report.groups
    assert (first.workflow_type, first.status, first.error_type, first.activity_type) == (
        "OpsTestOrder",
        "Failed",
        "CardDeclined",
        "ops_test_charge",
    )
    assert first.count == 3
    # The message was codec-encoded in history; it is decoded, and ids fold into one pattern.
    assert first.pattern == "card declined for order <id> (attempt <n>)"
    assert first.example_message.startswith("card declined for order ")
    assert set(first.example_ids) == set(ids)
    assert (second.status, second.error_type, second.pattern, second.example_ids) == (
        "Terminated",
        "Terminated",
        "operator gave up",
        [stuck_id],
    )
    only_orders = await ops.failures(
        client, since=timedelta(minutes=10), workflow_type="OpsTestOrder", extra_query=clause
    )
    assert only_orders.total == 3


async def test_stuck_lists_retrying_activities_with_their_last_failure(
    dev_env: WorkflowEnvironment, worker: Worker, task_queue: str
) -> None:
    client = dev_env.client
    workflow_id = f"opsstuck-{uuid.uuid4()}"
    handle = await client.start_workflow(
        StuckWorkflow.run, "o-7", id=workflow_id, task_queue=task_queue
    )
    try:

        async def retrying() -> list[ops.StuckActivity]:
            return await ops.stuck(
                client, min_attempts=3, extra_query=f"WorkflowId = '{workflow_id}'"
            )

        [found] = await eventually(retrying)
        assert (found.workflow_id, found.workflow_type, found.activity_type) == (
            workflow_id,
            "OpsTestStuck",
            "ops_test_flaky",
        )
        assert found.attempt >= 3
        assert (found.error_type, found.message) == ("LedgerDown", "ledger unavailable for o-7")
        assert (
            await ops.stuck(
                client, min_attempts=10_000, extra_query=f"WorkflowId = '{workflow_id}'"
            )
            == []
        )
    finally:
        await handle.terminate(reason="test over")


async def test_retry_by_reset_and_by_restart_reruns_the_failed_workflow(
    dev_env: WorkflowEnvironment, worker: Worker, task_queue: str
) -> None:
    client = dev_env.client
    _, (reset_id, restart_id) = await _failed_orders(client, task_queue, 2)

    dry = await ops.retry(client, workflow_id=reset_id, mode="reset", dry_run=True)
    assert dry.dry_run and dry.retried == 1
    [item] = dry.items
    assert (item.status, item.new_run_id) == ("Failed", None)
    assert item.action.startswith("reset to event ")
    assert (await client.get_workflow_handle(reset_id).describe()).run_id == item.run_id

    HEALED.update({reset_id, restart_id})
    done = await ops.retry(client, workflow_id=reset_id, mode="reset", reset_point="first")
    [item] = done.items
    assert item.new_run_id and item.new_run_id != item.run_id
    assert await client.get_workflow_handle(reset_id).result() == (f"charged {reset_id[-36:]}")

    done = await ops.retry(
        client, query=f"WorkflowId = '{restart_id}' AND ExecutionStatus = 'Failed'", mode="restart"
    )
    [item] = done.items
    assert item.action.startswith(f"restart on task queue {task_queue}")
    # The same input, read back from the first event, still codec-encoded.
    assert await client.get_workflow_handle(restart_id, run_id=item.new_run_id).result() == (
        f"charged {restart_id[-36:]}"
    )


async def test_retry_refuses_running_unknown_and_unmatched_and_bad_queries(
    dev_env: WorkflowEnvironment, worker: Worker, task_queue: str
) -> None:
    client = dev_env.client
    running_id = f"opsstuck-{uuid.uuid4()}"
    handle = await client.start_workflow(
        StuckWorkflow.run, "r", id=running_id, task_queue=task_queue
    )
    try:
        with pytest.raises(ops.RetryRefused, match=f"workflow {running_id} is running"):
            await ops.retry(client, workflow_id=running_id)
    finally:
        await handle.terminate(reason="test over")
    with pytest.raises(ops.UnknownWorkflow, match="no workflow nope-"):
        await ops.retry(client, workflow_id=f"nope-{uuid.uuid4()}")
    with pytest.raises(ops.NothingMatched, match="no workflow matches the query"):
        await ops.retry(client, query=f"WorkflowId = 'nope-{uuid.uuid4()}'")
    with pytest.raises(InvalidInput, match="the server refused the visibility query"):
        await ops.retry(client, query="WorkflowId = ")
    with pytest.raises(InvalidInput, match="exactly one"):
        await ops.retry(client)


async def test_health_reports_pollers_backlog_and_the_database(
    dev_env: WorkflowEnvironment, worker: Worker, task_queue: str, settings: Settings
) -> None:
    client = dev_env.client
    idle = f"tq-idle-{uuid.uuid4().hex}"

    async def polled() -> ops.HealthReport | None:
        report = await ops.health(client, settings, queues=[task_queue])
        return report if report.healthy else None

    report = await eventually(polled)
    [queue] = report.queues
    assert queue.workflow_pollers >= 1 and queue.activity_pollers >= 1
    assert queue.workflow_backlog == 0 and queue.last_access is not None
    [database] = report.dependencies
    assert (database.name, database.reachable) == ("PostgreSQL", True)

    report = await ops.health(client, settings, queues=[task_queue, idle])
    assert not report.healthy
    assert report.problems == [f"task queue {idle}: no worker polling"]

    broken = Settings(**{**settings.model_dump(), "database_url": "postgresql://x@127.0.0.1:1/x"})
    report = await ops.health(client, broken, queues=[task_queue])
    assert not report.healthy
    [database] = report.dependencies
    assert not database.reachable and database.target == "127.0.0.1:1/x"


async def test_a_provider_queue_is_healthy_with_activity_pollers_only(
    dev_env: WorkflowEnvironment, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = dev_env.client
    provider_queue = f"tq-provider-{uuid.uuid4().hex}"

    @activity.defn(name=f"send_{uuid.uuid4().hex[:8]}")
    async def send() -> None:
        return None

    async def polled() -> ops.HealthReport | None:
        report = await ops.health(client, settings, queues=[provider_queue])
        return report if report.queues[0].activity_pollers >= 1 else None

    async with Worker(client, task_queue=provider_queue, activities=[send]):
        report = await eventually(polled)
        # A workflow queue without a workflow poller is unhealthy...
        assert not report.healthy
        assert report.problems == [f"task queue {provider_queue}: no worker polling"]
        # ...a provider queue (activities only) is healthy with its activity pollers.
        # Patched where health reads it: the package only re-exports the name.
        monkeypatch.setattr(ops._health, "ACTIVITY_ONLY_QUEUES", frozenset({provider_queue}))
        report = await ops.health(client, settings, queues=[provider_queue])
        assert report.healthy and report.queues[0].workflow_pollers == 0
    assert ops._health.ACTIVITY_ONLY_QUEUES == frozenset({provider_queue})
    monkeypatch.undo()
    assert TASK_QUEUE_PUSH in ops.ACTIVITY_ONLY_QUEUES
    assert TASK_QUEUE_PUSH in ops.task_queues(settings)


def _cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "starter", *args],
        cwd=ROOT,
        env=process_env(**env),
        capture_output=True,
        text=True,
        timeout=120,
    )


async def _cli_async(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(_cli, *args, **env)


async def test_cli_failures_retry_and_health_exit_codes(
    dev_env: WorkflowEnvironment, worker: Worker, task_queue: str
) -> None:
    client = dev_env.client
    address = client.service_client.config.target_host
    prefix, [failed_id] = await _failed_orders(client, task_queue, 1)
    clause = f"WorkflowId STARTS_WITH '{prefix}'"

    async def listed() -> dict[str, Any] | None:
        done = await _cli_async("failures", "--query", clause, "--json", TEMPORAL_ADDRESS=address)
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        return report if report["total"] == 1 else None

    report = await eventually(listed)
    [group] = report["groups"]
    assert (group["error_type"], group["example_ids"]) == ("CardDeclined", [failed_id])

    done = await _cli_async("retry", "--query", clause, "--dry-run", TEMPORAL_ADDRESS=address)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "would retry 1 workflow(s) by reset"

    for args, expected in (
        (("retry", "--workflow-id", "nope-1"), "error: UnknownWorkflow: no workflow nope-1"),
        (("retry", "--query", "WorkflowId = "), "error: InvalidInput: the server refused"),
        (("retry", "--query", "WorkflowId = 'nope-2'"), "error: NothingMatched: no workflow"),
        (("failures", "--since", "soon"), "error: InvalidInput: --since 'soon'"),
    ):
        done = await _cli_async(*args, TEMPORAL_ADDRESS=address)
        assert done.returncode == 2, (args, done.stderr)
        [line] = done.stderr.splitlines()
        assert line.startswith(expected), line
        assert "Traceback" not in done.stderr

    idle = f"tq-idle-{uuid.uuid4().hex}"
    done = await _cli_async("health", "--task-queue", idle, "--json", TEMPORAL_ADDRESS=address)
    assert done.returncode == 1
    assert json.loads(done.stdout)["healthy"] is False
    [line] = done.stderr.splitlines()
    assert json.loads(line) == {
        "error": "ProviderUnavailable",
        "message": f"unhealthy: task queue {idle}: no worker polling",
    }


def test_cli_ops_commands_name_an_unreachable_temporal() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{sock.getsockname()[1]}"
    for command in (("health",), ("failures",), ("stuck",), ("retry", "--workflow-id", "x")):
        done = _cli(*command, TEMPORAL_ADDRESS=address)
        assert done.returncode == 1, command
        [line] = done.stderr.splitlines()
        assert line.startswith(f"error: ProviderUnavailable: cannot reach Temporal at {address}")


def test_parse_duration() -> None:
    assert ops.parse_duration("90s") == timedelta(seconds=90)
    assert ops.parse_duration("2d") == timedelta(days=2)
    with pytest.raises(InvalidInput):
        ops.parse_duration("0h")


async def test_cli_stuck_lists_notification_rows_open_long_past_due(
    dev_env: WorkflowEnvironment, core: Any, database_url: str
) -> None:
    from datetime import UTC, datetime

    from missive.models import ConversationKind
    from missive.schemas import (
        NotifyMessageInput,
        NotifyOptions,
        PersistMessageInput,
        PlanNotificationsInput,
    )
    from missive.services.directory import NewUser

    ana = await core.directory.create_user(NewUser(handle=f"ana-{uuid.uuid4().hex[:6]}"))
    ben = await core.directory.create_user(
        NewUser(handle=f"ben-{uuid.uuid4().hex[:6]}", email="ben@example.com")
    )
    ops_room = await core.directory.create_conversation(
        kind=ConversationKind.GROUP, members=[ana, ben], title="ops", owner_id=ana
    )
    stored = await core.messages.persist(PersistMessageInput(ops_room, ana, "c-1", "hi"))
    # Planned two hours ago and never dispatched (its agenda is gone): ben's email row
    # (due 15 min after the message) is open 1 h 45 min past due.
    two_hours_ago = datetime.now(UTC) - timedelta(hours=2)
    await core.notifications.plan(
        PlanNotificationsInput(
            NotifyMessageInput(
                stored.message_id, ops_room, ana, stored.seq, two_hours_ago, options=NotifyOptions()
            ),
            now=two_hours_ago,
        )
    )
    env = {
        "TEMPORAL_ADDRESS": dev_env.client.service_client.config.target_host,
        "DATABASE_URL": database_url,
    }
    nothing = ("--query", "WorkflowId = 'no-such-workflow'")
    done = await _cli_async("stuck", "--json", *nothing, **env)
    assert done.returncode == 0, done.stderr
    overdue = json.loads(done.stdout)["overdue_notifications"]
    assert overdue["count"] == 1
    [row] = overdue["examples"]
    assert (row["recipient_id"], row["channel"], row["status"]) == (ben, "email", "pending")
    text = await _cli_async("stuck", *nothing, **env)
    assert "1 notification row(s) open more than 3600 s past their due time" in text.stdout
    assert f"email to {ben} (message {stored.message_id}): pending" in text.stdout
    # A margin longer than the delay: nothing is overdue.
    calm = await _cli_async("stuck", "--overdue-after", "3h", *nothing, **env)
    assert "no notification row is open more than 10800 s past its due time" in calm.stdout
    refused = await _cli_async("stuck", "--overdue-after", "soon", *nothing, **env)
    assert refused.returncode == 2 and "--overdue-after 'soon'" in refused.stderr
