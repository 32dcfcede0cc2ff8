"""Batch activities: one chunk of a batch per call, heartbeating its cursor."""

from __future__ import annotations

from collections.abc import Callable

from temporalio import activity

from activities.errors import translate_errors
from missive.metrics import Metrics
from missive.schemas import BatchChunkInput, BatchChunkResult, StagedBatchInput
from missive.services.batch import BatchService


class BatchActivities:
    """Thin activities over BatchService."""

    def __init__(
        self,
        batches: BatchService,
        *,
        metrics: Metrics | None = None,
        release_memory: Callable[[], None] | None = None,
    ):
        self._batches = batches
        self._metrics = metrics
        self._release_memory = release_memory
        """Called after every chunk, whatever its outcome (the worker passes
        runtime.process.release_freed_memory: a chunk frees megabytes at a time)."""

    @activity.defn
    @translate_errors
    async def check_staged_batch(self, input: StagedBatchInput) -> None:
        """Refuses (InvalidInput, non-retryable) a batch that was not staged as described."""
        await self._batches.require_staged(input.batch_id, input.kind, input.total)

    @activity.defn
    @translate_errors
    async def process_batch_chunk(self, input: BatchChunkInput) -> BatchChunkResult:
        """Stores items [from_item, to_item); resumes from the last heartbeated cursor.

        Every transaction of ``heartbeat_every`` items commits its messages,
        deliveries and item states together, then the next item number is
        heartbeated. A retry after a crash starts at that cursor; items of the
        range the crashed attempt committed after it are recognised by their
        state and only announced again (events carry stable ``event_id``s).
        """
        details = activity.info().heartbeat_details
        resume_from = int(details[0]) if details else None
        if resume_from is not None:
            activity.logger.info(
                "batch %s: resuming chunk [%d, %d) at item %d",
                input.batch_id,
                input.from_item,
                input.to_item,
                resume_from,
            )

        async def progress(cursor: int) -> None:
            activity.heartbeat(cursor)

        try:
            result = await self._batches.process_chunk(
                input.batch_id,
                input.from_item,
                input.to_item,
                max_body_bytes=input.max_body_bytes,
                step=input.heartbeat_every,
                resume_from=resume_from,
                on_progress=progress,
            )
        finally:
            if self._release_memory is not None:
                self._release_memory()
        if self._metrics is not None:
            self._metrics.batch_chunk(stored=result.stored, failed=result.failed)
        return result
