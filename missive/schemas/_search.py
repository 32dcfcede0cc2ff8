"""Search: the indexer, the rebuild, scoped keys and the index check."""

# Annotations are evaluated, not postponed: see missive/schemas/__init__.py.

from dataclasses import dataclass, field
from datetime import datetime

from missive.validation import bounds


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

    batch_size: int = field(default=2_000, metadata=bounds(1, 10_000))
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
