"""BatchWorkflow on the time-skipping server with a fake chunk activity."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from temporalio import activity
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from missive.schemas import (
    BatchChunkInput,
    BatchChunkResult,
    BatchInput,
    BatchKind,
    BatchStatus,
    StagedBatchInput,
)
from workflows.batch import BatchWorkflow


class FakeChunks:
    """Records the chunks it is given; fails the items named in ``bad``.

    Every batch counts as staged as its input says, but for the ids in ``unstaged``.
    """

    def __init__(
        self, *, bad: set[int] | None = None, gated: bool = False, unstaged: set[str] | None = None
    ) -> None:
        self.bad = bad or set()
        self.unstaged = unstaged or set()
        self.checks: list[StagedBatchInput] = []
        self.ranges: list[tuple[int, int]] = []
        self.running = 0
        self.max_running = 0
        self.gated = gated
        self.release = asyncio.Semaphore(0)
        self.started = asyncio.Event()

    @activity.defn(name="check_staged_batch")
    async def check(self, input: StagedBatchInput) -> None:
        self.checks.append(input)
        if input.batch_id in self.unstaged:
            raise ApplicationError(
                f"batch {input.batch_id} was never staged", type="InvalidInput", non_retryable=True
            )

    @activity.defn(name="process_batch_chunk")
    async def process(self, input: BatchChunkInput) -> BatchChunkResult:
        self.ranges.append((input.from_item, input.to_item))
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        self.started.set()
        try:
            if self.gated:
                await self.release.acquire()
            else:
                await asyncio.sleep(0.02)
        finally:
            self.running -= 1
        failed = sum(1 for n in range(input.from_item, input.to_item) if n in self.bad)
        return BatchChunkResult(
            from_item=input.from_item,
            to_item=input.to_item,
            stored=input.to_item - input.from_item - failed,
            failed=failed,
        )


def _input(total: int, **overrides: object) -> BatchInput:
    values: dict[str, object] = {
        "batch_id": uuid.uuid4().hex[:12],
        "kind": BatchKind.IMPORT,
        "total": total,
        "chunk_size": 5,
        "max_concurrent_chunks": 2,
        "upsert_search_attributes": False,
    }
    values.update(overrides)
    return BatchInput(**values)  # type: ignore[arg-type]


def _worker(env: WorkflowEnvironment, task_queue: str, fake: FakeChunks) -> Worker:
    return Worker(
        env.client,
        task_queue=task_queue,
        workflows=[BatchWorkflow],
        activities=[fake.check, fake.process],
    )


async def test_window_bounds_concurrency_and_failures_under_the_threshold_complete(
    time_env: WorkflowEnvironment, task_queue: str
) -> None:
    fake = FakeChunks(bad={7})
    input = _input(23, failure_threshold=0.05)
    async with _worker(time_env, task_queue, fake):
        handle = await time_env.client.start_workflow(
            BatchWorkflow.run, input, id=f"batch-{input.batch_id}", task_queue=task_queue
        )
        result = await handle.result()
        progress = await handle.query(BatchWorkflow.progress)
    assert (result.status, result.stored, result.failed) == (BatchStatus.COMPLETED, 22, 1)
    assert sorted(fake.ranges) == [(1, 6), (6, 11), (11, 16), (16, 21), (21, 24)]
    assert fake.max_running == 2
    assert (progress.processed, progress.total, progress.chunks_done) == (23, 23, 5)
    assert progress.status is BatchStatus.COMPLETED and progress.eta_seconds in (0.0, None)


async def test_failures_past_the_threshold_fail_the_batch_and_start_nothing_more(
    time_env: WorkflowEnvironment, task_queue: str
) -> None:
    fake = FakeChunks(bad={1, 2, 3})
    input = _input(100, failure_threshold=0.02, max_concurrent_chunks=1)
    async with _worker(time_env, task_queue, fake):
        handle = await time_env.client.start_workflow(
            BatchWorkflow.run, input, id=f"batch-{input.batch_id}", task_queue=task_queue
        )
        with pytest.raises(WorkflowFailureError) as failure:
            await handle.result()
        progress = await handle.query(BatchWorkflow.progress)
    cause = failure.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "BatchFailed"
    assert "3 of 100 items failed" in cause.message
    assert fake.ranges == [(1, 6)]
    assert progress.status is BatchStatus.FAILED and progress.failed == 3


async def test_pause_resume_and_cancel(time_env: WorkflowEnvironment, task_queue: str) -> None:
    fake = FakeChunks(gated=True)
    input = _input(50, max_concurrent_chunks=1)
    async with _worker(time_env, task_queue, fake):
        handle = await time_env.client.start_workflow(
            BatchWorkflow.run, input, id=f"batch-{input.batch_id}", task_queue=task_queue
        )
        await asyncio.wait_for(fake.started.wait(), 30)
        await handle.signal(BatchWorkflow.pause)
        fake.release.release()  # the running chunk finishes; no other starts
        await _until(handle, lambda p: p.chunks_done == 1 and p.in_flight == 0)
        paused = await handle.query(BatchWorkflow.progress)
        assert paused.status is BatchStatus.PAUSED and paused.processed == 5
        await asyncio.sleep(0.3)
        assert fake.ranges == [(1, 6)]

        await handle.signal(BatchWorkflow.resume)
        await _until(handle, lambda p: p.in_flight == 1)
        assert (await handle.query(BatchWorkflow.progress)).status is BatchStatus.RUNNING
        await handle.signal(BatchWorkflow.cancel)
        fake.release.release()
        result = await handle.result()
    assert (result.status, result.stored, result.failed) == (BatchStatus.CANCELLED, 10, 0)
    assert fake.ranges == [(1, 6), (6, 11)]


async def test_continue_as_new_carries_the_cursor_and_counts(
    time_env: WorkflowEnvironment, task_queue: str
) -> None:
    fake = FakeChunks(bad={30})
    input = _input(32, max_chunks_per_run=2, failure_threshold=0.5)
    async with _worker(time_env, task_queue, fake):
        handle = await time_env.client.start_workflow(
            BatchWorkflow.run, input, id=f"batch-{input.batch_id}", task_queue=task_queue
        )
        result = await handle.result()
        latest = await time_env.client.get_workflow_handle(handle.id).describe()
    assert (result.stored, result.failed, result.total) == (31, 1, 32)
    # Every chunk exactly once across the runs; four runs of at most two chunks.
    assert sorted(fake.ranges) == [
        (1, 6),
        (6, 11),
        (11, 16),
        (16, 21),
        (21, 26),
        (26, 31),
        (31, 33),
    ]
    assert len(set(fake.ranges)) == 7
    assert latest.run_id != handle.result_run_id
    # Every run checks its batch: a carried state skips nothing.
    assert fake.checks == [StagedBatchInput(input.batch_id, BatchKind.IMPORT, 32)] * 4


async def test_bad_input_fails_at_once(time_env: WorkflowEnvironment, task_queue: str) -> None:
    fake = FakeChunks()
    async with _worker(time_env, task_queue, fake):
        for input, message in (
            (_input(0), "the batch is empty"),
            (_input(10, failure_threshold=1.5), "failure_threshold must be within"),
            (_input(10, chunk_size=0), "chunk_size must be positive"),
        ):
            with pytest.raises(WorkflowFailureError) as failure:
                await time_env.client.execute_workflow(
                    BatchWorkflow.run, input, id=f"batch-{input.batch_id}", task_queue=task_queue
                )
            cause = failure.value.cause
            assert isinstance(cause, ApplicationError) and cause.type == "InvalidInput"
            assert message in cause.message
    assert fake.ranges == []


async def test_a_batch_never_staged_fails_at_once_and_runs_no_chunk(
    time_env: WorkflowEnvironment, task_queue: str
) -> None:
    input = _input(10**12)
    fake = FakeChunks(unstaged={input.batch_id})
    async with _worker(time_env, task_queue, fake):
        with pytest.raises(WorkflowFailureError) as failure:
            await time_env.client.execute_workflow(
                BatchWorkflow.run, input, id=f"batch-{input.batch_id}", task_queue=task_queue
            )
    cause = failure.value.cause
    assert isinstance(cause, ApplicationError) and cause.non_retryable
    assert (cause.type, cause.message) == (
        "InvalidInput",
        f"batch {input.batch_id} was never staged",
    )
    assert fake.checks == [StagedBatchInput(input.batch_id, BatchKind.IMPORT, 10**12)]
    assert fake.ranges == []


async def _until(handle, predicate) -> None:  # type: ignore[no-untyped-def]
    """Polls the progress query until ``predicate`` holds (30 s at most)."""
    for _ in range(600):
        if predicate(await handle.query(BatchWorkflow.progress)):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the batch never reached the expected progress")
