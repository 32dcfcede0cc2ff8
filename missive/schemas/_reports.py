"""What the starter reads from the database after a job: a batch's report, a restore.

Not workflow or activity types: the starter calls the services directly
(``starter batch report``, ``starter retention restore``), so they never enter a history.
"""

# Annotations are evaluated, not postponed: see missive/schemas/__init__.py.

from dataclasses import dataclass, field


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
