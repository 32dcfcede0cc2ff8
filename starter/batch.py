"""BatchClient: stage and run batches, follow them, and operate retention (library side).

Staging, reports, restores and retention policy go to PostgreSQL directly (so a
``batch start`` needs DATABASE_URL as well as TEMPORAL_ADDRESS); everything
else goes through Temporal. Methods raise only ``missive.errors`` classes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Self, TypeVar

from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import (
    Client,
    RPCTimeoutOrCancelledError,
    ScheduleDescription,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowQueryFailedError,
)
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from missive.config import Settings
from missive.constants import RETENTION_SCHEDULE_ID, TASK_QUEUE_BATCH, batch_workflow_id
from missive.crypto import MessageCipher, StagingCipher
from missive.db import create_engine
from missive.errors import InvalidInput, MessagingError, ProviderUnavailable
from missive.schemas import (
    BatchInput,
    BatchKind,
    BatchProgress,
    BatchReport,
    BatchResult,
    RestoreResult,
)
from missive.services.batch import (
    BatchStaging,
    announcement_items,
    new_batch_id,
    require_batch_id,
    scan_import_file,
    user_announcement_items,
)
from missive.services.retention import RetentionService
from missive.validation import require_body, require_uuid
from runtime.batch_worker import ensure_retention_schedule, ensure_search_attributes
from runtime.client import connect
from runtime.messaging import domain_error
from runtime.search_attributes import KIND_BATCH, start_attributes
from runtime.wiring import staging_cipher
from workflows.batch import BatchWorkflow

T = TypeVar("T")


@dataclass(frozen=True)
class BatchOptions:
    """How to run a batch (defaults from settings)."""

    chunk_size: int | None = None
    """Items per chunk activity (default BATCH_CHUNK_SIZE)."""
    max_concurrent_chunks: int | None = None
    """The sliding window (default BATCH_MAX_CONCURRENT_CHUNKS)."""
    failure_threshold: float | None = None
    """Share of items allowed to fail (default BATCH_FAILURE_THRESHOLD)."""
    items_per_transaction: int = 500
    """Items per transaction inside a chunk; the cursor is heartbeated after each."""
    heartbeat_timeout_seconds: float = 30.0
    """How soon a chunk whose worker died is retried elsewhere."""


@dataclass(frozen=True)
class BatchStarted:
    """What starting a batch did."""

    batch_id: str
    """The batch; its workflow is ``batch-<batch_id>``."""
    total: int
    """Items staged."""
    staged: bool
    """False when the same content was staged under this id before (not staged again)."""
    workflow_id: str
    """The workflow running it."""


class BatchClient:
    """Batches and retention through Temporal and PostgreSQL; close it when done."""

    def __init__(
        self,
        client: Client,
        settings: Settings,
        stack: AsyncExitStack | None = None,
        *,
        task_queue: str = TASK_QUEUE_BATCH,
    ):
        self.temporal = client
        self.task_queue = task_queue
        self._settings = settings
        self._stack = stack or AsyncExitStack()
        self._batches: BatchStaging | None = None
        self._retention: RetentionService | None = None

    @classmethod
    async def connect(cls, settings: Settings) -> Self:
        """Connects to Temporal (PostgreSQL is opened on first use).

        Raises:
            ProviderUnavailable: Temporal did not answer.
        """
        stack = AsyncExitStack()
        return cls(await connect(settings), settings, stack)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stack.aclose()

    # --- database-side services ---------------------------------------------------

    def _engine(self) -> AsyncEngine:
        engine = create_engine(self._settings.require_database_url(), pool_size=2)
        self._stack.push_async_callback(engine.dispose)
        return engine

    @property
    def batches(self) -> BatchStaging:
        """Staging and reports; needs DATABASE_URL and CODEC_KEYS (or else MASTER_KEYS).

        Raises:
            InvalidInput: neither CODEC_KEYS nor MASTER_KEYS is set.
        """
        if self._batches is None:
            keys = staging_keys(self._settings)  # before the engine: no key, no connection
            self._batches = BatchStaging(self._engine(), keys)
        return self._batches

    @property
    def retention(self) -> RetentionService:
        """The retention service (restore, policy); needs DATABASE_URL."""
        if self._retention is None:
            s = self._settings
            self._retention = RetentionService(
                self._engine(),
                default_days=s.retention_default_days,
                restore_window_days=s.retention_restore_window_days,
                chunk_size=s.retention_chunk_size,
            )
        return self._retention

    # --- batches ---------------------------------------------------------------------

    async def start_import(
        self, path: Path, *, batch_id: str | None = None, options: BatchOptions = BatchOptions()
    ) -> BatchStarted:
        """Checks a JSON-lines file, stages it (COPY) and starts its workflow.

        Each line is ``{"conversation_id", "sender_id", "body"}`` with an optional
        ``client_message_id`` and ``created_at`` (ISO-8601 with a UTC offset, not
        in the future: the message's own time, for an import of history);
        ``recipient_id`` instead of ``conversation_id`` sends to the direct
        conversation of sender and recipient (found or created). Restarting with
        the same id and file joins the running batch (or reports the finished
        one) instead of staging twice. Bad values are report entries.

        Raises:
            InvalidInput: unreadable or empty file, malformed lines (named by line
                number; nothing is staged), a batch id used for other content.
        """
        bid = require_batch_id(batch_id) if batch_id else new_batch_id()
        self._check_options(options)
        source = scan_import_file(path)
        staged = await self._db(self.batches.stage_file(bid, BatchKind.IMPORT, source))
        return await self._start(bid, BatchKind.IMPORT, source.total, staged, options)

    async def start_announcement(
        self,
        sender_id: str,
        body: str,
        conversation_ids: Sequence[str],
        *,
        batch_id: str | None = None,
        options: BatchOptions = BatchOptions(),
    ) -> BatchStarted:
        """One message from ``sender_id`` to each conversation, as a batch.

        Raises:
            InvalidInput: no conversations, a malformed id, an empty or oversize body.
        """
        bid = require_batch_id(batch_id) if batch_id else new_batch_id()
        self._check_options(options)
        sender = require_uuid(sender_id, "sender_id")
        require_body(body, max_bytes=self._settings.max_body_bytes)
        targets = [require_uuid(c, "conversation_id") for c in conversation_ids]
        if not targets:
            raise InvalidInput("the announcement names no conversations")
        items = announcement_items(sender, body, dict.fromkeys(targets))
        staged = await self._db(self.batches.stage_items(bid, BatchKind.ANNOUNCEMENT, items))
        return await self._start(bid, BatchKind.ANNOUNCEMENT, len(items), staged, options)

    async def start_user_announcement(
        self,
        sender_id: str,
        body: str,
        user_ids: Sequence[str],
        *,
        batch_id: str | None = None,
        options: BatchOptions = BatchOptions(),
    ) -> BatchStarted:
        """One message from ``sender_id`` to each user, in their direct conversation.

        Each user's direct conversation with the sender is found or, when there
        is none, created (in bulk, while the batch runs). Repeated ids count once;
        the sender, if listed, is left out (nobody has a direct conversation with
        themself). Unknown users are report entries.

        Raises:
            InvalidInput: no users (besides the sender), a malformed id, an empty or
                oversize body.
        """
        bid = require_batch_id(batch_id) if batch_id else new_batch_id()
        self._check_options(options)
        sender = require_uuid(sender_id, "sender_id")
        require_body(body, max_bytes=self._settings.max_body_bytes)
        targets = [require_uuid(u, "user_id") for u in user_ids]
        targets = [u for u in dict.fromkeys(targets) if u != sender]
        if not targets:
            raise InvalidInput("the announcement names no users (other than its sender)")
        items = user_announcement_items(sender, body, targets)
        staged = await self._db(self.batches.stage_items(bid, BatchKind.ANNOUNCEMENT, items))
        return await self._start(bid, BatchKind.ANNOUNCEMENT, len(items), staged, options)

    def _check_options(self, options: BatchOptions) -> None:
        # The bounds BATCH_CHUNK_SIZE and BATCH_MAX_CONCURRENT_CHUNKS keep, checked
        # before anything is staged.
        if options.chunk_size is not None and not 0 < options.chunk_size <= 50_000:
            raise InvalidInput(f"chunk size must be 1 to 50000, got {options.chunk_size}")
        concurrency = options.max_concurrent_chunks
        if concurrency is not None and not 0 < concurrency <= 64:
            raise InvalidInput(f"max concurrent chunks must be 1 to 64, got {concurrency}")
        if options.items_per_transaction <= 0 or options.heartbeat_timeout_seconds <= 0:
            raise InvalidInput("items per transaction and the heartbeat timeout must be positive")
        threshold = options.failure_threshold
        if threshold is not None and not 0.0 <= threshold <= 1.0:
            raise InvalidInput(f"failure threshold must be within [0, 1], got {threshold}")

    async def _start(
        self, batch_id: str, kind: BatchKind, total: int, staged: bool, options: BatchOptions
    ) -> BatchStarted:
        s = self._settings
        with_attributes = await self._rpc(ensure_search_attributes(self.temporal))
        input = BatchInput(
            batch_id=batch_id,
            kind=kind,
            total=total,
            chunk_size=options.chunk_size or s.batch_chunk_size,
            max_concurrent_chunks=options.max_concurrent_chunks or s.batch_max_concurrent_chunks,
            failure_threshold=(
                options.failure_threshold
                if options.failure_threshold is not None
                else s.batch_failure_threshold
            ),
            max_body_bytes=s.max_body_bytes,
            heartbeat_every=options.items_per_transaction,
            heartbeat_timeout_seconds=options.heartbeat_timeout_seconds,
            upsert_search_attributes=with_attributes,
        )
        workflow_id = batch_workflow_id(batch_id)
        try:
            # A running batch is joined; a closed one is not run again (its
            # items are done: see the report).
            await self._rpc(
                self.temporal.start_workflow(
                    BatchWorkflow.run,
                    input,
                    id=workflow_id,
                    task_queue=self.task_queue,
                    id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                    id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                    search_attributes=(
                        start_attributes(s, KIND_BATCH) if with_attributes else None
                    ),
                )
            )
        except WorkflowAlreadyStartedError:
            pass
        return BatchStarted(batch_id, total, staged, workflow_id)

    def _handle(self, batch_id: str) -> WorkflowHandle[BatchWorkflow, BatchResult]:
        return self.temporal.get_workflow_handle_for(
            BatchWorkflow.run, batch_workflow_id(require_batch_id(batch_id))
        )

    async def progress(self, batch_id: str) -> BatchProgress:
        """The batch's progress query (also answered after it closed, by a worker).

        Raises:
            InvalidInput: no such batch workflow.
            ProviderUnavailable: Temporal or the batch workers do not answer.
        """
        return await self._rpc(self._handle(batch_id).query(BatchWorkflow.progress))

    async def pause(self, batch_id: str) -> None:
        """Stops starting chunks (running ones finish)."""
        await self._rpc(self._handle(batch_id).signal(BatchWorkflow.pause))

    async def resume(self, batch_id: str) -> None:
        """Starts chunks again."""
        await self._rpc(self._handle(batch_id).signal(BatchWorkflow.resume))

    async def cancel(self, batch_id: str) -> None:
        """Ends the batch once its running chunks finish."""
        await self._rpc(self._handle(batch_id).signal(BatchWorkflow.cancel))

    async def result(self, batch_id: str) -> BatchResult:
        """Waits for the batch to end.

        Raises:
            PermanentError: the batch failed (``BatchFailed`` past its threshold).
        """
        try:
            return await self._rpc(self._handle(batch_id).result())
        except WorkflowFailureError as err:
            cause = err.cause
            if isinstance(cause, ApplicationError):
                raise domain_error(cause.type, cause.message) from None
            raise ProviderUnavailable(f"batch {batch_id} ended: {cause}") from None

    async def status(self, batch_id: str) -> WorkflowExecutionStatus | None:
        """The workflow's execution status."""
        described = await self._rpc(self._handle(batch_id).describe())
        return described.status

    async def report(self, batch_id: str, *, limit: int | None = None) -> BatchReport:
        """Counts and the first failed items (line and reason), from the database."""
        return await self._db(
            self.batches.report(batch_id, limit=limit or self._settings.batch_report_limit)
        )

    # --- retention -------------------------------------------------------------------

    async def create_schedule(self) -> bool:
        """Creates the missive-retention Schedule unless it exists; True when created."""
        return await self._rpc(
            ensure_retention_schedule(self.temporal, self._settings, task_queue=self.task_queue)
        )

    async def describe_schedule(
        self, schedule_id: str = RETENTION_SCHEDULE_ID
    ) -> ScheduleDescription:
        """The Schedule's spec, state, recent and next runs."""
        return await self._rpc(self.temporal.get_schedule_handle(schedule_id).describe())

    async def pause_schedule(self, schedule_id: str = RETENTION_SCHEDULE_ID) -> None:
        """Pauses the Schedule (no runs until unpaused)."""
        await self._rpc(
            self.temporal.get_schedule_handle(schedule_id).pause(note="paused by the starter")
        )

    async def unpause_schedule(self, schedule_id: str = RETENTION_SCHEDULE_ID) -> None:
        """Unpauses the Schedule."""
        await self._rpc(
            self.temporal.get_schedule_handle(schedule_id).unpause(note="unpaused by the starter")
        )

    async def trigger_schedule(self, schedule_id: str = RETENTION_SCHEDULE_ID) -> None:
        """Runs the cleanup now (skipped if a run is still going: overlap SKIP)."""
        await self._rpc(self.temporal.get_schedule_handle(schedule_id).trigger())

    async def restore(self, conversation_id: str, *, hold: bool = False) -> RestoreResult:
        """Brings a conversation's archived messages back (within the restore window)."""
        return await self._db(
            self.retention.restore(conversation_id, now=datetime.now(UTC), hold=hold)
        )

    async def set_policy(
        self,
        conversation_id: str,
        *,
        retention_days: int | None = None,
        clear_retention: bool = False,
        legal_hold: bool | None = None,
    ) -> tuple[int | None, bool]:
        """Sets a conversation's retention days and/or legal hold."""
        return await self._db(
            self.retention.set_policy(
                conversation_id,
                retention_days=retention_days,
                clear_retention=clear_retention,
                legal_hold=legal_hold,
            )
        )

    # --- error mapping ---------------------------------------------------------------

    async def _db(self, call: Awaitable[T]) -> T:
        try:
            return await call
        except MessagingError:
            raise
        except OSError as err:
            raise ProviderUnavailable(f"cannot reach PostgreSQL: {err}") from None

    async def _rpc(self, call: Awaitable[T]) -> T:
        try:
            return await call
        except (MessagingError, WorkflowFailureError, WorkflowAlreadyStartedError):
            raise
        except WorkflowQueryFailedError as err:
            raise ProviderUnavailable(f"the batch did not answer: {err}") from None
        except RPCTimeoutOrCancelledError:
            raise ProviderUnavailable("Temporal did not answer in time") from None
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                raise InvalidInput(f"not found: {err.message}") from None
            raise ProviderUnavailable(f"Temporal refused the call: {err.message}") from None


def staging_keys(settings: Settings) -> StagingCipher:
    """The keys the starter seals staged items with: derived from CODEC_KEYS, which the
    worker shares (staging encrypts no message, so MASTER_KEYS is not needed), or from
    MASTER_KEYS where CODEC_KEYS is unset (ALLOW_PLAINTEXT_PAYLOADS).

    Raises:
        InvalidInput: neither CODEC_KEYS nor MASTER_KEYS is set.
    """
    codec = staging_cipher(settings)
    if codec is not None:
        return codec
    if not settings.master_keyring:
        raise InvalidInput("staging a batch needs CODEC_KEYS (the worker's too) or MASTER_KEYS")
    return MessageCipher(
        settings.master_keyring, current_version=settings.master_key_version
    ).staging


def progress_line(p: BatchProgress) -> str:
    """One line describing a batch's progress."""
    eta = f", about {timedelta(seconds=round(p.eta_seconds))} left" if p.eta_seconds else ""
    return (
        f"batch {p.batch_id} ({p.kind}) {p.status.value}: {p.processed}/{p.total} items "
        f"({p.stored} stored, {p.failed} failed), {p.rate_per_second:.0f}/s{eta}"
        + (f"; {p.error}" if p.error else "")
    )


def as_dict(value: object) -> object:
    """A dataclass as a dict (for --json), anything else unchanged."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return value
