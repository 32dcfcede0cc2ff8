"""Workflow and activity inputs and results: frozen dataclasses, JSON on the wire.

New fields get defaults; a field a running workflow may hold is never renamed or
removed. These types are the contract for services in other languages too
(see the README).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from missive.validation import MAX_LIFECYCLE_WINDOW_SECONDS, MAX_RECEIPT_DETAIL_RECIPIENTS, bounds

_WINDOW = bounds(1, MAX_LIFECYCLE_WINDOW_SECONDS)
_DETAIL = bounds(0, MAX_RECEIPT_DETAIL_RECIPIENTS)


class ReceiptStatus(StrEnum):
    """What a recipient says about a message."""

    DELIVERED = "delivered"
    READ = "read"


class LifecyclePhase(StrEnum):
    """Where a message's lifecycle is."""

    VALIDATING = "validating"
    REJECTED = "rejected"
    PERSISTED = "persisted"
    FOLLOWING_RECEIPTS = "following_receipts"
    ALL_READ = "all_read"
    WINDOW_ELAPSED = "window_elapsed"


@dataclass(frozen=True)
class SendMessageInput:
    """Input of MessageLifecycleWorkflow: one message as its sender sent it."""

    conversation_id: str
    """The conversation (UUID)."""
    sender_id: str
    """The sending user (UUID); must take part in the conversation."""
    client_message_id: str
    """The sender's own id for this message; a resend with it is recognised."""
    body: str
    """The text. It travels only through the payload codec (encrypted) and is
    stored only encrypted; it never reaches a log."""
    max_body_bytes: int = field(default=16_384, metadata=bounds(1))
    """Largest body accepted, in UTF-8 bytes (the sender's MAX_BODY_BYTES). It can
    only lower the limit: the persisting worker enforces its own MAX_BODY_BYTES."""
    lifecycle_window_seconds: int = field(default=86_400, metadata=_WINDOW)
    """How long the lifecycle follows receipts before it ends unread (1 s to 30 days)."""
    receipt_detail_max_recipients: int = field(default=32, metadata=_DETAIL)
    """Up to this many recipients the workflow tracks each one (at most 1,024)."""
    request_id: str = ""
    """A random id of the send request that started the lifecycle: a later
    request with the same client_message_id is acked as a duplicate."""
    e2e_header: dict[str, Any] | None = None
    """End-to-end encrypted conversations only: the client's key metadata, stored
    and relayed untouched; ``body`` is then the client's base64 ciphertext."""
    mentions: list[str] = field(default_factory=list)
    """User ids the sender mentioned (the client names them, so e2e messages can
    mention too); mentions-only preferences and quiet-hours break-through use them."""
    notify: NotifyOptions | None = None
    """Notification settings at send time; None: this message notifies nobody."""


@dataclass(frozen=True)
class PersistMessageInput:
    """Input of the persist_message activity."""

    conversation_id: str
    """The conversation (UUID)."""
    sender_id: str
    """The sender (UUID)."""
    client_message_id: str
    """The sender's id for the message."""
    body: str
    """The plaintext body; encrypted before it touches the database."""
    max_body_bytes: int = field(default=16_384, metadata=bounds(1))
    """Size limit in UTF-8 bytes; the service's own MAX_BODY_BYTES caps it."""
    receipt_detail_max_recipients: int = field(default=32, metadata=_DETAIL)
    """Return recipient ids only up to this many."""
    request_id: str = ""
    """The send request that started the lifecycle (see SendMessageInput)."""
    e2e_header: dict[str, Any] | None = None
    """The key metadata of an end-to-end encrypted message (see SendMessageInput)."""


@dataclass(frozen=True)
class PersistMessageResult:
    """What persisting a message produced (ids only, never the body)."""

    message_id: str
    """Server id (deterministic from sender and client_message_id)."""
    conversation_id: str
    """The conversation."""
    seq: int
    """Position in the conversation; total order."""
    created_at: datetime
    """When the server stored it."""
    created: bool
    """False when the message already existed (a resend): nothing was written."""
    recipient_count: int
    """How many delivery rows the message has."""
    recipient_ids: list[str] = field(default_factory=list)
    """The recipients, when there are at most receipt_detail_max_recipients."""


@dataclass(frozen=True)
class BroadcastMessageInput:
    """Input of the broadcast_message activity: the id, never the body."""

    message_id: str
    """The message to announce as message:new to its conversation's room."""
    plan: PlanNotificationsInput | None = None
    """Also plan the message's notifications once it is announced (one local
    activity for both); the result then carries the plan, or None when planning
    failed and is left to the agenda's own plan_notifications."""


@dataclass(frozen=True)
class AcceptInput:
    """Argument of the ``accepted`` update: which send is asking."""

    fingerprint: str = ""
    """``send_fingerprint`` of the asking send. A resend that joins a running
    lifecycle with another body or conversation is refused by it; empty skips
    the check (an operator reading the ack)."""
    request_id: str = ""
    """The asking send's request id; another than the starting one's means the
    asking send is a resend, acked with ``duplicate=True``."""


@dataclass(frozen=True)
class MessageAccepted:
    """Result of the ``accepted`` update: what the sender's client is acked with."""

    message_id: str
    """Server id."""
    conversation_id: str
    """The conversation."""
    seq: int
    """Sequence number in the conversation."""
    created_at: datetime
    """When the server stored it."""
    duplicate: bool = False
    """True when this send repeated an earlier one with the same body."""


@dataclass(frozen=True)
class Acceptance:
    """Result of the ``acceptance`` query: the ack, or why there is none.

    A query cannot fail with a typed error through an encrypting failure
    converter, so the refusal travels as data.
    """

    accepted: MessageAccepted | None = None
    """The ack, once the message is stored."""
    error_type: str | None = None
    """The domain error's name when the message was refused."""
    error_message: str | None = None
    """Why it was refused."""


@dataclass(frozen=True)
class ReceiptInput:
    """Input of ReceiptWorkflow and of the apply_receipt activity.

    Exactly one of ``up_to_seq`` and ``message_id`` is given: "status up to and
    including this message" in the conversation.
    """

    user_id: str
    """The recipient reporting the receipt."""
    conversation_id: str
    """The conversation."""
    status: ReceiptStatus
    """delivered or read (read implies delivered)."""
    up_to_seq: int | None = None
    """Watermark: every message with seq <= this one."""
    message_id: str | None = None
    """Or a message id, taken as the watermark at its seq."""
    lifecycle_window_seconds: int = field(default=86_400, metadata=_WINDOW)
    """Messages older than this have no running lifecycle to tell."""
    receipt_detail_max_recipients: int = field(default=32, metadata=_DETAIL)
    """Lifecycles of messages with more recipients hear only of milestones."""
    notify: NotifyOptions | None = None
    """Notification settings (as for a send); set, the receipt also settles the reader's
    notifications (cancels what is no longer needed, clears pushes already shown)."""


@dataclass(frozen=True)
class ReceiptChange:
    """One message whose delivery for the reporting user moved forward."""

    message_id: str
    """The message."""
    sender_id: str
    """Its sender, who receives the receipt event."""
    client_message_id: str
    """With sender_id, names the message's lifecycle workflow."""
    seq: int
    """Its sequence number."""
    status: ReceiptStatus
    """The new status of the reporting user's delivery."""
    at: datetime
    """When it changed."""
    recipient_count: int = 0
    """The message's recipients in all."""
    delivered_count: int = 0
    """How many of them have it delivered (or read), after this change."""
    read_count: int = 0
    """How many have read it, after this change."""
    within_window: bool = True
    """Whether its lifecycle workflow may still be running."""

    def lifecycle_reacts(self, detail_max_recipients: int) -> bool:
        """Whether the message's lifecycle is told of this change: in small
        conversations every receipt, in large ones only the milestones (everyone has
        it delivered, everyone has read it)."""
        if self.recipient_count <= detail_max_recipients:
            return True
        if self.read_count >= self.recipient_count:
            return True
        return (
            self.status is ReceiptStatus.DELIVERED and self.delivered_count >= self.recipient_count
        )


@dataclass(frozen=True)
class ApplyReceiptResult:
    """What one receipt changed; only forward moves are listed."""

    user_id: str
    """The reporting recipient."""
    conversation_id: str
    """The conversation."""
    status: ReceiptStatus
    """The status applied."""
    up_to_seq: int
    """The watermark applied."""
    changed: int
    """How many deliveries moved forward."""
    changes: list[ReceiptChange] = field(default_factory=list)
    """The changed messages inside the lifecycle window (newest first, capped)."""


@dataclass(frozen=True)
class ReceiptResult:
    """Result of ReceiptWorkflow."""

    changed: int
    """Deliveries that moved forward (0 for a repeated or late receipt)."""
    up_to_seq: int
    """The watermark applied."""
    notified_lifecycles: int = 0
    """Lifecycle workflows signalled about it."""


@dataclass(frozen=True)
class ReceiptsChanged:
    """Signal to a lifecycle workflow: receipts for its message moved forward."""

    recipient_count: int
    """The message's recipients in all."""
    delivered_count: int
    """How many have it delivered (or read)."""
    read_count: int
    """How many have read it."""
    recipient_id: str | None = None
    """The recipient whose receipt this is (small conversations only)."""
    status: ReceiptStatus | None = None
    """That recipient's new status."""
    at: datetime | None = None
    """When it changed."""
    recipients: list[RecipientReceipt] = field(default_factory=list)
    """Several recipients' receipts at once (small conversations only): the gateway's
    receipt batcher tells a lifecycle of everything in its window in one signal."""


@dataclass(frozen=True)
class RecipientReceipt:
    """One recipient's new status of a message, in a ReceiptsChanged signal."""

    recipient_id: str
    """The recipient."""
    status: ReceiptStatus
    """Their new status (read implies delivered)."""
    at: datetime
    """When it changed."""


@dataclass
class RecipientState:
    """One recipient's status as the lifecycle knows it."""

    status: str = "sent"
    """sent, delivered or read."""
    delivered_at: datetime | None = None
    """When it was delivered."""
    read_at: datetime | None = None
    """When it was read."""


@dataclass
class MessageStatus:
    """Result of the ``status`` query of MessageLifecycleWorkflow."""

    phase: LifecyclePhase = LifecyclePhase.VALIDATING
    """Where the lifecycle is."""
    message_id: str | None = None
    """Server id, once persisted."""
    conversation_id: str | None = None
    """The conversation."""
    seq: int | None = None
    """Sequence number, once persisted."""
    recipient_count: int = 0
    """Recipients in all."""
    delivered_count: int = 0
    """Delivered (or read)."""
    read_count: int = 0
    """Read."""
    recipients: dict[str, RecipientState] = field(default_factory=dict)
    """Per recipient, when the conversation is small enough to track each one."""
    per_recipient: bool = True
    """False for large groups: only the counts are kept (the database has the rest)."""
    error: str | None = None
    """Why the message was rejected, when it was."""
    created_at: datetime | None = None
    """When the message was stored, once persisted."""
    duplicate: bool = False
    """Whether the row already existed when this lifecycle persisted it."""


@dataclass(frozen=True)
class MessageLifecycleResult:
    """Result of MessageLifecycleWorkflow."""

    message_id: str
    """Server id."""
    seq: int
    """Sequence number."""
    phase: LifecyclePhase
    """all_read or window_elapsed."""
    recipient_count: int
    """Recipients in all."""
    delivered_count: int
    """Delivered (or read) when it ended."""
    read_count: int
    """Read when it ended."""


# --- batch and retention ---


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


@dataclass(frozen=True)
class BatchFailure:
    """One failed item of a batch report."""

    item_no: int
    """Item number in the batch."""
    line_no: int
    """Line of the import file it came from."""
    reason: str
    """Why it failed (the error type and message)."""


@dataclass(frozen=True)
class BatchReport:
    """What a batch did, read from the database (available after the workflow closed)."""

    batch_id: str
    """The batch."""
    kind: str
    """import or announcement."""
    total: int
    """Items staged."""
    pending: int
    """Items not processed yet."""
    stored: int
    """Items stored as messages."""
    failed: int
    """Items that failed permanently."""
    failures: list[BatchFailure] = field(default_factory=list)
    """The first failed items (up to BATCH_REPORT_LIMIT), by item number."""


@dataclass(frozen=True)
class RetentionInput:
    """Input of RetentionWorkflow (the Schedule starts it with the defaults)."""

    chunk_size: int = 0
    """Messages per transaction; 0 takes the worker's RETENTION_CHUNK_SIZE."""


@dataclass(frozen=True)
class RetentionStepInput:
    """Input of the archive_expired and purge_archived activities."""

    now: datetime
    """The run's reference time (fixed, so a retry selects the same rows)."""
    chunk_size: int = 0
    """Messages per transaction; 0 takes the worker's RETENTION_CHUNK_SIZE."""


@dataclass(frozen=True)
class RetentionStepResult:
    """What one retention step did."""

    messages: int
    """Messages archived (or purged)."""
    deliveries: int = 0
    """Always 0 since deliveries are no longer archived (revision 0006: the restore
    rebuilds them from the watermarks); kept for results already recorded."""
    transactions: int = 0
    """Transactions it took."""
    notifications: int = 0
    """Notification rows deleted with the purged messages (purge step only)."""


@dataclass(frozen=True)
class RetentionResult:
    """Result of RetentionWorkflow."""

    archived: int
    """Expired messages moved to the archive."""
    purged: int
    """Archived messages deleted for good (past the restore window)."""
    archived_deliveries: int = 0
    """Always 0 since deliveries are no longer archived (revision 0006); kept for
    results already recorded."""
    purged_notifications: int = 0
    """Notification rows deleted with the purged messages."""


@dataclass(frozen=True)
class RestoreResult:
    """What a restore brought back."""

    conversation_id: str
    """The conversation."""
    messages: int
    """Messages restored."""
    deliveries: int
    """Delivery rows restored."""
    legal_hold: bool
    """Whether the conversation is now on legal hold (so the next run keeps them)."""


# --- encryption: key rotation ---


@dataclass(frozen=True)
class MasterKeyRotationInput:
    """Input of MasterKeyRotationWorkflow: re-wrap every data key under one master key."""

    master_key_version: int | None = None
    """The master key version to re-wrap under; the workers' MASTER_KEY_VERSION must
    be it (a worker configured otherwise refuses). None: whatever the workers use."""
    chunk_size: int = 500
    """Data keys re-wrapped per transaction (one bulk UPDATE)."""
    chunks_per_activity: int = 20
    """Chunks one activity run does, heartbeating after each, before reporting back."""
    rewrapped: int = 0
    """Data keys re-wrapped by earlier runs (carried over continue-as-new)."""


@dataclass(frozen=True)
class RewrapDataKeysInput:
    """Input of the rewrap_data_keys activity."""

    master_key_version: int | None = None
    """See MasterKeyRotationInput."""
    chunk_size: int = 500
    """Data keys per transaction."""
    max_chunks: int = 20
    """Chunks before returning."""


@dataclass(frozen=True)
class RewrapDataKeysResult:
    """What one run of rewrap_data_keys did."""

    master_key_version: int
    """The master key version every re-wrapped key now uses."""
    rewrapped: int
    """Data keys re-wrapped in this run."""
    remaining: int
    """Data keys still wrapped by another master version."""


@dataclass(frozen=True)
class MasterKeyRotationResult:
    """Result of MasterKeyRotationWorkflow."""

    master_key_version: int
    """Every data key is now wrapped by this master key version."""
    rewrapped: int
    """Data keys re-wrapped in all."""


@dataclass(frozen=True)
class DataKeyRotationInput:
    """Input of DataKeyRotationWorkflow: a new data key for one conversation."""

    conversation_id: str
    """The conversation (UUID)."""
    chunk_size: int = 500
    """Messages re-encrypted per transaction (one bulk UPDATE)."""
    chunks_per_activity: int = 20
    """Chunks one activity run does, heartbeating after each, before reporting back."""
    settle_seconds: float = 20.0
    """Wait before the final sweep, so a send that read the old key version before
    the switch (it commits within DB_WRITE_TIMEOUT) is re-encrypted too."""
    to_version: int | None = None
    """The new data key version, once chosen (carried over continue-as-new)."""
    reencrypted: int = 0
    """Messages re-encrypted by earlier runs (carried over continue-as-new)."""
    swept: bool = False
    """Whether the settle wait is behind (carried over continue-as-new)."""


@dataclass(frozen=True)
class ConversationKeyInput:
    """Input of the data_key_state and create_data_key activities."""

    conversation_id: str
    """The conversation (UUID)."""
    version: int | None = None
    """create_data_key: the version to create and switch the conversation to."""


@dataclass(frozen=True)
class ConversationKeyState:
    """A conversation's current data key version."""

    conversation_id: str
    """The conversation."""
    key_version: int
    """The version new messages are encrypted with."""


@dataclass(frozen=True)
class ReencryptMessagesInput:
    """Input of the reencrypt_messages activity."""

    conversation_id: str
    """The conversation."""
    to_version: int
    """Every message under an older data key version moves to this one."""
    chunk_size: int = 500
    """Messages per transaction."""
    max_chunks: int = 20
    """Chunks before returning."""


@dataclass(frozen=True)
class ReencryptMessagesResult:
    """What one run of reencrypt_messages did."""

    reencrypted: int
    """Messages re-encrypted in this run."""
    remaining: int
    """Messages of the conversation still under an older data key version."""


@dataclass(frozen=True)
class DataKeyRotationResult:
    """Result of DataKeyRotationWorkflow."""

    conversation_id: str
    """The conversation."""
    key_version: int
    """Its data key version now; every message uses it."""
    reencrypted: int
    """Messages re-encrypted in all."""


@dataclass
class KeyRotationProgress:
    """Result of the ``progress`` query of both rotation workflows."""

    phase: str = "starting"
    """starting, creating_key, reencrypting, settling, rewrapping or done."""
    key_version: int | None = None
    """The target master or data key version, once known."""
    done: int = 0
    """Keys re-wrapped or messages re-encrypted so far."""
    remaining: int | None = None
    """Left to do, as of the last chunk; None before the first."""


@dataclass(frozen=True)
class KeyReportInput:
    """Input of KeyReportWorkflow and of the key_usage_report activity."""


@dataclass(frozen=True)
class MasterKeyUsage:
    """How many data keys one master key version wraps."""

    version: int
    """The master key version."""
    data_keys: int
    """Data keys wrapped by it."""


@dataclass(frozen=True)
class DataKeyUsage:
    """How much one data key version (across conversations) is in use."""

    version: int
    """The data key version."""
    conversations: int
    """Conversations whose current version this is."""
    messages: int
    """Messages encrypted with it."""


@dataclass(frozen=True)
class KeyUsageReport:
    """Which key versions are still in use, so old ones can be retired safely."""

    current_master_key_version: int
    """The master key version new data keys are wrapped by."""
    configured_master_key_versions: list[int] = field(default_factory=list)
    """MASTER_KEYS of the worker that made the report."""
    master_keys: list[MasterKeyUsage] = field(default_factory=list)
    """Master key versions that wrap at least one data key."""
    removable_master_key_versions: list[int] = field(default_factory=list)
    """Configured, not current, and wrapping nothing: safe to drop from MASTER_KEYS."""
    missing_master_key_versions: list[int] = field(default_factory=list)
    """In use but not configured: those data keys cannot be unwrapped."""
    data_keys: list[DataKeyUsage] = field(default_factory=list)
    """Data key versions with their conversations and messages."""
    conversations_with_old_messages: int = 0
    """Conversations with messages under an older data key than their current one
    (a data-key rotation is running or was not run to completion)."""


# --- search ---


@dataclass(frozen=True)
class SearchIndexerInput:
    """Input of SearchIndexerWorkflow; carries the totals across continue-as-new."""

    indexed: int = 0
    """Documents upserted so far."""
    deleted: int = 0
    """Documents removed so far."""
    skipped: int = 0
    """Messages marked done without a document (e2e conversations, undecryptable)."""


@dataclass(frozen=True)
class IndexerRunResult:
    """What one run of the run_indexer activity did before it returned."""

    indexed: int = 0
    """Documents upserted."""
    deleted: int = 0
    """Documents removed."""
    skipped: int = 0
    """Messages marked done without a document."""
    batches: int = 0
    """Import calls made."""


@dataclass
class SearchIndexerStatus:
    """Result of the indexer's ``progress`` query."""

    indexed: int = 0
    """Documents upserted since the workflow first started."""
    deleted: int = 0
    """Documents removed."""
    skipped: int = 0
    """Messages marked done without a document."""
    runs: int = 0
    """Indexer activity runs completed in this workflow run."""


@dataclass(frozen=True)
class RebuildInput:
    """Input of SearchRebuildWorkflow."""

    batch_size: int = 2_000
    """Documents per import call while filling the new collection."""


@dataclass(frozen=True)
class RebuildBeginInput:
    """Input of the begin_rebuild activity."""

    version: int
    """The new collection is ``<alias>_v<version>`` (the workflow's start time)."""


@dataclass(frozen=True)
class RebuildBegun:
    """Result of begin_rebuild."""

    collection: str
    """The new collection."""
    previous: str | None
    """The collection the alias pointed at when the rebuild began."""
    started_at: datetime
    """Database time when the rebuild began: index writes after it are replayed
    into the new collection once the alias is swapped."""
    total: int
    """Messages to index (live messages of standard conversations), for progress."""


@dataclass(frozen=True)
class RebuildFillInput:
    """Input of the fill_rebuild activity: continue after ``after_id``."""

    collection: str
    """The collection being filled."""
    after_id: str = ""
    """Keyset cursor: the last message id already imported ("" from the start)."""
    batch_size: int = 2_000
    """Documents per import call."""


@dataclass(frozen=True)
class RebuildFillResult:
    """Result of fill_rebuild (also its heartbeat details)."""

    after_id: str
    """The cursor reached."""
    indexed: int
    """Documents imported by this activity."""
    done: bool
    """True when every message has been read."""


@dataclass(frozen=True)
class RebuildFinishInput:
    """Input of the finish_rebuild activity."""

    collection: str
    """The filled collection the alias now points at."""
    started_at: datetime
    """When the rebuild began (see RebuildBegun)."""


@dataclass(frozen=True)
class RebuildFinishResult:
    """Result of finish_rebuild."""

    dropped: list[str] = field(default_factory=list)
    """Older collections dropped."""
    replayed: int = 0
    """Index writes made during the rebuild, queued again for the new collection."""


@dataclass
class RebuildProgress:
    """Result of the rebuild's ``progress`` query."""

    phase: str = "starting"
    """starting, filling, swapping, done."""
    collection: str | None = None
    """The collection being built."""
    previous: str | None = None
    """The collection the alias pointed at before."""
    total: int = 0
    """Messages to index when the rebuild began."""
    indexed: int = 0
    """Documents imported so far."""
    cursor: str = ""
    """The last message id imported."""
    dropped: list[str] = field(default_factory=list)
    """Collections dropped after the swap."""


@dataclass(frozen=True)
class SearchKeyInput:
    """Input of SearchKeyWorkflow and of issue_search_key."""

    user_id: str
    """Whose key: it can only search this user's conversations."""
    conversation_id: str | None = None
    """Narrow to one conversation; refused with NotAMember unless the user is in it."""


@dataclass(frozen=True)
class SearchKeyGrant:
    """A short-lived Typesense scoped search key for one user."""

    key: str
    """The scoped key; its embedded filter names the user's conversations."""
    collection: str
    """The alias to search."""
    expires_at: int
    """Unix time after which Typesense refuses the key."""
    conversation_count: int
    """How many conversations it covers (0: nothing to search, no key needed)."""


@dataclass(frozen=True)
class SearchQuery:
    """What a user searches for; filters are values, never filter strings."""

    text: str
    """The words to find (typo-tolerant); 1-512 characters."""
    conversation_id: str | None = None
    """Only this conversation (the user must take part in it)."""
    sender_id: str | None = None
    """Only messages from this user."""
    since: datetime | None = None
    """Only messages created at or after this time (timezone-aware)."""
    until: datetime | None = None
    """Only messages created at or before this time (timezone-aware)."""
    page: int = 1
    """1-based page."""
    per_page: int = 20
    """Hits per page, 1-100."""


@dataclass(frozen=True)
class SearchHit:
    """One message found."""

    message_id: str
    """The message."""
    conversation_id: str
    """Its conversation."""
    sender_id: str
    """Its sender."""
    seq: int
    """Its sequence number."""
    created_at: datetime
    """When it was sent."""
    text: str
    """Its text."""
    snippet: str
    """The matching part, matched words wrapped in ``<mark>``."""
    edited_at: datetime | None = None
    """When it was last edited, if it was."""


@dataclass(frozen=True)
class SearchResult:
    """A page of hits, best first."""

    found: int
    """Hits in all pages."""
    page: int
    """This page (1-based)."""
    per_page: int
    """Page size asked for."""
    hits: list[SearchHit] = field(default_factory=list)
    """This page's hits (empty past the last page)."""


@dataclass(frozen=True)
class SearchCheckInput:
    """Input of SearchCheckWorkflow and of check_index."""

    repair: bool = False
    """Queue the missing messages again and the stray documents for removal."""
    report_limit: int = 100
    """Most conversations listed in the result."""


@dataclass(frozen=True)
class ConversationGap:
    """One conversation whose index does not match PostgreSQL."""

    conversation_id: str
    """The conversation (or "?" for stray documents of unknown messages)."""
    expected: int
    """Messages that should be in the index (indexed, live, standard)."""
    indexed: int
    """Documents in the index for it."""
    missing: int
    """Messages with no document."""
    extra: int
    """Documents with no live message."""


@dataclass(frozen=True)
class SearchCheckResult:
    """What check_index found (and repaired)."""

    conversations: int
    """Conversations compared."""
    expected: int
    """Messages that should be in the index."""
    indexed: int
    """Documents in the index."""
    pending: int
    """Messages waiting for the indexer (not counted as gaps)."""
    missing: int
    """Messages missing from the index."""
    extra: int
    """Documents whose message is gone, deleted or not searchable."""
    gaps: list[ConversationGap] = field(default_factory=list)
    """Conversations with a gap (up to report_limit)."""
    repaired: bool = False
    """Whether the gaps were queued for the indexer."""


# --- notifications ---


class Channel(StrEnum):
    """A way to reach a recipient, in escalation (and fallback) order."""

    IN_APP = "in_app"
    PUSH = "push"
    EMAIL = "email"
    SMS = "sms"


class NotificationStatus(StrEnum):
    """Where one row of the notification log is. Only the first three move on."""

    PENDING = "pending"
    """Planned; waits for its due time."""
    QUEUED = "queued"
    """Due; handed to a sender or to the recipient's digest."""
    SENDING = "sending"
    """The intent is recorded and the provider call is in flight."""
    SENT = "sent"
    """The provider accepted it (provider_ref says what it answered)."""
    DIGESTED = "digested"
    """Folded into a digest notification (digest_id names it)."""
    CANCELLED = "cancelled"
    """Not needed any more: the recipient read (or, for push, received) the message."""
    SKIPPED = "skipped"
    """Nothing to send to or allowed (no device, no address, every channel off)."""
    FAILED = "failed"
    """A permanent provider error (reason names it); not retried."""
    FELL_BACK = "fell_back"
    """The channel stayed down past its deadline; the next allowed channel got it."""


@dataclass(frozen=True)
class NotifyOptions:
    """Notification settings a message's lifecycle passes to its notifications.

    Taken from Settings when the message is sent (workflows cannot read the
    environment); see the NOTIFY_* settings for what each means.
    """

    grace_seconds: int = 60
    """Push after this long if still not delivered."""
    email_delay_seconds: int = 900
    """Email (digest) after this long if still unread."""
    sms_delay_seconds: int = 3_600
    """SMS (digest, opted-in recipients only) after this long if still unread."""
    digest_window_seconds: int = 300
    """A digest gathers for this long after its first message."""
    push_deadline_seconds: int = 600
    """Push retries this long, then falls back."""
    email_deadline_seconds: int = 1_800
    """Email retries this long, then falls back."""
    sms_deadline_seconds: int = 1_800
    """SMS retries this long, then gives up."""
    push_batch_size: int = 100
    """Pushes per send activity."""
    task_queue: str = "missive-notify"
    """Queue of the notification workflows and their database activities."""
    push_task_queue: str = "missive-notify-push"
    """Queue of send_push / clear_pushes."""
    email_task_queue: str = "missive-notify-email"
    """Queue of send_email."""
    sms_task_queue: str = "missive-notify-sms"
    """Queue of send_sms."""


@dataclass(frozen=True)
class NotificationPreferences:
    """A user's notification preferences (what applies where a conversation says nothing)."""

    in_app: bool = True
    """In-app notifications (the bell)."""
    push: bool = True
    """Push to the user's devices."""
    email: bool = True
    """Email digests."""
    sms: bool = False
    """SMS digests: off unless the user opts in."""
    mentions_only: bool = False
    """Only messages that mention the user notify."""
    quiet_start: str | None = None
    """Start of quiet hours, ``HH:MM`` in the user's timezone (None: no quiet hours)."""
    quiet_end: str | None = None
    """End of quiet hours, ``HH:MM`` (may be earlier than the start: overnight)."""
    quiet_mentions: bool = False
    """Mentions break through quiet hours."""


@dataclass(frozen=True)
class ConversationPreferences:
    """One user's overrides for one conversation; None inherits the user's choice."""

    muted: bool = False
    """No notification at all from this conversation."""
    mentions_only: bool | None = None
    """Only mentions notify in this conversation."""
    in_app: bool | None = None
    """Override of NotificationPreferences.in_app."""
    push: bool | None = None
    """Override of NotificationPreferences.push."""
    email: bool | None = None
    """Override of NotificationPreferences.email."""
    sms: bool | None = None
    """Override of NotificationPreferences.sms."""


@dataclass(frozen=True)
class NotifyMessageInput:
    """Input of NotifyMessageWorkflow: one stored message to notify its recipients of."""

    message_id: str
    """The message."""
    conversation_id: str
    """Its conversation."""
    sender_id: str
    """Its sender (never notified of their own message)."""
    seq: int
    """Its sequence number in the conversation."""
    created_at: datetime
    """When it was stored; every step's delay counts from here."""
    mentions: list[str] = field(default_factory=list)
    """Mentioned user ids."""
    options: NotifyOptions = field(default_factory=NotifyOptions)
    """Delays, deadlines, batch size and queues."""


@dataclass(frozen=True)
class NotifyMessageResult:
    """What a message's notifications came to (counts of log rows)."""

    planned: int = 0
    """Rows planned (every channel, every recipient)."""
    in_app: int = 0
    """In-app notifications created."""
    pushed: int = 0
    """Pushes sent (one per recipient, to all their devices)."""
    digested: int = 0
    """Handed to recipients' email / SMS digests."""
    cancelled: int = 0
    """Cancelled because the recipient received or read the message first."""
    skipped: int = 0
    """Skipped, with a recorded reason."""
    failed: int = 0
    """Permanent failures, recorded."""
    fell_back: int = 0
    """Moved to the next channel after a channel stayed down."""
    fallback_sent: int = 0
    """Sent by email / SMS at once as a push's fallback (no digest window)."""


@dataclass(frozen=True)
class PlanNotificationsInput:
    """Input of plan_notifications."""

    message: NotifyMessageInput
    """The message and options."""
    now: datetime
    """The workflow's time (so timers and time-skipping agree)."""


@dataclass(frozen=True)
class PlanNotificationsResult:
    """The agenda written for a message."""

    planned: int
    """Pending rows written."""
    skipped: int
    """Rows recorded as skipped (reason)."""
    next_due: datetime | None
    """Earliest due time of a pending row; None: nothing to do."""
    dispatched: DispatchDueResult | None = None
    """What was due at once (the in-app step), dispatched by the same activity;
    ``next_due`` is then what is pending after it."""


@dataclass(frozen=True)
class DigestItem:
    """One due email / SMS notification handed to the recipient's digest."""

    notification_id: str
    """The log row."""
    recipient_id: str
    """Who gets the digest."""
    channel: Channel
    """email or sms."""


@dataclass(frozen=True)
class DispatchDueInput:
    """Input of dispatch_due."""

    message_id: str
    """The message whose due rows to handle."""
    options: NotifyOptions
    """Options (quiet hours are read from the database)."""
    now: datetime
    """The workflow's time."""
    handed_out_at: list[datetime] | None = None
    """When the caller's earlier dispatches of this message ran (and its plan, if that
    dispatched): rows queued at any other time were queued by a dispatch whose result
    was lost, and are handed out again. None: no such recovery (callers before it)."""


@dataclass(frozen=True)
class DispatchDueResult:
    """What dispatch_due did with the rows due by ``now``."""

    push: list[str] = field(default_factory=list)
    """Push rows now queued for send_push."""
    digests: list[DigestItem] = field(default_factory=list)
    """Email / SMS rows now queued for the recipients' digests."""
    in_app: int = 0
    """In-app notifications created (and emitted) here."""
    cancelled: int = 0
    """Rows cancelled: received / read meanwhile, muted, or no longer wanted."""
    skipped: int = 0
    """Rows skipped with a reason."""
    deferred: int = 0
    """Rows moved to the end of the recipient's quiet hours."""
    next_due: datetime | None = None
    """Earliest due time of a row still pending; None: none left."""
    recovered: int = 0
    """Of ``push`` and ``digests``, rows a dispatch whose result was lost had queued."""


@dataclass(frozen=True)
class QueueDigestsInput:
    """Input of queue_digests: signal-with-start each recipient's digest."""

    items: list[DigestItem]
    """The due email / SMS rows."""
    options: NotifyOptions
    """Window, deadlines and queues for the digest workflows."""


@dataclass(frozen=True)
class QueueDigestsResult:
    """How many digest workflows were signalled."""

    signalled: int


@dataclass(frozen=True)
class SendNotificationsInput:
    """Input of send_push / send_email / send_sms / clear_pushes: log row ids."""

    notification_ids: list[str]
    """Rows to send (rows already sent, cancelled or failed are left alone)."""


@dataclass(frozen=True)
class ClearPushesInput:
    """Input of ClearPushesWorkflow: pushes already shown that the reader has now read."""

    notification_ids: list[str]
    """The push rows to clear on the reader's devices (each row is cleared once)."""
    push_task_queue: str
    """The push provider's task queue (NotifyOptions.push_task_queue)."""


@dataclass(frozen=True)
class SendNotificationsResult:
    """Outcomes of one send activity."""

    sent: int = 0
    """Accepted by the provider."""
    failed: int = 0
    """Permanent errors, recorded on the rows."""
    cancelled: int = 0
    """Found read / received just before sending."""
    skipped: int = 0
    """Nothing to send to (no device / address / number), recorded."""
    removed_tokens: int = 0
    """Device tokens FCM called invalid, deleted."""


@dataclass(frozen=True)
class FallBackInput:
    """Input of fall_back: rows whose channel stayed down past its deadline."""

    notification_ids: list[str]
    """The rows that could not be sent."""
    channel: Channel
    """The channel that failed."""
    reason: str
    """The last error, recorded on the rows."""
    now: datetime
    """The workflow's time."""


@dataclass(frozen=True)
class FallBackResult:
    """Where the rows went."""

    channel: Channel | None = None
    """The next channel (None: no other channel allowed for anyone)."""
    notification_ids: list[str] = field(default_factory=list)
    """New rows on ``channel``, queued to send now."""
    failed: int = 0
    """Rows with no further channel, recorded as failed."""
    fell_back: int = 0
    """Rows moved on."""
    sms_notification_ids: list[str] = field(default_factory=list)
    """When ``channel`` is email: new SMS rows, queued, for recipients who take no
    email but do take SMS (a push fallback skips straight to SMS for them); send
    them with send_sms as well."""


@dataclass(frozen=True)
class NotificationDigestInput:
    """Input of NotificationDigestWorkflow (one per recipient and channel)."""

    recipient_id: str
    """Who gets the digest."""
    channel: Channel
    """email or sms."""
    options: NotifyOptions = field(default_factory=NotifyOptions)
    """Window, deadlines and queues."""
    pending: list[str] = field(default_factory=list)
    """Rows carried over by continue-as-new."""


@dataclass(frozen=True)
class DigestItems:
    """Signal of NotificationDigestWorkflow: more rows for the digest."""

    notification_ids: list[str]


@dataclass(frozen=True)
class PrepareDigestInput:
    """Input of prepare_digest."""

    recipient_id: str
    """The recipient."""
    channel: Channel
    """email or sms."""
    notification_ids: list[str]
    """The gathered rows."""
    now: datetime
    """The workflow's time."""


@dataclass(frozen=True)
class PrepareDigestResult:
    """The digest row to send, or why not now."""

    notification_id: str | None = None
    """The digest row (queued) to send; None: nothing to send now."""
    items: int = 0
    """Messages it covers."""
    cancelled: int = 0
    """Gathered rows dropped because read meanwhile (or no longer wanted)."""
    skipped: int = 0
    """Rows skipped with a reason (no address / number)."""
    defer_until: datetime | None = None
    """Quiet hours: try again then with the same rows."""


@dataclass(frozen=True)
class NotificationDigestResult:
    """What one digest workflow run sent."""

    digests: int = 0
    """Digest notifications sent."""
    items: int = 0
    """Messages they covered."""
    cancelled: int = 0
    """Rows dropped because read first."""


@dataclass(frozen=True)
class SettleNotificationsInput:
    """Input of settle_notifications: a receipt moved a reader's watermark."""

    user_id: str
    """The reader."""
    conversation_id: str
    """The conversation."""
    up_to_seq: int
    """The watermark."""
    status: ReceiptStatus
    """delivered cancels pending pushes; read cancels everything and reads in-app rows."""
    now: datetime
    """The workflow's time."""


@dataclass(frozen=True)
class SettleNotificationsResult:
    """What a receipt did to the reader's notifications."""

    cancelled: int = 0
    """Pending / queued rows cancelled."""
    in_app_read: int = 0
    """In-app notifications marked read."""
    clear_push_ids: list[str] = field(default_factory=list)
    """Pushes already shown that a data message should now clear."""
