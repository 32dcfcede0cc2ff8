"""Delivered/read receipts: forward-only watermarks, many readers' applied in one statement.

A receipt says "every message up to seq N in conversation C is delivered (or read)
for me". Only the highest seq per reader, conversation and status matters, so a
batch of receipts coalesces into one (delivered_seq, read_seq) pair per reader and
conversation before it is written: 100 receipts from one reader in a burst are one
row in the statement, and a batch mixing readers, conversations and statuses is
still one ``UPDATE ... FROM unnest(...)``. Applying a batch twice changes nothing
the second time.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from missive.db import DriverQuery, driver_connection, engine_of
from missive.errors import (
    ConversationNotFound,
    InvalidInput,
    MessageNotVisible,
    MessagingError,
    NotAMember,
)
from missive.models import DeliveryStatus
from missive.schemas import (
    ApplyReceiptResult,
    ReceiptChange,
    ReceiptInput,
    ReceiptStatus,
    RecipientState,
)
from missive.validation import require_seq, require_uuid

MAX_CHANGES_REPORTED = 500
"""A reader's watermark lists at most this many changed messages (newest first) for
events and lifecycle signals; a reader catching up on a backlog still moves every row."""

# Who may report what: one row per receipt of the batch (a receipt by message id
# is resolved to that message's seq).
_RESOLVE = text(
    """
    SELECT r.idx, c.id IS NOT NULL AS found, c.last_seq,
           p.user_id IS NOT NULL AS is_member, m.seq AS message_seq
      FROM unnest(CAST(:idx AS int[]), CAST(:uids AS uuid[]), CAST(:cids AS uuid[]),
                  CAST(:mids AS uuid[])) AS r(idx, uid, cid, mid)
      LEFT JOIN conversations c ON c.id = r.cid
      LEFT JOIN participants p ON p.conversation_id = r.cid AND p.user_id = r.uid
      LEFT JOIN messages m ON m.id = r.mid AND m.conversation_id = r.cid
                          AND m.deleted_at IS NULL
    """
)

# Every reader's watermarks in one statement: each pending delivery up to the
# delivered watermark moves to delivered, or to read up to the read watermark;
# never backward. ``d.status < 2`` says what the CASE implies, in the words of the
# partial index on pending deliveries (ix_deliveries_pending): without it the planner
# cannot prove the index applies and reads the whole table on every batch. The
# participants' watermarks move with them.
_APPLY = text(
    """
    WITH w AS (
        SELECT * FROM unnest(CAST(:uids AS uuid[]), CAST(:cids AS uuid[]),
                             CAST(:dseqs AS bigint[]), CAST(:rseqs AS bigint[]))
               AS w(uid, cid, dseq, rseq)
    ), changed AS (
        UPDATE deliveries d
           SET status = CASE WHEN d.seq <= w.rseq THEN 2 ELSE 1 END,
               delivered_at = COALESCE(d.delivered_at, :now),
               read_at = CASE WHEN d.seq <= w.rseq THEN COALESCE(d.read_at, :now)
                              ELSE d.read_at END
          FROM w
         WHERE d.recipient_id = w.uid AND d.conversation_id = w.cid AND d.seq <= w.dseq
           AND d.status < 2 AND d.status < CASE WHEN d.seq <= w.rseq THEN 2 ELSE 1 END
        RETURNING d.recipient_id, d.conversation_id, d.message_id, d.seq, d.status
    ), watermark AS (
        UPDATE participants p
           SET delivered_seq = GREATEST(p.delivered_seq, w.dseq),
               read_seq = GREATEST(p.read_seq, w.rseq)
          FROM w
         WHERE p.conversation_id = w.cid AND p.user_id = w.uid
    )
    SELECT c.recipient_id::text AS recipient_id, c.conversation_id::text AS conversation_id,
           c.message_id::text AS message_id, c.seq, c.status,
           m.sender_id::text AS sender_id, m.client_message_id, m.created_at
      FROM changed c JOIN messages m ON m.id = c.message_id
     ORDER BY c.seq DESC
    """
)

# Each message's counts, read after commit (see ReceiptService.counted).
_COUNTS = text(
    """
    SELECT message_id::text AS message_id, count(*) AS total,
           count(*) FILTER (WHERE status >= 1) AS delivered,
           count(*) FILTER (WHERE status = 2) AS read
      FROM deliveries WHERE message_id = ANY(CAST(:ids AS uuid[]))
     GROUP BY message_id
    """
)

# The batch path's statements, run on the driver (see DriverQuery).
_RESOLVE_Q, _APPLY_Q, _COUNTS_Q = DriverQuery(_RESOLVE), DriverQuery(_APPLY), DriverQuery(_COUNTS)

_STATUS = text(
    """
    SELECT recipient_id::text AS recipient_id, status, delivered_at, read_at
      FROM deliveries WHERE message_id = :mid ORDER BY recipient_id
    """
)

_STATUS_NAMES = {s.value: s.name.lower() for s in DeliveryStatus}


@dataclass(frozen=True)
class Watermark:
    """One receipt, checked for form: "``status`` up to ``up_to_seq`` (or this message)"."""

    user_id: str
    """The reader."""
    conversation_id: str
    """The conversation."""
    status: ReceiptStatus
    """delivered or read (read implies delivered)."""
    up_to_seq: int | None = None
    """Every message with seq <= this one."""
    message_id: str | None = None
    """Or this message's seq."""

    @classmethod
    def of(cls, req: ReceiptInput) -> Watermark:
        """The watermark a ReceiptInput asks for.

        Raises:
            InvalidInput: malformed ids, an unknown status, not exactly one of
                up_to_seq and message_id, a seq that is not a positive integer.
        """
        uid = require_uuid(req.user_id, "user_id")
        cid = require_uuid(req.conversation_id, "conversation_id")
        try:
            status = ReceiptStatus(req.status)
        except ValueError:
            raise InvalidInput(
                f"status must be 'delivered' or 'read', got {req.status!r}"
            ) from None
        if (req.up_to_seq is None) == (req.message_id is None):
            raise InvalidInput("give exactly one of up_to_seq and message_id")
        if req.message_id is not None:
            return cls(uid, cid, status, message_id=require_uuid(req.message_id, "message_id"))
        return cls(uid, cid, status, up_to_seq=require_seq(req.up_to_seq))


@dataclass(frozen=True)
class ReceiptApplied:
    """What one receipt of a batch did."""

    up_to_seq: int
    """The watermark applied (a receipt by message id: that message's seq)."""
    changed: int
    """Deliveries this receipt covers (seq <= up_to_seq) that moved forward in the
    statement that applied it; 0 for a repeated or late receipt."""


@dataclass(frozen=True)
class ReaderChanges:
    """One reader's coalesced watermarks in one conversation, and what they moved."""

    user_id: str
    """The reader."""
    conversation_id: str
    """The conversation."""
    delivered_seq: int
    """Delivered up to here (at least read_seq)."""
    read_seq: int
    """Read up to here (0: no read receipt in the batch)."""
    changed: int
    """Deliveries that moved forward."""
    became_read: int = 0
    """Of those, the ones that are read now (the others: delivered)."""
    changes: list[ReceiptChange] = field(default_factory=list)
    """The changed messages inside the lifecycle window (newest first, capped), each
    with its new status and its counts after the batch."""


@dataclass(frozen=True)
class BatchApplied:
    """The outcome of apply_many: one entry per receipt, one per reader and conversation."""

    outcomes: list[ReceiptApplied | MessagingError]
    """In the order of the receipts given: what each did, or why it was refused."""
    readers: list[ReaderChanges]
    """Per (reader, conversation) that was applied."""
    at: datetime
    """When the batch was applied (every change's ``at``)."""


class ReceiptService:
    """Applies receipts and reports per-recipient state from the database."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]):
        self._sessions = sessions
        # The batch path's statements each stand alone (see apply_many), so they run
        # without BEGIN / COMMIT, on the driver: a batch costs its round trips, not a
        # session's work per statement as well.
        self._engine = engine_of(sessions)

    async def apply(self, req: ReceiptInput, *, now: datetime | None = None) -> ApplyReceiptResult:
        """Moves the reader's deliveries up to a watermark forward; never backward.

        A read marks delivered too. Running it twice changes nothing the second
        time. A late "delivered" after "read" changes nothing.

        Raises:
            InvalidInput: malformed ids, an unknown status, not exactly one of
                up_to_seq and message_id.
            ConversationNotFound: no such conversation.
            NotAMember: the reader is not in the conversation.
            MessageNotVisible: the message is not in the conversation (or deleted),
                or the watermark is past the conversation's last message.
        """
        watermark = Watermark.of(req)
        batch = await self.apply_many(
            [watermark], lifecycle_window_seconds=req.lifecycle_window_seconds, now=now
        )
        outcome = batch.outcomes[0]
        if isinstance(outcome, MessagingError):
            raise outcome
        reader = batch.readers[0]
        return ApplyReceiptResult(
            user_id=watermark.user_id,
            conversation_id=watermark.conversation_id,
            status=watermark.status,
            up_to_seq=outcome.up_to_seq,
            changed=outcome.changed,
            changes=reader.changes,
        )

    async def apply_many(
        self,
        receipts: Sequence[Watermark],
        *,
        lifecycle_window_seconds: int,
        now: datetime | None = None,
        counted: bool = True,
    ) -> BatchApplied:
        """Applies many readers' receipts in two statements (a check, then one write).

        Each receipt is checked on its own (conversation, membership, seq in
        range); a refused one gets its error in ``outcomes`` and the others apply.
        The rest coalesce to one (delivered, read) watermark per reader and
        conversation, written in one statement. Idempotent and commutative: any
        order, any repetition, the same rows in the end. ``counted=False`` leaves
        the changes' counts at 0 (see ``counted``), for a caller that answers
        first and counts afterwards.

        Raises:
            sqlalchemy errors: the database failed; nothing was applied (retry).
        """
        now = now or datetime.now(UTC)
        outcomes: list[ReceiptApplied | MessagingError | None] = [None] * len(receipts)
        seqs: dict[int, int] = {}
        # No transaction: the check is a read, the write one statement (atomic on its
        # own). Under READ COMMITTED a transaction around both would not hold back a
        # membership change between them either; the write's join on the watermarks
        # moves only the reader's own pending deliveries.
        async with driver_connection(self._engine) as conn:
            resolved = await _RESOLVE_Q.fetch(
                conn,
                {
                    "idx": list(range(len(receipts))),
                    "uids": [r.user_id for r in receipts],
                    "cids": [r.conversation_id for r in receipts],
                    "mids": [r.message_id for r in receipts],
                },
            )
            for row in resolved:
                checked = _check(receipts[row["idx"]], row)
                if isinstance(checked, MessagingError):
                    outcomes[row["idx"]] = checked
                else:
                    seqs[row["idx"]] = checked
            marks = _coalesce(receipts, seqs)
            changed: Sequence[Any] = []
            if marks:
                keys = list(marks)
                changed = await _APPLY_Q.fetch(
                    conn,
                    {
                        "uids": [k[0] for k in keys],
                        "cids": [k[1] for k in keys],
                        "dseqs": [marks[k][0] for k in keys],
                        "rseqs": [marks[k][1] for k in keys],
                        "now": now,
                    },
                )

        by_reader: dict[tuple[str, str], list[Any]] = {key: [] for key in marks}
        for row in changed:
            by_reader[(row["recipient_id"], row["conversation_id"])].append(row)
        # Each receipt's own count (rows it moved at least as far as it says), by
        # bisecting the reader's changed seqs: a burst of 100 receipts from one reader
        # counts in 100 lookups, not 100 passes over the rows.
        moved_seqs: dict[tuple[str, str], tuple[list[int], list[int]]] = {}
        for key, rows in by_reader.items():
            ascending = rows[::-1]  # the statement returns them newest first
            moved_seqs[key] = (
                [r["seq"] for r in ascending],
                [r["seq"] for r in ascending if r["status"] == DeliveryStatus.READ],
            )
        for idx, seq in seqs.items():
            receipt = receipts[idx]
            delivered, read = moved_seqs[(receipt.user_id, receipt.conversation_id)]
            among = read if receipt.status is ReceiptStatus.READ else delivered
            outcomes[idx] = ReceiptApplied(up_to_seq=seq, changed=bisect.bisect_right(among, seq))

        cutoff = now - timedelta(seconds=lifecycle_window_seconds)
        reported = {
            key: [r for r in rows if r["created_at"] >= cutoff][:MAX_CHANGES_REPORTED]
            for key, rows in by_reader.items()
        }
        readers = [
            ReaderChanges(
                user_id=uid,
                conversation_id=cid,
                delivered_seq=marks[(uid, cid)][0],
                read_seq=marks[(uid, cid)][1],
                changed=len(by_reader[(uid, cid)]),
                became_read=len(moved_seqs[(uid, cid)][1]),  # the reader's rows now read
                changes=[_change(r, now) for r in reported[(uid, cid)]],
            )
            for uid, cid in marks
        ]
        if counted:
            readers = await self.counted(readers)
        assert all(outcome is not None for outcome in outcomes)
        return BatchApplied(outcomes=outcomes, readers=readers, at=now)  # type: ignore[arg-type]

    async def counted(self, readers: list[ReaderChanges]) -> list[ReaderChanges]:
        """The readers' changes with each message's counts as they are now (one query).

        Read after commit: of two batches committing together, the later count sees
        both, so "everyone has read" is never missed.
        """
        counts = await self._counts(sorted({c.message_id for r in readers for c in r.changes}))
        return [
            dataclasses.replace(
                reader, changes=[_with_counts(change, counts) for change in reader.changes]
            )
            for reader in readers
        ]

    async def _counts(self, message_ids: list[str]) -> dict[str, tuple[int, int, int]]:
        if not message_ids:
            return {}
        async with driver_connection(self._engine) as conn:
            rows = await _COUNTS_Q.fetch(conn, {"ids": message_ids})
        return {r["message_id"]: (r["total"], r["delivered"], r["read"]) for r in rows}

    async def recipient_states(self, message_id: str) -> dict[str, RecipientState]:
        """Every recipient's state of one message, from the database."""
        mid = require_uuid(message_id, "message_id")
        async with self._sessions() as session:
            rows = (await session.execute(_STATUS, {"mid": mid})).all()
        return {
            r.recipient_id: RecipientState(
                status=_STATUS_NAMES[r.status], delivered_at=r.delivered_at, read_at=r.read_at
            )
            for r in rows
        }


def _check(receipt: Watermark, row: Any) -> int | MessagingError:
    """The seq a receipt applies up to, or why it is refused."""
    cid, uid = receipt.conversation_id, receipt.user_id
    if not row["found"]:
        return ConversationNotFound(f"conversation {cid} does not exist")
    if not row["is_member"]:
        return NotAMember(f"user {uid} is not a participant of conversation {cid}")
    if receipt.message_id is not None:
        if row["message_seq"] is None:
            return MessageNotVisible(f"message {receipt.message_id} is not in conversation {cid}")
        return int(row["message_seq"])
    assert receipt.up_to_seq is not None
    last = int(row["last_seq"])
    if receipt.up_to_seq > last:
        return MessageNotVisible(
            f"conversation {cid} has no message {receipt.up_to_seq} (its last is {last})"
        )
    return receipt.up_to_seq


def _coalesce(
    receipts: Sequence[Watermark], seqs: dict[int, int]
) -> dict[tuple[str, str], tuple[int, int]]:
    """(delivered_seq, read_seq) per (reader, conversation): the highest of each.

    Read implies delivered, so delivered_seq is at least read_seq; read_seq 0 means
    no read in the batch (GREATEST keeps the stored one).
    """
    marks: dict[tuple[str, str], tuple[int, int]] = {}
    for idx, seq in seqs.items():
        receipt = receipts[idx]
        key = (receipt.user_id, receipt.conversation_id)
        delivered, read = marks.get(key, (0, 0))
        if receipt.status is ReceiptStatus.READ:
            read = max(read, seq)
        marks[key] = (max(delivered, read, seq), read)
    return marks


def _with_counts(change: ReceiptChange, counts: dict[str, tuple[int, int, int]]) -> ReceiptChange:
    """The change with its message's counts (built, not ``dataclasses.replace``: a
    50-member group's batch has hundreds, and replace inspects the fields each time)."""
    total, delivered, read = counts.get(change.message_id, (0, 0, 0))
    return ReceiptChange(
        message_id=change.message_id,
        sender_id=change.sender_id,
        client_message_id=change.client_message_id,
        seq=change.seq,
        status=change.status,
        at=change.at,
        recipient_count=total,
        delivered_count=delivered,
        read_count=read,
        within_window=change.within_window,
    )


def _change(row: Any, now: datetime) -> ReceiptChange:
    read = row["status"] == DeliveryStatus.READ
    return ReceiptChange(
        message_id=row["message_id"],
        sender_id=row["sender_id"],
        client_message_id=row["client_message_id"],
        seq=row["seq"],
        status=ReceiptStatus.READ if read else ReceiptStatus.DELIVERED,
        at=now,
        within_window=True,
    )
