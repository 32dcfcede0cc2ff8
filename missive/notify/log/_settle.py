"""Settling: what readers' receipts do to their notifications, one or many at once."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import text

from missive.db import DriverQuery, driver_connection
from missive.errors import InvalidInput
from missive.notify.log._shared import REASON_DELIVERED, REASON_READ, LogPart
from missive.notify.log._sql import _UNREAD_COUNTS
from missive.schemas import ReceiptStatus, SettleNotificationsInput, SettleNotificationsResult
from missive.validation import require_seq, require_uuid


@dataclass(frozen=True)
class ReaderWatermark:
    """One reader's coalesced receipt in one conversation, for settle_many."""

    user_id: str
    conversation_id: str
    delivered_seq: int
    read_seq: int
    """0: nothing read in this batch."""


@dataclass(frozen=True)
class SettledMany:
    """What settle_many did."""

    cancelled: int = 0
    """Pending / queued rows cancelled."""
    in_app_read: list[tuple[str, str]] = field(default_factory=list)
    """(reader, conversation) pairs whose in-app rows were marked read."""
    unread_counts: dict[str, int] = field(default_factory=dict)
    """Those readers' unread in-app counts now (for notification:unread)."""
    clear_push_ids: list[str] = field(default_factory=list)
    """Pushes already shown that a data message should now clear."""


# Sent rows still to settle. A first attempt looks in ix_notifications_unread /
# _uncleared, which hold only those (and no index holding sent rows by conversation
# is there to be ANDed with them: migration 0015); a rerun (a retry with the same
# ``now``, whose first attempt may have committed) also counts the rows that attempt
# changed, found among the reader's rows of the channel (the unique key): a scan of
# the reader's history, so paid only then.
_UNSETTLED = {
    False: ("read_at IS NULL", "cleared_at IS NULL"),
    True: ("(read_at IS NULL OR read_at = :now)", "(cleared_at IS NULL OR cleared_at = :now)"),
}

# One statement: the three updates touch disjoint rows (pending/queued, sent in-app,
# sent push). Rows this same call (same workflow time) changed count again on a rerun.
_SETTLE_SQL = """
    WITH cancelled AS (
        UPDATE notifications
           SET status = 'cancelled', reason = :reason, updated_at = :now
         WHERE recipient_id = :uid AND conversation_id = :cid AND seq <= :seq
           AND status IN ('pending', 'queued') AND (:read OR channel = 'push')
        RETURNING 1
    ), read AS (
        UPDATE notifications SET read_at = :now, updated_at = :now
         WHERE :read AND recipient_id = :uid AND conversation_id = :cid AND seq <= :seq
           AND channel = 'in_app' AND status = 'sent' AND {unread}
        RETURNING 1
    ), cleared AS (
        UPDATE notifications SET cleared_at = :now, updated_at = :now
         WHERE :read AND recipient_id = :uid AND conversation_id = :cid AND seq <= :seq
           AND channel = 'push' AND status = 'sent' AND {uncleared}
        RETURNING id::text AS id, seq
    )
    SELECT (SELECT count(*) FROM cancelled) AS cancelled,
           (SELECT count(*) FROM read) AS in_app_read,
           (SELECT array_agg(id ORDER BY seq, id) FROM cleared) AS cleared
    """
_SETTLE = {
    rerun: text(_SETTLE_SQL.format(unread=unread, uncleared=uncleared))
    for rerun, (unread, uncleared) in _UNSETTLED.items()
}

# settle for many (reader, conversation) watermarks at once (see settle_many); the
# three updates touch disjoint rows (pending/queued, sent in-app, sent push).
_SETTLE_MANY_SQL = """
    WITH w AS (
        SELECT * FROM unnest(CAST(:uids AS uuid[]), CAST(:cids AS uuid[]),
                             CAST(:dseqs AS bigint[]), CAST(:rseqs AS bigint[]))
               AS w(uid, cid, dseq, rseq)
    ), cancelled AS (
        UPDATE notifications n
           SET status = 'cancelled', updated_at = :now,
               reason = CASE WHEN n.seq <= w.rseq THEN :read_reason ELSE :delivered_reason END
          FROM w
         WHERE n.recipient_id = w.uid AND n.conversation_id = w.cid
           AND n.status IN ('pending', 'queued')
           AND (n.seq <= w.rseq OR (n.seq <= w.dseq AND n.channel = 'push'))
        RETURNING 1
    ), read AS (
        UPDATE notifications n SET read_at = :now, updated_at = :now
          FROM w
         WHERE n.recipient_id = w.uid AND n.conversation_id = w.cid AND n.seq <= w.rseq
           AND n.channel = 'in_app' AND n.status = 'sent' AND {unread}
        RETURNING n.recipient_id, n.conversation_id
    ), cleared AS (
        UPDATE notifications n SET cleared_at = :now, updated_at = :now
          FROM w
         WHERE n.recipient_id = w.uid AND n.conversation_id = w.cid AND n.seq <= w.rseq
           AND n.channel = 'push' AND n.status = 'sent' AND {uncleared}
        RETURNING n.id
    )
    SELECT 'cancelled' AS kind, NULL AS uid, NULL AS cid, NULL AS id FROM cancelled
    UNION ALL
    SELECT DISTINCT 'read', recipient_id::text, conversation_id::text, NULL FROM read
    UNION ALL
    SELECT 'cleared', NULL, NULL, id::text FROM cleared
    """
_SETTLE_MANY = {
    rerun: text(_SETTLE_MANY_SQL.format(unread=unread, uncleared=uncleared))
    for rerun, (unread, uncleared) in _UNSETTLED.items()
}
_SETTLE_MANY_Q = {rerun: DriverQuery(statement) for rerun, statement in _SETTLE_MANY.items()}
_UNREAD_COUNTS_Q = DriverQuery(_UNREAD_COUNTS)


class Settling(LogPart):
    """Applies receipts to the readers' notifications."""

    async def settle(
        self, input: SettleNotificationsInput, *, rerun: bool = False
    ) -> tuple[SettleNotificationsResult, int | None]:
        """Applies a reader's receipt to their notifications of one conversation.

        Up to the watermark: a read cancels every pending / queued row, marks sent
        in-app rows read and returns the sent pushes not yet cleared (marking them
        cleared, so each is returned once); a delivered receipt cancels pending /
        queued pushes only. A ``rerun`` (a retry with the same ``now``) returns the
        same; a first attempt finds only rows still to settle (_UNSETTLED).

        Returns:
            The result, and the reader's unread in-app count when in-app rows were read
            (for the ``notification:unread`` event), else None.

        Raises:
            InvalidInput: a malformed id, watermark or status.
        """
        uid = require_uuid(input.user_id, "user_id")
        cid = require_uuid(input.conversation_id, "conversation_id")
        seq = require_seq(input.up_to_seq)
        try:
            status = ReceiptStatus(input.status)
        except ValueError:
            raise InvalidInput(
                f"status must be 'delivered' or 'read', got {input.status!r}"
            ) from None
        read = status is ReceiptStatus.READ
        params = {
            "uid": uid,
            "cid": cid,
            "seq": seq,
            "now": input.now,
            "read": read,
            "reason": REASON_READ if read else REASON_DELIVERED,
        }
        unread: int | None = None
        async with self._sessions() as session, session.begin():
            row = (await session.execute(_SETTLE[rerun], params)).one()
            if row.in_app_read:
                counts = (await session.execute(_UNREAD_COUNTS, {"rids": [uid]})).all()
                unread = int(counts[0].unread) if counts else 0
        result = SettleNotificationsResult(
            cancelled=int(row.cancelled),
            in_app_read=int(row.in_app_read),
            clear_push_ids=list(row.cleared or []),
        )
        return result, unread

    async def settle_many(
        self, watermarks: Sequence[ReaderWatermark], *, now: datetime, rerun: bool = False
    ) -> SettledMany:
        """Settles many readers' notifications at once: the receipt batcher's settle.

        The same rules as ``settle`` for each (reader, conversation): up to
        ``read_seq`` everything pending is cancelled, sent in-app rows are read and
        sent pushes returned to clear; from there up to ``delivered_seq`` pending
        pushes are cancelled. Two statements, whatever the batch. ``rerun`` as in
        ``settle``.
        """
        if not watermarks:
            return SettledMany()
        params = {
            "uids": [w.user_id for w in watermarks],
            "cids": [w.conversation_id for w in watermarks],
            "dseqs": [w.delivered_seq for w in watermarks],
            "rseqs": [w.read_seq for w in watermarks],
            "now": now,
            "read_reason": REASON_READ,
            "delivered_reason": REASON_DELIVERED,
        }
        # Two statements that each stand alone, without BEGIN / COMMIT: the settle is one
        # write; the unread counts, read after it committed, are at least as new. On the
        # driver, as the rest of the receipt batch (missive.db.DriverQuery).
        async with driver_connection(self._engine) as conn:
            rows = await _SETTLE_MANY_Q[rerun].fetch(conn, params)
            read = sorted({(r["uid"], r["cid"]) for r in rows if r["kind"] == "read"})
            readers = sorted({uid for uid, _ in read})
            unread = {}
            if readers:
                counts = await _UNREAD_COUNTS_Q.fetch(conn, {"rids": readers})
                unread = {c["recipient_id"]: int(c["unread"]) for c in counts}
        return SettledMany(
            cancelled=sum(1 for r in rows if r["kind"] == "cancelled"),
            in_app_read=read,
            unread_counts=unread,
            clear_push_ids=sorted(r["id"] for r in rows if r["kind"] == "cleared"),
        )
