"""Retention activities: archive expired messages, purge the archive; both heartbeat totals."""

from __future__ import annotations

from temporalio import activity

from activities.errors import translate_errors
from missive.metrics import Metrics
from missive.schemas import RetentionStepInput, RetentionStepResult
from missive.services.retention import RetentionService


def _resumed() -> RetentionStepResult | None:
    details = activity.info().heartbeat_details
    if not details:
        return None
    done = details[0]
    if isinstance(done, dict):  # the default converter hands back plain JSON
        return RetentionStepResult(**done)
    return done if isinstance(done, RetentionStepResult) else None


async def _heartbeat(done: RetentionStepResult) -> None:
    activity.heartbeat(done)


class RetentionActivities:
    """Thin activities over RetentionService."""

    def __init__(self, retention: RetentionService, *, metrics: Metrics | None = None):
        self._retention = retention
        self._metrics = metrics

    @activity.defn
    @translate_errors
    async def archive_expired(self, input: RetentionStepInput) -> RetentionStepResult:
        """Moves expired messages to the archive, a bounded transaction at a time.

        Each transaction re-selects what is still expired, so a retry carries on
        where the crashed attempt stopped; the heartbeated totals carry the counts.
        """
        result = await self._retention.archive_expired(
            input.now, chunk_size=input.chunk_size, on_progress=_heartbeat, start=_resumed()
        )
        if self._metrics is not None:
            self._metrics.cleanup("archived", result.messages)
        return result

    @activity.defn
    @translate_errors
    async def purge_archived(self, input: RetentionStepInput) -> RetentionStepResult:
        """Deletes archived messages past the restore window, a bounded transaction at a time."""
        result = await self._retention.purge_archived(
            input.now, chunk_size=input.chunk_size, on_progress=_heartbeat, start=_resumed()
        )
        if self._metrics is not None:
            self._metrics.cleanup("purged", result.messages)
        return result
