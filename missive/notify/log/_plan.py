"""Planning: a message's agenda, one row per recipient and wanted channel."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import text

from missive.notify.log._shared import (
    REASON_ALL_OFF,
    InAppNotice,
    LogPart,
    NoticeMessage,
    _allowed,
    _NewRows,
    _reach_problem,
    message_dedupe_key,
)
from missive.notify.log._sql import _INSERT_ROWS, _PREF_COLUMNS, UNREAD_COUNT_CAP, _prefs_sql
from missive.schemas import (
    Channel,
    DispatchDueResult,
    NotificationStatus,
    PlanNotificationsInput,
    PlanNotificationsResult,
)
from missive.validation import require_uuid

_CHANNEL_ORDER = {c: i for i, c in enumerate(Channel)}

# The message's unread recipients with what planning needs of each; with
# :in_app, also what an in-app notification says (the message's sender and
# conversation) and each recipient's unread count before it (capped, see
# UNREAD_COUNT_CAP), so planning sends the in-app step without more statements.
_PLAN_RECIPIENTS = text(
    f"""
    SELECT d.recipient_id::text AS recipient_id, u.email, u.phone,
           EXISTS (SELECT 1 FROM devices dv WHERE dv.user_id = d.recipient_id) AS has_device,
           {_PREF_COLUMNS},
           m.deleted_at IS NULL AS message_live, m.sender_id::text AS sender_id,
           s.display_name AS sender_name, c.title AS conversation_title,
           c.kind::text AS conversation_kind, c.encryption_mode::text = 'e2e' AS e2e,
           CASE WHEN CAST(:in_app AS boolean) THEN (
               SELECT count(*) FROM (
                      SELECT 1 FROM notifications
                       WHERE recipient_id = d.recipient_id AND channel = 'in_app'
                         AND status = 'sent' AND read_at IS NULL
                       LIMIT {UNREAD_COUNT_CAP}) AS capped) END AS unread_before
      FROM deliveries d
      JOIN users u ON u.id = d.recipient_id
      JOIN messages m ON m.id = d.message_id
      JOIN users s ON s.id = m.sender_id
      JOIN conversations c ON c.id = m.conversation_id
      {_prefs_sql("d.recipient_id", "d.conversation_id")}
     WHERE d.message_id = :mid AND d.recipient_id <> :sender AND d.status < 2
    """
)

# In-app rows a first run of plan created and the recipient has not read: what a
# rerun emits again (the same notification ids, so clients drop the repeat).
_UNREAD_OF = text(
    """
    SELECT id::text AS id FROM notifications
     WHERE id = ANY(CAST(:ids AS uuid[])) AND status = 'sent' AND read_at IS NULL
    """
)

# A rerun of plan: the next due time, or now when a dispatch whose result was lost left
# rows queued that no sender claimed (the agenda dispatches at once and takes them).
_NEXT_DUE_ON_RERUN = text(
    """
    SELECT LEAST(
               min(due_at) FILTER (WHERE status = 'pending'),
               CASE WHEN bool_or(status = 'queued' AND attempts = 0 AND source_id IS NULL
                                 AND channel <> 'in_app')
                    THEN CAST(:now AS timestamptz) END)
      FROM notifications WHERE message_id = :mid AND status IN ('pending', 'queued')
    """
)


def _plan_notice(row: Mapping[Any, Any], mid: str, cid: str, seq: int) -> NoticeMessage:
    return NoticeMessage(
        message_id=mid,
        conversation_id=cid,
        seq=seq,
        sender_id=row["sender_id"],
        sender_name=row["sender_name"],
        conversation_title=row["conversation_title"],
        conversation_kind=row["conversation_kind"],
        e2e=bool(row["e2e"]),
    )


class Planning(LogPart):
    """Writes a message's agenda (and sends its in-app step when that is all that is due)."""

    async def plan(
        self, input: PlanNotificationsInput
    ) -> tuple[PlanNotificationsResult, list[InAppNotice]]:
        """Writes a message's agenda: one row per recipient and wanted channel.

        Recipients are the message's deliveries not yet read, the sender excluded.
        Muted conversations and mentions-only recipients not mentioned get no row;
        a channel they want but cannot get (no device, no address, a bad number) and
        "every channel off" are recorded as skipped with the reason. Idempotent.

        When only the in-app step is due at once (the usual case: push, email and
        SMS wait for their delays), its rows are written as sent by the same
        statement, the unread counts read with the recipients, and returned as notices to emit
        (``dispatched`` says so): what dispatch_due would decide for them a moment
        later was just decided here. A rerun returns the notices again for those
        rows still unread, and ``next_due`` is now when an earlier run's dispatch left
        rows queued that nobody claimed (its result was lost: the agenda dispatches at
        once and takes them). Otherwise the rows are written pending and dispatch_due
        hands out whatever is due.

        Raises:
            InvalidInput: malformed ids.
        """
        msg = input.message
        mid = require_uuid(msg.message_id, "message_id")
        cid = require_uuid(msg.conversation_id, "conversation_id")
        sender = require_uuid(msg.sender_id, "sender_id")
        mentions = {require_uuid(m, "mention") for m in msg.mentions}
        key = message_dedupe_key(mid)
        opts = msg.options
        now = input.now
        due = {
            Channel.IN_APP: now,
            Channel.PUSH: msg.created_at + timedelta(seconds=opts.grace_seconds),
            Channel.EMAIL: msg.created_at + timedelta(seconds=opts.email_delay_seconds),
            Channel.SMS: msg.created_at + timedelta(seconds=opts.sms_delay_seconds),
        }
        send_in_app = all(at > now for channel, at in due.items() if channel is not Channel.IN_APP)
        planned = skipped = 0
        new = _NewRows.empty()
        in_app: dict[str, str] = {}  # row id -> recipient, written sent
        later: list[datetime] = []
        notices: list[InAppNotice] = []
        unread_before: dict[str, int] = {}
        # Autocommit: one write statement; the reads need no snapshot shared with it.
        async with self._autocommit() as session:
            recipients = (
                (
                    await session.execute(
                        _PLAN_RECIPIENTS, {"mid": mid, "sender": sender, "in_app": send_in_app}
                    )
                )
                .mappings()
                .all()
            )
            message = None
            if send_in_app and recipients and recipients[0]["message_live"]:
                message = _plan_notice(recipients[0], mid, cid, msg.seq)
            for row in recipients:
                if not row["is_member"]:
                    continue
                rid = row["recipient_id"]
                mention = rid in mentions
                allowed = _allowed(row, mention=mention, now=now)
                if allowed is None:
                    continue
                common = {
                    "recipient_id": rid,
                    "dedupe_key": key,
                    "message_id": mid,
                    "conversation_id": cid,
                    "seq": msg.seq,
                    "mention": mention,
                }
                if not allowed:
                    new.add(
                        channel=Channel.IN_APP,
                        status=NotificationStatus.SKIPPED,
                        reason=REASON_ALL_OFF,
                        due_at=now,
                        **common,
                    )
                    skipped += 1
                    continue
                for channel in sorted(allowed, key=_CHANNEL_ORDER.__getitem__):
                    problem = _reach_problem(channel, row)
                    if problem is not None:
                        new.add(
                            channel=channel,
                            status=NotificationStatus.SKIPPED,
                            reason=problem,
                            due_at=now,
                            **common,
                        )
                        skipped += 1
                    elif channel is Channel.IN_APP and message is not None:
                        row_id = new.add(
                            channel=channel, status=NotificationStatus.SENT, due_at=now, **common
                        )
                        in_app[row_id] = rid
                        unread_before[rid] = int(row["unread_before"] or 0)
                        planned += 1
                    else:
                        new.add(
                            channel=channel,
                            status=NotificationStatus.PENDING,
                            due_at=due[channel],
                            **common,
                        )
                        later.append(due[channel])
                        planned += 1
            inserted: set[str] = set()
            if new.ids:
                rows = await session.execute(_INSERT_ROWS, new.params(now))
                inserted = {r.id for r in rows}
            rerun = len(inserted) < len(new.ids)
            if rerun and in_app:
                # A rerun: emit again only what the first run made and is still unread.
                unread_ids = await session.execute(_UNREAD_OF, {"ids": sorted(in_app)})
                still = {r.id for r in unread_ids}
                in_app = {row_id: rid for row_id, rid in in_app.items() if row_id in still}
            if rerun:
                next_due = (
                    await session.execute(_NEXT_DUE_ON_RERUN, {"mid": mid, "now": now})
                ).scalar_one()
            else:
                next_due = min(later, default=None)
        if message is not None:
            notices = [
                InAppNotice(
                    recipient_id=rid,
                    notification_id=row_id,
                    message=message,
                    # The count read before this row, plus this row if this run wrote it.
                    unread_count=min(unread_before[rid] + (row_id in inserted), UNREAD_COUNT_CAP),
                )
                for row_id, rid in in_app.items()
            ]
        dispatched = DispatchDueResult(in_app=len(notices), next_due=next_due) if notices else None
        result = PlanNotificationsResult(
            planned=planned, skipped=skipped, next_due=next_due, dispatched=dispatched
        )
        return result, notices
