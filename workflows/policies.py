"""Timeouts and retry policies, named, each with the reason for its numbers."""

from __future__ import annotations

from datetime import timedelta

from temporalio.common import RetryPolicy

# Persisting is one short transaction (two statements) on a local database:
# milliseconds when healthy. 10 s only trips on a stuck connection or lock.
DB_WRITE_TIMEOUT = timedelta(seconds=10)

# A database restart or failover takes seconds to a minute. Start fast (the
# sender is waiting for its ack), back off to 10 s, and never give up: the
# message was accepted, losing it is worse than being late. Permanent errors
# (bad input, not a member) are raised non-retryable and stop at once.
DB_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=100),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=10),
)

# Emitting is a publish to Redis / PostgreSQL NOTIFY or to local sockets.
BROADCAST_TIMEOUT = timedelta(seconds=5)

# A live event older than 15 minutes is worth little: clients that were
# offline catch up from history. So retry quickly for that long, then give up
# on the live event (the message stays stored and the lifecycle goes on).
BROADCAST_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=200),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=15),
)
BROADCAST_DEADLINE = timedelta(minutes=15)

# Local activities retried longer than this are scheduled with a durable timer
# instead of in-process, so a long outage does not pin a workflow task.
LOCAL_RETRY_THRESHOLD = timedelta(seconds=10)
