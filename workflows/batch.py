"""BatchWorkflow: a staged batch in chunk activities, a sliding window, live progress."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import timedelta

from temporalio import workflow
from temporalio.common import SearchAttributeKey
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.batch import BatchActivities
    from missive.constants import SEARCH_ATTRIBUTE_PROGRESS, SEARCH_ATTRIBUTE_STATUS
    from missive.schemas import (
        BatchChunkInput,
        BatchChunkResult,
        BatchInput,
        BatchProgress,
        BatchResult,
        BatchState,
        BatchStatus,
        StagedBatchInput,
    )
    from workflows import policies
    from workflows.failures import reraise_refusal

PROGRESS_KEY = SearchAttributeKey.for_int(SEARCH_ATTRIBUTE_PROGRESS)
"""Percent of the batch's items finished."""
STATUS_KEY = SearchAttributeKey.for_keyword(SEARCH_ATTRIBUTE_STATUS)
"""running, paused, completed, failed or cancelled."""
STAGED_CHECK_PATCH = "check-staged-batch"
"""The patch that added the staged-batch check: runs recorded before it replay without it."""


def _check(input: BatchInput) -> None:
    problems = []
    if input.total <= 0:
        problems.append(f"the batch is empty (total {input.total})")
    if input.chunk_size <= 0:
        problems.append(f"chunk_size must be positive, got {input.chunk_size}")
    if input.max_concurrent_chunks <= 0:
        problems.append(
            f"max_concurrent_chunks must be positive, got {input.max_concurrent_chunks}"
        )
    if not 0.0 <= input.failure_threshold <= 1.0:
        problems.append(f"failure_threshold must be within [0, 1], got {input.failure_threshold}")
    if input.heartbeat_every <= 0:
        problems.append(f"heartbeat_every must be positive, got {input.heartbeat_every}")
    if problems:
        raise ApplicationError("; ".join(problems), type="InvalidInput", non_retryable=True)


@workflow.defn
class BatchWorkflow:
    """One staged batch (id ``batch-<batch id>``), run as chunk activities.

    At most ``max_concurrent_chunks`` chunks run at once; each one finishing
    lets the next start. Pause stops starting chunks (those running finish),
    resume starts them again, cancel stops after the running ones. The run
    continues as new when Temporal suggests it (or after
    ``max_chunks_per_run`` chunks), carrying its counts and cursor, so the
    history stays bounded however large the batch.
    """

    @workflow.init
    def __init__(self, input: BatchInput) -> None:
        state = input.state or BatchState()
        self._input = input
        self._chunks_total = -(-max(input.total, 0) // max(input.chunk_size, 1))
        self._next = state.next_chunk
        self._stored = state.stored
        self._failed = state.failed
        self._paused = state.paused
        self._cancelled = False
        self._started_at = state.started_at
        self._runs = state.runs
        self._in_flight: dict[int, asyncio.Task[None]] = {}
        self._chunks_done = state.next_chunk
        self._chunks_this_run = 0
        self._status = BatchStatus.PAUSED if state.paused else BatchStatus.RUNNING
        self._error: str | None = None
        self._chunk_error: ApplicationError | None = None
        self._wake = False
        self._shown: tuple[int, BatchStatus] | None = None

    @workflow.run
    async def run(self, input: BatchInput) -> BatchResult:
        """Runs the batch to its end; fails with BatchFailed past the failure threshold.

        Fails at once with InvalidInput, having run no chunk, when the input names
        a batch that was never staged or staged with another total or kind.
        """
        _check(input)
        if workflow.patched(STAGED_CHECK_PATCH):
            await self._check_staged(input)
        if self._started_at is None:
            self._started_at = workflow.now()
        self._show()
        while True:
            while self._may_start() and len(self._in_flight) < input.max_concurrent_chunks:
                self._start_chunk(self._next)
            if not self._in_flight:
                if self._chunk_error is not None or self._over_threshold():
                    await self._fail()
                if self._cancelled:
                    return await self._finish(BatchStatus.CANCELLED)
                if self._next >= self._chunks_total:
                    return await self._finish(BatchStatus.COMPLETED)
                if self._should_continue():
                    await workflow.wait_condition(workflow.all_handlers_finished)
                    workflow.continue_as_new(dataclasses.replace(input, state=self._state()))
            self._wake = False
            await workflow.wait_condition(lambda: self._wake)

    async def _check_staged(self, input: BatchInput) -> None:
        # Every run, not only the first: a hand-written input may carry a state too.
        try:
            await workflow.execute_activity_method(
                BatchActivities.check_staged_batch,
                StagedBatchInput(batch_id=input.batch_id, kind=input.kind, total=input.total),
                start_to_close_timeout=policies.BATCH_CHECK_TIMEOUT,
                retry_policy=policies.BATCH_CHECK_RETRY,
            )
        except ActivityError as err:
            reraise_refusal(err)

    def _may_start(self) -> bool:
        return (
            not self._paused
            and not self._cancelled
            and self._chunk_error is None
            and not self._over_threshold()
            and not self._should_continue()
            and self._next < self._chunks_total
        )

    def _should_continue(self) -> bool:
        limit = self._input.max_chunks_per_run
        return workflow.info().is_continue_as_new_suggested() or (
            limit > 0 and self._chunks_this_run >= limit
        )

    def _over_threshold(self) -> bool:
        return self._failed > self._input.failure_threshold * self._input.total

    def _start_chunk(self, chunk: int) -> None:
        first = 1 + chunk * self._input.chunk_size
        last = min(first + self._input.chunk_size, self._input.total + 1)
        self._next += 1
        self._chunks_this_run += 1
        self._in_flight[chunk] = asyncio.create_task(self._run_chunk(chunk, first, last))

    async def _run_chunk(self, chunk: int, first: int, last: int) -> None:
        try:
            result: BatchChunkResult = await workflow.execute_activity_method(
                BatchActivities.process_batch_chunk,
                BatchChunkInput(
                    batch_id=self._input.batch_id,
                    from_item=first,
                    to_item=last,
                    max_body_bytes=self._input.max_body_bytes,
                    heartbeat_every=self._input.heartbeat_every,
                ),
                start_to_close_timeout=policies.BATCH_CHUNK_TIMEOUT,
                heartbeat_timeout=timedelta(seconds=self._input.heartbeat_timeout_seconds),
                retry_policy=policies.BATCH_CHUNK_RETRY,
            )
            self._stored += result.stored
            self._failed += result.failed
            self._chunks_done += 1
        except ActivityError as err:
            cause = err.cause
            self._chunk_error = ApplicationError(
                f"chunk [{first}, {last}) failed: {cause or err}",
                type=getattr(cause, "type", None) or "BatchChunkFailed",
                non_retryable=True,
            )
        finally:
            del self._in_flight[chunk]
            self._wake = True
            self._show()

    async def _fail(self) -> None:
        if self._chunk_error is not None:
            failure = self._chunk_error
        else:
            failure = ApplicationError(
                f"batch {self._input.batch_id}: {self._failed} of {self._input.total} items "
                f"failed, over the threshold of {self._input.failure_threshold:.2%}; "
                "see the batch report",
                type="BatchFailed",
                non_retryable=True,
            )
        self._status = BatchStatus.FAILED
        self._error = failure.message
        self._show()
        await workflow.wait_condition(workflow.all_handlers_finished)
        raise failure

    async def _finish(self, status: BatchStatus) -> BatchResult:
        self._status = status
        self._show()
        await workflow.wait_condition(workflow.all_handlers_finished)
        return BatchResult(
            batch_id=self._input.batch_id,
            status=status,
            total=self._input.total,
            stored=self._stored,
            failed=self._failed,
        )

    def _state(self) -> BatchState:
        return BatchState(
            next_chunk=self._next,
            stored=self._stored,
            failed=self._failed,
            paused=self._paused,
            started_at=self._started_at,
            runs=self._runs + 1,
        )

    def _show(self) -> None:
        """Keeps the search attributes current (only when they change, to spare history)."""
        if not self._input.upsert_search_attributes:
            return
        percent = (self._stored + self._failed) * 100 // max(self._input.total, 1)
        shown = (percent, self._status)
        if shown == self._shown:
            return
        self._shown = shown
        workflow.upsert_search_attributes(
            [PROGRESS_KEY.value_set(percent), STATUS_KEY.value_set(self._status.value)]
        )

    @workflow.signal
    def pause(self) -> None:
        """Stops starting chunks; the running ones finish."""
        if self._status in (BatchStatus.RUNNING, BatchStatus.PAUSED):
            self._paused = True
            self._status = BatchStatus.PAUSED
            self._wake = True
            self._show()

    @workflow.signal
    def resume(self) -> None:
        """Starts chunks again after a pause."""
        if self._status is BatchStatus.PAUSED:
            self._paused = False
            self._status = BatchStatus.RUNNING
            self._wake = True
            self._show()

    @workflow.signal
    def cancel(self) -> None:
        """Starts no more chunks; the batch ends cancelled once the running ones finish.

        Every item a finished chunk stored stays stored (see the batch report).
        """
        self._cancelled = True
        self._paused = False
        self._wake = True

    @workflow.query
    def progress(self) -> BatchProgress:
        """Done / total, failed, rate and estimated time left."""
        processed = self._stored + self._failed
        rate = 0.0
        eta: float | None = None
        if self._started_at is not None:
            elapsed = (workflow.now() - self._started_at).total_seconds()
            if elapsed > 0 and processed > 0:
                rate = processed / elapsed
                eta = (self._input.total - processed) / rate
        return BatchProgress(
            batch_id=self._input.batch_id,
            kind=str(self._input.kind),
            status=self._status,
            total=self._input.total,
            processed=processed,
            stored=self._stored,
            failed=self._failed,
            chunks_total=self._chunks_total,
            chunks_done=self._chunks_done,
            in_flight=len(self._in_flight),
            rate_per_second=rate,
            eta_seconds=eta,
            started_at=self._started_at,
            error=self._error,
        )
