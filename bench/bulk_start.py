"""Bulk send (start-only) vs bare start_workflow at one concurrency; failure analysis time.

Run ``python -m bench.bulk_start [--starts 10000] [--concurrency 32] [--failed 10000]``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import logging
import os
import shutil
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path

from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.common import RetryPolicy, WorkflowIDConflictPolicy
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from missive.config import Settings
from missive.constants import TASK_QUEUE_MESSAGES, message_workflow_id
from runtime.client import data_converter
from runtime.messaging import LIFECYCLE_ID_REUSE, with_request_id
from runtime.search_attributes import KIND_MESSAGE, MISSIVE_SEARCH_ATTRIBUTE_KEYS, start_attributes
from starter import ops
from starter.bulk import BulkSend, send_many
from starter.client import MissiveClient, send_input
from workflows.message_lifecycle import MessageLifecycleWorkflow

ROUNDS = 4
"""The starts are split into alternating rounds so both sides see the same server state."""
FAILING_QUEUE = "bench-failing"


@activity.defn(name="bench_reject")
async def reject(item: str) -> None:
    """Always refuses, like a permanent domain error."""
    raise ApplicationError(
        f"item {item} refused by the bench", type="BenchRefused", non_retryable=True
    )


@workflow.defn(name="BenchFailing")
class FailingWorkflow:
    """Fails through its one activity."""

    @workflow.run
    async def run(self, item: str) -> None:
        await workflow.execute_activity(
            reject,
            item,
            start_to_close_timeout=timedelta(seconds=10),
            retry_policy=RetryPolicy(maximum_attempts=1),
        )


def _key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


async def _bounded(count: int, concurrency: int, make: object) -> float:
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with gate:
            await make(i)  # type: ignore[operator]

    began = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(count)))
    return time.perf_counter() - began


async def bench_starts(missive: MissiveClient, starts: int, concurrency: int) -> None:
    settings = missive.settings
    client = missive.temporal
    conversation, sender = str(uuid.uuid4()), str(uuid.uuid4())
    per_round = starts // ROUNDS
    bulk_time = bare_time = 0.0
    for round_no in range(ROUNDS):
        tag = uuid.uuid4().hex[:8]
        sends = [
            BulkSend(conversation, sender, f"bulk-{tag}-{i}", f"body {i}") for i in range(per_round)
        ]
        summary = await send_many(missive, sends, concurrency=concurrency, wait_for_ack=False)
        assert summary.started == per_round, summary
        bulk_time += summary.elapsed_seconds

        async def bare(i: int, tag: str = tag) -> None:
            input = with_request_id(
                send_input(
                    settings,
                    conversation_id=conversation,
                    sender_id=sender,
                    client_message_id=f"bare-{tag}-{i}",
                    body=f"body {i}",
                )
            )
            await client.start_workflow(
                MessageLifecycleWorkflow.run,
                input,
                id=message_workflow_id(sender, input.client_message_id),
                task_queue=TASK_QUEUE_MESSAGES,
                id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
                id_reuse_policy=LIFECYCLE_ID_REUSE,
                # The same start the library makes, search attributes included.
                search_attributes=start_attributes(
                    settings, KIND_MESSAGE, conversation_id=input.conversation_id
                ),
            )

        bare_time += await _bounded(per_round, concurrency, bare)
        print(f"round {round_no + 1}/{ROUNDS}: {per_round} starts each", flush=True)
    total = per_round * ROUNDS
    bulk_rate, bare_rate = total / bulk_time, total / bare_time
    print(
        f"starts at concurrency {concurrency}: bulk send {bulk_rate:.0f}/s, bare start_workflow "
        f"{bare_rate:.0f}/s, ratio {bulk_rate / bare_rate:.2f} (goal >= 0.9) over {total} each"
    )


async def bench_failures(client: Client, failed: int, concurrency: int) -> None:
    prefix = f"benchfail-{uuid.uuid4().hex[:8]}"
    async with Worker(
        client,
        task_queue=FAILING_QUEUE,
        workflows=[FailingWorkflow],
        activities=[reject],
        workflow_runner=UnsandboxedWorkflowRunner(),
        max_concurrent_activities=200,
    ):

        async def start(i: int) -> None:
            await client.start_workflow(
                FailingWorkflow.run, str(i), id=f"{prefix}-{i}", task_queue=FAILING_QUEUE
            )

        took = await _bounded(failed, concurrency, start)
        print(f"started {failed} failing workflows in {took:.1f}s", flush=True)
        query = f"WorkflowId STARTS_WITH '{prefix}' AND ExecutionStatus = 'Failed'"
        for _ in range(3600):  # the worker fails them at its own pace
            if (await client.count_workflows(query)).count >= failed:
                break
            await asyncio.sleep(1)
    report = await ops.failures(
        client, since=timedelta(hours=1), extra_query=f"WorkflowId STARTS_WITH '{prefix}'"
    )
    [group] = report.groups
    assert report.total == failed and group.count == failed, report.total
    print(
        f"failure analysis over {report.total} failed workflows: {report.elapsed_seconds:.1f}s "
        f"({report.total / report.elapsed_seconds:.0f} workflows/s; one group: "
        f"{group.error_type} in {group.activity_type}: {group.pattern})"
    )


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--starts", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--failed", type=int, default=10_000)
    args = parser.parse_args()
    # The failing workflows' activities fail on purpose: no warning with a traceback each.
    logging.getLogger("temporalio.activity").setLevel(logging.ERROR)
    settings = Settings(master_keys=f"1:{_key()}", codec_keys=f"1:{_key()}")  # type: ignore[call-arg]
    binary = shutil.which("temporal", path=str(Path(sys.executable).parent)) or "temporal"
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=binary,
        data_converter=data_converter(settings),
        dev_server_extra_args=["--log-level", "error"],
        search_attributes=MISSIVE_SEARCH_ATTRIBUTE_KEYS,
    )
    try:
        missive = MissiveClient(env.client, settings, call_timeout=timedelta(seconds=60))
        if args.starts:
            await bench_starts(missive, args.starts, args.concurrency)
        if args.failed:
            await bench_failures(env.client, args.failed, args.concurrency)
    finally:
        await env.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
