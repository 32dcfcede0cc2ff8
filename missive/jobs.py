"""Names of the batch and retention jobs: task queue, workflow ids, Schedule, search attributes."""

from __future__ import annotations

TASK_QUEUE_BATCH = "missive-batch"
"""Batch and retention workflows and their (long, heartbeating) activities."""

BATCH_WORKFLOW_PREFIX = "batch"
RETENTION_WORKFLOW_PREFIX = "retention"

RETENTION_SCHEDULE_ID = "missive-retention"
"""The Temporal Schedule that runs the retention cleanup."""

SEARCH_ATTRIBUTE_PROGRESS = "MissiveBatchProgress"
"""Int: percent of a batch's items finished (for the Web UI's list and filters)."""
SEARCH_ATTRIBUTE_STATUS = "MissiveBatchStatus"
"""Keyword: running, paused, completed, failed or cancelled."""

EVENT_MESSAGES_BATCH = "messages:batch"
"""Compact event: many messages of one conversation were stored by a batch."""


def batch_workflow_id(batch_id: str) -> str:
    """The batch workflow id: one per batch."""
    return f"{BATCH_WORKFLOW_PREFIX}-{batch_id}"


def batch_client_message_id(batch_id: str, item_no: int) -> str:
    """The client_message_id of a batch item that names none: stable across reruns."""
    return f"batch:{batch_id}:{item_no}"
