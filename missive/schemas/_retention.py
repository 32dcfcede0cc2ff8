"""Retention: the scheduled archive-and-purge run and its steps."""

# Annotations are evaluated, not postponed: see missive/schemas/__init__.py.

from dataclasses import dataclass, field
from datetime import datetime

from missive.validation import bounds


@dataclass(frozen=True)
class RetentionInput:
    """Input of RetentionWorkflow (the Schedule starts it with the defaults)."""

    chunk_size: int = field(default=0, metadata=bounds(0, 100_000))
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
