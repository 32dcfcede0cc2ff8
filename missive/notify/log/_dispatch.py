"""Dispatch: a message's due rows handed out, and rows moved on when a channel stays down."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import text

from missive.notify.log._shared import (
    REASON_DELIVERED,
    REASON_GONE,
    REASON_LEFT,
    REASON_NO_FALLBACK,
    REASON_PREFERENCES,
    REASON_QUIET,
    REASON_READ,
    REASON_SENT_AS_FALLBACK,
    InAppNotice,
    LogPart,
    _allowed,
    _channel,
    _Decisions,
    _NewRows,
    _notice_messages,
    _reach_problem,
)
from missive.notify.log._sql import _INSERT_ROWS, _PREF_COLUMNS, _UNREAD_COUNTS, _prefs_sql
from missive.notify.preferences import quiet_hours_end, user_preferences
from missive.schemas import (
    Channel,
    DigestItem,
    DispatchDueInput,
    DispatchDueResult,
    FallBackInput,
    FallBackResult,
    NotificationStatus,
)
from missive.validation import require_uuid

FALLBACK_ORDER = (Channel.PUSH, Channel.EMAIL, Channel.SMS)
"""Where a channel that stays down falls back to (in-app never falls back)."""

# Rows due now; (a rerun of the same call: same workflow time) the rows that call
# already queued or sent, so a retried dispatch hands them out again; and, when the
# caller lists the times of its own earlier dispatches (:adopt), the rows a dispatch
# whose result was lost queued: still queued, never claimed (attempts = 0), queued
# at none of those times. No sender holds those (an agenda starts sends only from
# results it received), so this dispatch hands them out again.
_DUE_ROWS = text(
    f"""
    SELECT n.id::text AS id, n.recipient_id::text AS recipient_id, n.channel, n.status,
           n.updated_at, n.mention, d.status AS delivery_status, u.email, u.phone, u.timezone,
           n.channel = 'push' AND EXISTS (
               SELECT 1 FROM devices dv WHERE dv.user_id = n.recipient_id) AS has_device,
           {_PREF_COLUMNS}
      FROM notifications n
      JOIN users u ON u.id = n.recipient_id
      LEFT JOIN deliveries d ON d.message_id = n.message_id AND d.recipient_id = n.recipient_id
      {_prefs_sql("n.recipient_id", "n.conversation_id")}
     WHERE n.message_id = :mid
       AND ((n.status = 'pending' AND n.due_at <= :now)
            OR (n.status IN ('queued', 'sent') AND n.updated_at = :now AND n.source_id IS NULL)
            OR (CAST(:adopt AS boolean) AND n.status = 'queued' AND n.attempts = 0
                AND n.source_id IS NULL AND n.channel <> 'in_app'
                AND n.updated_at <> ALL(CAST(:handed_out_at AS timestamptz[]))))
    """
)

# Rows a lost dispatch queued, now handed out by this one: stamped with its time, so
# a rerun of this call finds them again and a later dispatch knows they are taken.
_ADOPT = text(
    """
    UPDATE notifications SET updated_at = :now
     WHERE id = ANY(CAST(:ids AS uuid[])) AND status = 'queued' AND attempts = 0
    RETURNING id::text AS id
    """
)

_NEXT_DUE = text(
    "SELECT min(due_at) FROM notifications WHERE message_id = :mid AND status = 'pending'"
)

_FALLBACK_SOURCES = text(
    f"""
    SELECT n.id::text AS id, n.recipient_id::text AS recipient_id, n.status, n.mention,
           n.message_id::text AS message_id, n.conversation_id::text AS conversation_id,
           n.seq, n.digest_id::text AS digest_id, n.item_count, u.email, u.phone,
           EXISTS (SELECT 1 FROM devices dv WHERE dv.user_id = n.recipient_id) AS has_device,
           {_PREF_COLUMNS}
      FROM notifications n
      JOIN users u ON u.id = n.recipient_id
      {_prefs_sql("n.recipient_id", "n.conversation_id")}
     WHERE n.id = ANY(CAST(:ids AS uuid[])) AND n.channel = :channel
       AND n.status IN ('queued', 'sending', 'fell_back')
    """
)

# A fallback row replaces the same message's row still planned on that channel:
# the recipient gets the message there now, not again when the planned row falls due.
_CANCEL_PLANNED_BY_FALLBACK = text(
    """
    UPDATE notifications AS n
       SET status = 'cancelled', reason = :reason, updated_at = :now
      FROM unnest(CAST(:recipients AS uuid[]), CAST(:channels AS text[]),
                  CAST(:message_ids AS uuid[])) AS f(recipient_id, channel, message_id)
     WHERE n.recipient_id = f.recipient_id AND n.channel = f.channel
       AND n.message_id = f.message_id AND n.dedupe_key LIKE 'message:%'
       AND n.status = 'pending'
    """
)


def _quiet_reason(note: str | None, until: datetime) -> str:
    text_ = f"{REASON_QUIET} until {until.isoformat()}"
    return f"{text_} ({note})" if note else text_


class Dispatch(LogPart):
    """Hands out due rows and falls back to the next channel."""

    async def dispatch_due(
        self, input: DispatchDueInput
    ) -> tuple[DispatchDueResult, list[InAppNotice]]:
        """Handles a message's rows due by ``input.now``.

        Read (or, for push, delivered) meanwhile, deleted, left or no longer wanted:
        cancelled. No device / address / number any more: skipped. Push, email and
        SMS inside the recipient's quiet hours: moved to their end, still pending.
        Otherwise in-app rows are sent (returned as notices to emit), push rows
        queued (returned for send_push), email / SMS rows queued (returned as digest
        items). A rerun with the same ``now`` returns what the first run handed out.

        With ``input.handed_out_at`` (the times of the caller's earlier dispatches of
        this message), queued rows no sender ever claimed and queued at none of those
        times are handed out again too (``recovered``): a dispatch queued them and its
        result was lost with the workflow task that ran it, so nobody sends them.

        Raises:
            InvalidInput: a malformed message id.
        """
        mid = require_uuid(input.message_id, "message_id")
        now = input.now
        decisions = _Decisions.empty()
        push: list[str] = []
        digests: list[DigestItem] = []
        in_app: dict[str, str] = {}  # row id -> recipient
        cancelled = skipped = deferred = 0
        adopt = input.handed_out_at is not None
        params = {
            "mid": mid,
            "now": now,
            "adopt": adopt,
            "handed_out_at": list(input.handed_out_at or []),
        }
        async with self._sessions() as session, session.begin():
            rows = (await session.execute(_DUE_ROWS, params)).mappings().all()
            lost = [
                r["id"]
                for r in rows
                if r["status"] == NotificationStatus.QUEUED and r["updated_at"] != now
            ]
            recovered: set[str] = set()
            if lost:
                found = await session.execute(_ADOPT, {"ids": sorted(lost), "now": now})
                recovered = {r.id for r in found}
                rows = [r for r in rows if r["id"] in recovered or r["id"] not in lost]
            notices = await _notice_messages(session, [mid]) if rows else {}
            message = notices.get(mid)
            for row in rows:
                channel = Channel(row["channel"])
                rid = row["recipient_id"]
                if row["status"] != NotificationStatus.PENDING:
                    # Handed out by an earlier run of this same call, or queued by a
                    # dispatch whose result was lost (recovered).
                    if channel is Channel.IN_APP:
                        in_app[row["id"]] = rid
                    elif channel is Channel.PUSH:
                        push.append(row["id"])
                    else:
                        digests.append(DigestItem(row["id"], rid, channel))
                    continue
                verdict = self._due_verdict(row, channel, message is not None, now)
                if verdict is not None:
                    status, reason, until = verdict
                    decisions.add(row["id"], status, reason, until)
                    continue
                decisions.add(
                    row["id"],
                    NotificationStatus.SENT
                    if channel is Channel.IN_APP
                    else NotificationStatus.QUEUED,
                )
            changed = await decisions.apply(session, now=now, from_statuses=["pending"])
            by_id = {row["id"]: row for row in rows}
            for row_id, new_status in zip(decisions.ids, decisions.statuses, strict=True):
                if row_id not in changed:
                    continue
                row = by_id[row_id]
                channel = Channel(row["channel"])
                if new_status == NotificationStatus.CANCELLED:
                    cancelled += 1
                elif new_status == NotificationStatus.SKIPPED:
                    skipped += 1
                elif new_status == NotificationStatus.PENDING:
                    deferred += 1
                elif new_status == NotificationStatus.SENT:
                    in_app[row_id] = row["recipient_id"]
                elif channel is Channel.PUSH:
                    push.append(row_id)
                else:
                    digests.append(DigestItem(row_id, row["recipient_id"], channel))
            unread: dict[str, int] = {}
            if in_app:
                counts = await session.execute(
                    _UNREAD_COUNTS, {"rids": sorted(set(in_app.values()))}
                )
                unread = {r.recipient_id: int(r.unread) for r in counts}
            next_due = (await session.execute(_NEXT_DUE, {"mid": mid})).scalar_one()
        emitted = [
            InAppNotice(
                recipient_id=rid,
                notification_id=row_id,
                message=message,
                unread_count=unread.get(rid, 0),
            )
            for row_id, rid in in_app.items()
            if message is not None
        ]
        result = DispatchDueResult(
            push=push,
            digests=digests,
            in_app=len(in_app),
            cancelled=cancelled,
            skipped=skipped,
            deferred=deferred,
            next_due=next_due,
            recovered=len(recovered),
        )
        return result, emitted

    @staticmethod
    def _due_verdict(
        row: Mapping[Any, Any], channel: Channel, message_exists: bool, now: datetime
    ) -> tuple[NotificationStatus, str, datetime | None] | None:
        """Why a due row is not handed out now (status, reason, new due time), or None."""
        delivery = row["delivery_status"]
        if not message_exists or delivery is None:
            return NotificationStatus.CANCELLED, REASON_GONE, None
        if delivery >= 2:
            return NotificationStatus.CANCELLED, REASON_READ, None
        if channel is Channel.PUSH and delivery >= 1:
            return NotificationStatus.CANCELLED, REASON_DELIVERED, None
        if not row["is_member"]:
            return NotificationStatus.CANCELLED, REASON_LEFT, None
        allowed = _allowed(row, mention=row["mention"], now=now)
        if allowed is None or channel not in allowed:
            return NotificationStatus.CANCELLED, REASON_PREFERENCES, None
        if channel is Channel.IN_APP:
            return None
        problem = _reach_problem(channel, row)
        if problem is not None:
            return NotificationStatus.SKIPPED, problem, None
        until, note = quiet_hours_end(
            user_preferences(row, prefix="np_"), row["timezone"], now, mention=row["mention"]
        )
        if until is not None:
            return NotificationStatus.PENDING, _quiet_reason(note, until), until
        return None

    async def fall_back(self, input: FallBackInput) -> FallBackResult:
        """Moves rows whose channel stayed down to the next channel each recipient takes.

        The order is push -> email -> sms; a channel counts only if the recipient
        allows it (for this conversation) and can get it (an email address; SMS
        opt-in and an E.164 number). The new rows are queued to send now (no digest
        window) with ``fallback:{row id}`` as dedupe key; the old rows become
        ``fell_back``, or ``failed`` when nothing is left. Idempotent: a rerun returns
        the same new rows.

        Raises:
            InvalidInput: a malformed id or channel.
        """
        ids = sorted({require_uuid(i, "notification_id") for i in input.notification_ids})
        failed_channel = _channel(input.channel)
        later = (
            FALLBACK_ORDER[FALLBACK_ORDER.index(failed_channel) + 1 :]
            if failed_channel in FALLBACK_ORDER
            else ()
        )
        now = input.now
        new = _NewRows.empty()
        decisions = _Decisions.empty()
        targets: dict[Channel, list[str]] = defaultdict(list)
        if not ids:
            return FallBackResult()
        async with self._sessions() as session, session.begin():
            rows = (
                (
                    await session.execute(
                        _FALLBACK_SOURCES, {"ids": ids, "channel": failed_channel.value}
                    )
                )
                .mappings()
                .all()
            )
            for row in rows:
                nxt = self._fallback_channel(row, later, now)
                if nxt is None:
                    decisions.add(
                        row["id"],
                        NotificationStatus.FAILED,
                        f"{input.reason}; {REASON_NO_FALLBACK}",
                    )
                    continue
                digest_of = (row["digest_id"] or row["id"]) if row["message_id"] is None else None
                new_id = new.add(
                    recipient_id=row["recipient_id"],
                    channel=nxt,
                    dedupe_key=f"fallback:{row['id']}",
                    status=NotificationStatus.QUEUED,
                    due_at=now,
                    message_id=row["message_id"],
                    conversation_id=row["conversation_id"],
                    seq=row["seq"],
                    mention=row["mention"],
                    source_id=row["id"],
                    digest_id=digest_of,
                    item_count=row["item_count"],
                )
                decisions.add(row["id"], NotificationStatus.FELL_BACK, input.reason)
                targets[nxt].append(new_id)
            if new.ids:
                await session.execute(_INSERT_ROWS, new.params(now))
                planned = [
                    (r, c, m)
                    for r, c, m in zip(new.recipients, new.channels, new.message_ids, strict=True)
                    if m is not None
                ]
                if planned:
                    await session.execute(
                        _CANCEL_PLANNED_BY_FALLBACK,
                        {
                            "recipients": [r for r, _, _ in planned],
                            "channels": [c for _, c, _ in planned],
                            "message_ids": [m for _, _, m in planned],
                            "reason": REASON_SENT_AS_FALLBACK,
                            "now": now,
                        },
                    )
            changed = await decisions.apply(session, now=now, from_statuses=["queued", "sending"])
        moved = [c for c in later if targets.get(c)]
        first = moved[0] if moved else None
        return FallBackResult(
            channel=first,
            notification_ids=targets[first] if first else [],
            failed=sum(
                1
                for i, s in zip(decisions.ids, decisions.statuses, strict=True)
                if i in changed and s == NotificationStatus.FAILED
            ),
            fell_back=sum(
                1
                for i, s in zip(decisions.ids, decisions.statuses, strict=True)
                if i in changed and s == NotificationStatus.FELL_BACK
            ),
            sms_notification_ids=targets[Channel.SMS] if first is Channel.EMAIL else [],
        )

    @staticmethod
    def _fallback_channel(
        row: Mapping[Any, Any], later: tuple[Channel, ...], now: datetime
    ) -> Channel | None:
        """The first of ``later`` the row's recipient allows and can get."""
        if row["message_id"] is not None and not row["is_member"]:
            return None
        allowed = _allowed(row, mention=row["mention"], now=now)
        if not allowed:
            return None
        for channel in later:
            if channel in allowed and _reach_problem(channel, row) is None:
                return channel
        return None
