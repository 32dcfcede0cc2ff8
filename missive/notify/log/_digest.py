"""Digests: a recipient's gathered email / SMS rows folded into one digest row."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import text

from missive.errors import InvalidInput
from missive.notify.log._shared import (
    REASON_GONE,
    REASON_LEFT,
    REASON_PREFERENCES,
    REASON_READ,
    LogPart,
    _allowed,
    _channel,
    _Decisions,
    _NewRows,
    _reach_problem,
)
from missive.notify.log._sql import _INSERT_ROWS, _PREF_COLUMNS, _prefs_sql
from missive.notify.preferences import quiet_hours_end, user_preferences
from missive.schemas import (
    DIGEST_CHANNELS,
    Channel,
    NotificationStatus,
    PrepareDigestInput,
    PrepareDigestResult,
)
from missive.validation import require_uuid

_DIGEST_ITEMS = text(
    f"""
    SELECT n.id::text AS id, n.status, n.mention, n.digest_id::text AS digest_id,
           d.status AS delivery_status, m.deleted_at IS NOT NULL AS message_deleted,
           u.email, u.phone, u.timezone,
           {_PREF_COLUMNS}
      FROM notifications n
      JOIN users u ON u.id = n.recipient_id
      LEFT JOIN deliveries d ON d.message_id = n.message_id AND d.recipient_id = n.recipient_id
      LEFT JOIN messages m ON m.id = n.message_id
      {_prefs_sql("n.recipient_id", "n.conversation_id")}
     WHERE n.id = ANY(CAST(:ids AS uuid[])) AND n.recipient_id = :rid AND n.channel = :channel
    """
)

_OPEN_DIGESTS = text(
    """
    SELECT id::text AS id, item_count, status FROM notifications
     WHERE id = ANY(CAST(:ids AS uuid[])) AND status IN ('queued', 'sending')
     ORDER BY id LIMIT 1
    """
)

# Items that joined a digest a lost attempt prepared and nobody has claimed yet: it
# renders its items when claimed, so they go out with it.
_GROW_DIGEST = text(
    """
    UPDATE notifications SET item_count = item_count + :n, updated_at = :now
     WHERE id = :digest AND status = 'queued'
    RETURNING item_count
    """
)

_FOLD_ITEMS = text(
    """
    UPDATE notifications SET status = 'digested', digest_id = :digest, updated_at = :now
     WHERE id = ANY(CAST(:ids AS uuid[])) AND status = 'queued'
    """
)

# A digest deferred to the end of quiet hours: its items are due then (due_at says
# when a row is expected to go out, which the overdue check reads). updated_at is
# left alone: it tells which dispatch queued the row (see _DUE_ROWS).
_DEFER_ITEMS = text(
    """
    UPDATE notifications SET due_at = :until
     WHERE id = ANY(CAST(:ids AS uuid[])) AND status = 'queued' AND due_at < :until
    """
)


class Digests(LogPart):
    """Prepares digest rows."""

    async def prepare_digest(self, input: PrepareDigestInput) -> PrepareDigestResult:
        """Folds a recipient's gathered email / SMS rows into one digest row, if it may.

        Rows read meanwhile (or deleted, left, no longer wanted) are cancelled; with no
        address / valid number the rest are skipped with the reason. Inside quiet hours
        nothing more happens and ``defer_until`` says when to try again. Otherwise one
        digest row (queued, ``digest:{smallest item id}``, item_count n) is written and
        the items become ``digested`` with its id. A rerun returns the same digest
        while it is unsent.

        Raises:
            InvalidInput: a malformed id, a channel other than email / sms.
        """
        rid = require_uuid(input.recipient_id, "recipient_id")
        channel = _channel(input.channel)
        if channel not in DIGEST_CHANNELS:
            raise InvalidInput(f"digests are for email or sms, not {channel.value}")
        ids = sorted({require_uuid(i, "notification_id") for i in input.notification_ids})
        now = input.now
        if not ids:
            return PrepareDigestResult()
        async with self._sessions() as session, session.begin():
            rows = (
                (
                    await session.execute(
                        _DIGEST_ITEMS, {"ids": ids, "rid": rid, "channel": channel.value}
                    )
                )
                .mappings()
                .all()
            )
            folded = sorted(
                {r["digest_id"] for r in rows if r["status"] == "digested" and r["digest_id"]}
            )
            if folded:
                unsent = (await session.execute(_OPEN_DIGESTS, {"ids": folded})).one_or_none()
                if unsent is not None:
                    # A rerun, or the replacement of a lost attempt, which may have been
                    # given rows that arrived after the lost one prepared: those join
                    # the unsent digest rather than being left queued with no digest.
                    joining = sorted(r["id"] for r in rows if r["status"] == "queued")
                    count = int(unsent.item_count)
                    if joining and unsent.status == NotificationStatus.QUEUED:
                        grown = await session.execute(
                            _GROW_DIGEST, {"digest": unsent.id, "n": len(joining), "now": now}
                        )
                        count = int(grown.scalar_one())
                        await session.execute(
                            _FOLD_ITEMS, {"digest": unsent.id, "ids": joining, "now": now}
                        )
                    return PrepareDigestResult(notification_id=unsent.id, items=count)
            decisions = _Decisions.empty()
            keep: list[Mapping[Any, Any]] = []
            for row in rows:
                if row["status"] != NotificationStatus.QUEUED:
                    continue
                reason = self._item_gone(row, channel, now)
                if reason is None:
                    keep.append(row)
                else:
                    decisions.add(row["id"], NotificationStatus.CANCELLED, reason)
            problem = _reach_problem(channel, keep[0]) if keep else None
            if problem is not None:
                for item in keep:
                    decisions.add(item["id"], NotificationStatus.SKIPPED, problem)
                keep = []
            changed = await decisions.apply(session, now=now, from_statuses=["queued"])
            cancelled = sum(
                1
                for i, s in zip(decisions.ids, decisions.statuses, strict=True)
                if i in changed and s == NotificationStatus.CANCELLED
            )
            skipped = len(changed) - cancelled
            if not keep:
                return PrepareDigestResult(cancelled=cancelled, skipped=skipped)
            mention = any(r["mention"] for r in keep)
            until, _note = quiet_hours_end(
                user_preferences(keep[0], prefix="np_"), keep[0]["timezone"], now, mention=mention
            )
            if until is not None:
                await session.execute(
                    _DEFER_ITEMS, {"ids": sorted(r["id"] for r in keep), "until": until}
                )
                return PrepareDigestResult(cancelled=cancelled, skipped=skipped, defer_until=until)
            item_ids = sorted(r["id"] for r in keep)
            new = _NewRows.empty()
            digest_id = new.add(
                recipient_id=rid,
                channel=channel,
                dedupe_key=f"digest:{item_ids[0]}",
                status=NotificationStatus.QUEUED,
                due_at=now,
                mention=mention,
                item_count=len(item_ids),
            )
            await session.execute(_INSERT_ROWS, new.params(now))
            await session.execute(_FOLD_ITEMS, {"digest": digest_id, "ids": item_ids, "now": now})
        return PrepareDigestResult(
            notification_id=digest_id, items=len(item_ids), cancelled=cancelled, skipped=skipped
        )

    @staticmethod
    def _item_gone(row: Mapping[Any, Any], channel: Channel, now: datetime) -> str | None:
        """Why a gathered digest item is no longer wanted (None: still wanted)."""
        delivery = row["delivery_status"]
        if delivery is None or row["message_deleted"]:
            return REASON_GONE
        if delivery >= 2:
            return REASON_READ
        if not row["is_member"]:
            return REASON_LEFT
        allowed = _allowed(row, mention=row["mention"], now=now)
        if allowed is None or channel not in allowed:
            return REASON_PREFERENCES
        return None
