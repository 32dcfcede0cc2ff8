"""RetentionWorkflow: archive expired messages, then purge the archive past the restore window."""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.retention import RetentionActivities
    from missive.schemas import RetentionInput, RetentionResult, RetentionStepInput
    from workflows import policies


@workflow.defn
class RetentionWorkflow:
    """One cleanup run, started by the ``missive-retention`` Schedule (or by hand).

    Both steps use the run's start time as "now", so a retried step selects
    the same rows; each one heartbeats its totals after every bounded transaction.
    """

    @workflow.run
    async def run(self, input: RetentionInput) -> RetentionResult:
        """Archives, then purges; returns how many messages each step moved."""
        step = RetentionStepInput(now=workflow.now(), chunk_size=input.chunk_size)
        archived = await workflow.execute_activity_method(
            RetentionActivities.archive_expired,
            step,
            start_to_close_timeout=policies.RETENTION_STEP_TIMEOUT,
            heartbeat_timeout=policies.RETENTION_HEARTBEAT,
            retry_policy=policies.RETENTION_RETRY,
        )
        purged = await workflow.execute_activity_method(
            RetentionActivities.purge_archived,
            step,
            start_to_close_timeout=policies.RETENTION_STEP_TIMEOUT,
            heartbeat_timeout=policies.RETENTION_HEARTBEAT,
            retry_policy=policies.RETENTION_RETRY,
        )
        return RetentionResult(
            archived=archived.messages,
            purged=purged.messages,
            purged_notifications=purged.notifications,
        )
