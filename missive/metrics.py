"""The project's own Prometheus metrics: one registry per process, built once and passed in."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST
"""The Content-Type of the text exposition format ``render`` returns."""


class Metrics:
    """Missive's counters and gauges over one ``CollectorRegistry``.

    Built once per process (the worker, the gateway) and handed to the
    activity classes; tests build their own. Counters count completed activity
    attempts: a retried activity that had already committed counts again, as a
    duplicate where the domain says so (a persist retried after its commit
    reports ``duplicate``). Names follow Prometheus conventions; each counter is
    exposed with a ``_total`` suffix.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        """Where every metric below is registered; serve it with ``render``."""
        r = self.registry
        self.messages_persisted = Counter(
            "missive_messages_persisted",
            "Messages the persist activity stored (created) or found stored (duplicate).",
            ["outcome"],
            registry=r,
        )
        """Labels: outcome = created | duplicate."""
        self.broadcasts = Counter(
            "missive_broadcasts",
            "Socket.IO events emitted by activities, by event name.",
            ["event"],
            registry=r,
        )
        """Labels: event = message:new | message:receipt | messages:batch."""
        self.receipts_applied = Counter(
            "missive_receipts_applied",
            "Receipt watermarks applied, by status.",
            ["status"],
            registry=r,
        )
        """Labels: status = delivered | read."""
        self.deliveries_moved = Counter(
            "missive_deliveries_moved",
            "Delivery rows a receipt moved forward, by status.",
            ["status"],
            registry=r,
        )
        """Labels: status = delivered | read."""
        self.refusals = Counter(
            "missive_refusals",
            "Permanent refusals raised by activities, by activity and error type.",
            ["activity", "error"],
            registry=r,
        )
        """Labels: activity (the activity name), error (e.g. NotAMember)."""
        self.receipt_batches = Counter(
            "missive_receipt_batches",
            "Receipt batches the gateway's batcher applied (each one transaction).",
            registry=r,
        )
        self.receipts_batched = Counter(
            "missive_receipts_batched",
            "Receipts in those batches (receipts / batches = the coalescing factor).",
            registry=r,
        )
        self.receipt_batch_seconds = Histogram(
            "missive_receipt_batch_seconds",
            "Time to apply one receipt batch, from its write to its acks.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0),
            registry=r,
        )
        self.lifecycle_signals = Counter(
            "missive_lifecycle_signals",
            "Receipt signals the gateway sent to lifecycles, by outcome.",
            ["outcome"],
            registry=r,
        )
        """Labels: outcome = sent | ended (lifecycle closed) | retried | dropped."""
        self.gateway_change_wait_seconds = Histogram(
            "missive_gateway_change_wait_seconds",
            "How long a socket's change (send, edit, delete, membership) waited, once"
            " admitted, for the changes it sent before it.",
            buckets=(0.001, 0.005, 0.025, 0.1, 0.5, 2.5, 10.0),
            registry=r,
        )
        self.gateway_rejections = Counter(
            "missive_gateway_rejections",
            "Events the gateway answered at once without doing them, by reason.",
            ["event", "reason"],
            registry=r,
        )
        """Labels: reason = rate_limited | in_flight | overloaded | socket_rate."""
        self.notifications = Counter(
            "missive_notifications",
            "Notification outcomes by channel.",
            ["channel", "outcome"],
            registry=r,
        )
        """Labels: channel = in_app | push | email | sms; outcome = sent | failed |
        skipped | cancelled | retry | cleared | fell_back."""
        self.batch_items = Counter(
            "missive_batch_items",
            "Batch items processed by completed chunk activities, by outcome.",
            ["outcome"],
            registry=r,
        )
        """Labels: outcome = stored | failed."""
        self.cleanup_rows = Counter(
            "missive_cleanup_rows",
            "Messages the retention cleanup archived or purged.",
            ["step"],
            registry=r,
        )
        """Labels: step = archived | purged."""
        self.index_pending = Gauge(
            "missive_index_pending_messages",
            "Messages waiting for the search indexer.",
            registry=r,
        )
        """Seam for the search indexer: set after each pass (see observe_index_lag)."""
        self.notifications_overdue = Gauge(
            "missive_notifications_overdue",
            "Notification rows still open (pending, queued, sending) longer than "
            "NOTIFY_OVERDUE_SECONDS past their due time.",
            registry=r,
        )
        """Set by the worker's periodic check (see observe_overdue); 0 when healthy."""
        self.notifications_overdue_seconds = Gauge(
            "missive_notifications_overdue_oldest_seconds",
            "How long past its due time the oldest overdue notification row is (0 when none).",
            registry=r,
        )
        """Set with missive_notifications_overdue."""
        self.index_lag_seconds = Gauge(
            "missive_index_lag_seconds",
            "Age of the oldest message waiting for the search indexer (0 when none).",
            registry=r,
        )
        """Seam for the search indexer: set after each pass (see observe_index_lag)."""

    def message_persisted(self, *, created: bool) -> None:
        """Counts one persist outcome."""
        self.messages_persisted.labels(outcome="created" if created else "duplicate").inc()

    def broadcast(self, event: str, count: int = 1) -> None:
        """Counts ``count`` emitted events named ``event``."""
        if count > 0:
            self.broadcasts.labels(event=event).inc(count)

    def receipt_applied(self, status: str, *, moved: int) -> None:
        """Counts one applied receipt and the deliveries it moved."""
        self.receipts_applied.labels(status=status).inc()
        if moved > 0:
            self.deliveries_moved.labels(status=status).inc(moved)

    def refused(self, activity: str, error: BaseException) -> None:
        """Counts one permanent refusal, labelled with the error's class name."""
        self.refusals.labels(activity=activity, error=type(error).__name__).inc()

    def notification(self, channel: str, outcome: str, count: int = 1) -> None:
        """Counts ``count`` notification outcomes of one kind."""
        if count > 0:
            self.notifications.labels(channel=channel, outcome=outcome).inc(count)

    def batch_chunk(self, *, stored: int, failed: int) -> None:
        """Counts the items of one completed chunk."""
        if stored > 0:
            self.batch_items.labels(outcome="stored").inc(stored)
        if failed > 0:
            self.batch_items.labels(outcome="failed").inc(failed)

    def cleanup(self, step: str, rows: int) -> None:
        """Counts the messages one retention step archived or purged."""
        if rows > 0:
            self.cleanup_rows.labels(step=step).inc(rows)

    def observe_index_lag(self, *, pending: int, oldest_age_seconds: float) -> None:
        """Sets the index-lag gauges from one look at the indexer's backlog."""
        self.index_pending.set(pending)
        self.index_lag_seconds.set(oldest_age_seconds if pending > 0 else 0.0)

    def receipt_batch(
        self,
        *,
        applied: dict[str, int],
        moved: dict[str, int],
        receipts: int,
        seconds: float,
    ) -> None:
        """Counts one applied receipt batch of ``receipts``: the receipts applied and the
        deliveries moved, by status, as ``receipt_applied`` does for one."""
        self.receipt_batches.inc()
        self.receipts_batched.inc(receipts)
        self.receipt_batch_seconds.observe(seconds)
        for status, count in applied.items():
            if count > 0:
                self.receipts_applied.labels(status=status).inc(count)
        for status, count in moved.items():
            if count > 0:
                self.deliveries_moved.labels(status=status).inc(count)

    def lifecycle_signal(self, outcome: str) -> None:
        """Counts one receipt signal to a lifecycle by outcome."""
        self.lifecycle_signals.labels(outcome=outcome).inc()

    def change_waited(self, seconds: float) -> None:
        """Observes how long one admitted change waited for its socket's earlier ones."""
        self.gateway_change_wait_seconds.observe(seconds)

    def gateway_rejected(self, event: str, reason: str) -> None:
        """Counts one event answered at once (rate limited, in-flight cap, overloaded)."""
        self.gateway_rejections.labels(event=event, reason=reason).inc()

    def observe_overdue(self, *, overdue: int, oldest_seconds: float) -> None:
        """Sets the overdue-notification gauges from one look at the log."""
        self.notifications_overdue.set(overdue)
        self.notifications_overdue_seconds.set(oldest_seconds if overdue > 0 else 0.0)

    def render(self) -> bytes:
        """The registry in Prometheus' text exposition format."""
        return generate_latest(self.registry)
