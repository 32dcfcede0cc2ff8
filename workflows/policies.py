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

# A membership change's announcement moves sockets out of a removed member's old
# room in every gateway: unlike a live message event it must not be given up, so
# it retries as a database write does, for as long as the pub/sub is down (the
# requester's ack times out meanwhile, and `starter stuck` shows the workflow).
MEMBERSHIP_ANNOUNCE_RETRY = DB_RETRY

# Local activities retried longer than this are scheduled with a durable timer
# instead of in-process, so a long outage does not pin a workflow task.
LOCAL_RETRY_THRESHOLD = timedelta(seconds=10)

# --- key rotation ---

# One activity run re-wraps or re-encrypts up to chunks_per_activity chunks of
# 500 rows (a few hundred ms each): seconds when healthy. 10 minutes covers a
# slow database; the heartbeat after each chunk notices a dead worker in 60 s.
KEY_ROTATION_TIMEOUT = timedelta(minutes=10)
KEY_ROTATION_HEARTBEAT = timedelta(seconds=60)

# A rotation must finish, and every chunk is idempotent: retry a database
# outage for as long as it lasts, backing off to a minute. A tampered body or
# a missing key version is raised non-retryable and stops the rotation at once.
KEY_ROTATION_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=1),
)

# The report is a few aggregate queries; an operator is waiting, so retry
# briefly (five attempts over about half a minute) and then say it failed.
KEY_REPORT_TIMEOUT = timedelta(seconds=60)
KEY_REPORT_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=10),
    maximum_attempts=5,
)

# --- batch and retention ---

# A batch chunk is a few transactions of heartbeat_every items (a few hundred
# ms each on a healthy database); 10 minutes only trips on a stuck database.
# The heartbeat after every transaction lets a dead worker be noticed within
# the heartbeat timeout (BatchInput.heartbeat_timeout_seconds, default 30 s).
BATCH_CHUNK_TIMEOUT = timedelta(minutes=10)

# Every chunk is idempotent and resumes from its cursor, so retry a database
# outage as long as it lasts, backing off to 30 s. Bad items are recorded in
# the report, never raised; a non-retryable error stops the batch at once.
BATCH_CHUNK_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
)

# Checking that a batch was staged as its input says is one read by primary key.
# The batch waits for the database either way, so an outage is retried as a chunk's
# is; a batch that was never staged is refused non-retryable and fails at once.
BATCH_CHECK_TIMEOUT = timedelta(seconds=30)
BATCH_CHECK_RETRY = BATCH_CHUNK_RETRY

# A retention step loops over bounded transactions until nothing is left:
# minutes for a large backlog. 2 hours caps a run stuck behind locks; the
# heartbeat after each transaction (seconds apart) notices a dead worker in 60 s.
RETENTION_STEP_TIMEOUT = timedelta(hours=2)
RETENTION_HEARTBEAT = timedelta(seconds=60)

# Cleanup can always wait for the next attempt: back off to 5 minutes, and
# stop after 10 attempts (about half an hour); the next scheduled run resumes.
RETENTION_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=5),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=5),
    maximum_attempts=10,
)

# --- search ---
# The indexer's activity runs for SEARCH_INDEXER_RUN_SECONDS and heartbeats after
# every batch and at least every second while idle; 30 s without one means the
# worker died, and Temporal starts it again elsewhere at once.
SEARCH_INDEXER_RUN_SECONDS = 300.0
SEARCH_INDEXER_TIMEOUT = timedelta(seconds=SEARCH_INDEXER_RUN_SECONDS + 120)
SEARCH_HEARTBEAT_TIMEOUT = timedelta(seconds=30)

# Typesense down: the backlog waits in PostgreSQL, so retry forever, from 1 s up to
# 10 s apart: a restart of Typesense is caught within ten seconds and a long
# outage costs one attempt every ten seconds. Delivery never waits for this.
SEARCH_INDEX_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=10),
)

# A rebuild step imports for up to SEARCH_REBUILD_STEP_SECONDS (one progress
# update per step); a crash resumes from the heartbeated cursor.
SEARCH_REBUILD_STEP_SECONDS = 20.0
SEARCH_REBUILD_TIMEOUT = timedelta(minutes=5)

# Issuing a search key is one indexed SELECT; the caller is waiting, so a few quick
# tries and then an error it can show.
SEARCH_KEY_TIMEOUT = timedelta(seconds=10)
SEARCH_KEY_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=100),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=2),
    maximum_attempts=5,
)

# The check reads every searchable id from PostgreSQL and the index: minutes for
# millions of messages. An operator is waiting: three tries, then report.
SEARCH_CHECK_TIMEOUT = timedelta(minutes=30)
SEARCH_CHECK_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=10),
    maximum_attempts=3,
)

# --- notifications ---

# plan_notifications, dispatch_due, fall_back and prepare_digest are a few bulk statements
# on the local database (a 2,000-member group is one INSERT ... SELECT); plan and dispatch
# also emit the in-app events, as batched publishes. (settle_notifications runs inside a
# receipt, under DB_WRITE_TIMEOUT.) Milliseconds to a
# second when healthy; 30 s only trips on a stuck connection or lock.
NOTIFY_DB_TIMEOUT = timedelta(seconds=30)

# Like DB_RETRY: every step is idempotent (unique (recipient, channel, dedupe_key), status
# only moves forward), so a database outage is retried for as long as it lasts.
NOTIFY_DB_RETRY = DB_RETRY

# A receipt's settling (cancel the reader's pending notifications, read the in-app ones)
# saves work and clears the bell, but the receipt does not depend on it: dispatch and the
# senders re-check read / delivered before sending anyway. The reader is waiting for the
# receipt's ack, so a few quick tries (about 10 s in all), then the receipt goes on.
# Bounded by attempts, not by a schedule_to_close: with SDK 1.35 a local activity's
# schedule_to_close did not stop retries done inside the worker.
SETTLE_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=200),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=4),
    maximum_attempts=6,
)

# One provider call per device / address, sent concurrently, with the client's own
# timeout (10-20 s): 30 s covers a slow but answering provider.
PROVIDER_CALL_TIMEOUT = timedelta(seconds=30)

# A provider outage (5xx, no answer) or a 429 (whose Retry-After overrides the interval):
# back off like Synapse's pushers, 1 s doubling to an hour. No maximum attempts: the
# channel's deadline (NotifyOptions.push/email/sms_deadline_seconds, the activity's
# schedule_to_close) ends the retries, and the rows fall back to the next channel.
# Only the rows not yet sent go out again (the send claims them first).
PROVIDER_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(hours=1),
)

# Clearing a push already shown (a data message after the reader read it) is cosmetic,
# and the reader's receipt ack waits for it: a few quick tries within 20 s, then give up
# (the notification goes when the user opens the conversation).
CLEAR_PUSH_TIMEOUT = timedelta(seconds=10)
CLEAR_PUSH_DEADLINE = timedelta(seconds=20)

# queue_digests signal-with-starts one digest workflow per (channel, recipient): a few
# Temporal RPCs. 30 s covers a slow frontend. Temporal is where the workflow runs, so an
# outage is waited out, backing off to 30 s; signals are deduplicated by the digest.
QUEUE_DIGESTS_TIMEOUT = timedelta(seconds=30)
QUEUE_DIGESTS_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
)
