"""Batches (imports and announcements): the workflow's input, state, chunks and progress."""

# Annotations are evaluated, not postponed: see missive/schemas/__init__.py.

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from missive.validation import bounds


class BatchKind(StrEnum):
    """What a batch does; both insert messages from staged items."""

    IMPORT = "import"
    ANNOUNCEMENT = "announcement"


class BatchStatus(StrEnum):
    """Where a batch is."""

    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class BatchState:
    """What a batch workflow carries across continue-as-new."""

    next_chunk: int = 0
    """The first chunk not started yet (chunks before it have finished)."""
    stored: int = 0
    """Items stored as messages so far."""
    failed: int = 0
    """Items that failed permanently so far."""
    paused: bool = False
    """Whether the batch was paused when the run continued as new."""
    started_at: datetime | None = None
    """When the first run started (for the rate)."""
    runs: int = 1
    """How many runs (continue-as-new generations) this batch has had."""


@dataclass(frozen=True)
class BatchInput:
    """Input of BatchWorkflow: the staged batch's id and how to run it (no items)."""

    batch_id: str
    """The staged batch (table batches / batch_items)."""
    kind: BatchKind
    """import or announcement."""
    total: int
    """Items staged (item numbers 1..total)."""
    chunk_size: int = 2_000
    """Items per chunk activity."""
    max_concurrent_chunks: int = 4
    """Chunks running at once (the sliding window)."""
    failure_threshold: float = 0.0
    """Share of the items that may fail before the batch fails."""
    max_body_bytes: int = field(default=16_384, metadata=bounds(1))
    """Largest body, in UTF-8 bytes; the worker's own MAX_BODY_BYTES caps it."""
    heartbeat_every: int = 500
    """Items per transaction inside a chunk; the cursor is heartbeated after each."""
    max_chunks_per_run: int = field(default=0, metadata=bounds(0))
    """Continue as new after this many chunks in one run (0: only when Temporal
    suggests it). Keeps each run's history bounded."""
    upsert_search_attributes: bool = True
    """Keep MissiveBatchProgress / MissiveBatchStatus current for the Web UI."""
    heartbeat_timeout_seconds: float = field(default=30.0, metadata=bounds(1, 3_600))
    """A chunk whose worker stops heartbeating this long is retried elsewhere."""
    state: BatchState | None = None
    """Carried over by continue-as-new; None on the first run."""


@dataclass(frozen=True)
class StagedBatchInput:
    """Input of the check_staged_batch activity: what a BatchWorkflow's input says of its batch."""

    batch_id: str
    """The batch the workflow is to run."""
    kind: BatchKind
    """The kind its input names."""
    total: int
    """The item count its input names."""


@dataclass(frozen=True)
class BatchChunkInput:
    """Input of the process_batch_chunk activity: items [from_item, to_item)."""

    batch_id: str
    """The staged batch."""
    from_item: int
    """First item number of the chunk."""
    to_item: int
    """One past its last item number."""
    max_body_bytes: int = field(default=16_384, metadata=bounds(1))
    """Largest body, in UTF-8 bytes; the worker's own MAX_BODY_BYTES caps it."""
    heartbeat_every: int = field(default=500, metadata=bounds(1, 100_000))
    """Items per transaction; the cursor is heartbeated after each."""


@dataclass(frozen=True)
class BatchChunkResult:
    """What one chunk did, counted over its whole range (earlier attempts included)."""

    from_item: int
    """First item number of the chunk."""
    to_item: int
    """One past its last item number."""
    stored: int
    """Items of the range stored as messages."""
    failed: int
    """Items of the range that failed permanently."""


@dataclass
class BatchProgress:
    """Result of the ``progress`` query of BatchWorkflow."""

    batch_id: str = ""
    """The batch."""
    kind: str = ""
    """import or announcement."""
    status: BatchStatus = BatchStatus.RUNNING
    """running, paused, completed, failed or cancelled."""
    total: int = 0
    """Items in the batch."""
    processed: int = 0
    """Items finished (stored + failed)."""
    stored: int = 0
    """Items stored as messages."""
    failed: int = 0
    """Items that failed permanently (see the batch report)."""
    chunks_total: int = 0
    """Chunks in the batch."""
    chunks_done: int = 0
    """Chunks finished."""
    in_flight: int = 0
    """Chunks running now."""
    rate_per_second: float = 0.0
    """Items finished per second since the batch started."""
    eta_seconds: float | None = None
    """Estimated seconds left at that rate (None before the first chunk ends)."""
    started_at: datetime | None = None
    """When the batch started."""
    error: str | None = None
    """Why the batch failed, when it did."""


@dataclass(frozen=True)
class BatchResult:
    """Result of BatchWorkflow."""

    batch_id: str
    """The batch."""
    status: BatchStatus
    """completed or cancelled (a failed batch fails the workflow)."""
    total: int
    """Items in the batch."""
    stored: int
    """Items stored as messages."""
    failed: int
    """Items that failed permanently."""
