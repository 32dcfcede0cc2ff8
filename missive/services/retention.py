"""Retention: archive expired messages, purge the archive after the restore window, restore."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Protocol

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

from missive.errors import ConversationNotFound, InvalidInput
from missive.schemas import RestoreResult, RetentionStepResult
from missive.validation import require_uuid


class MessageIndexRemover(Protocol):
    """The search seam: removes messages from the search index by id.

    Called inside the archiving transaction, before it commits: if removal
    fails nothing is archived and the step is retried; if the commit fails
    after removal, the retry removes them again, so it must be idempotent
    (deleting an id that is not indexed is not an error). Restored messages
    come back with ``indexed_at`` NULL and the indexer picks them up again.
    """

    async def delete_messages(self, message_ids: Sequence[str]) -> None:
        """Deletes these messages' documents from the index."""


class PurgeSink(Protocol):
    """Told of messages purged for good, to drop what else refers to them (the
    purge itself deletes their ``notifications`` rows). Called inside the purge
    transaction before it commits; must be idempotent."""

    async def messages_purged(self, message_ids: Sequence[str]) -> None:
        """Deletes whatever refers to these (now purged) messages."""


ARCHIVED_COLUMNS = (
    "id",
    "conversation_id",
    "seq",
    "sender_id",
    "client_message_id",
    "body_ciphertext",
    "key_version",
    "created_at",
    "edited_at",
    "deleted_at",
)
"""Columns of messages that archived_messages has as its own."""

EXTRA_COLUMNS = ("e2e_header",)
"""Columns of messages archived in ``archived_messages.extra`` (a restore puts them back)."""

NOT_ARCHIVED = ("indexed_at",)
"""Columns of messages not archived: a restored message is indexed again (NULL)."""

# A column added to messages goes into one of the three lists above and, unless it is
# NOT_ARCHIVED, into _ARCHIVE (its own column of archived_messages, or a pair of extra's
# jsonb_build_object); tests/integration/test_retention.py fails until it does.
_ARCHIVE = """
WITH moved AS (
    DELETE FROM messages m
    WHERE m.id = ANY(ARRAY(
        SELECT v.id
        FROM conversations c
        CROSS JOIN LATERAL (
            SELECT e.id FROM messages e
            WHERE e.conversation_id = c.id
              AND e.created_at < $1::timestamptz
                                 - make_interval(days => COALESCE(c.retention_days, $2::int))
            ORDER BY e.created_at
            LIMIT $3
        ) v
        WHERE NOT c.legal_hold AND COALESCE(c.retention_days, $2::int) IS NOT NULL
        LIMIT $3
    ))
    RETURNING m.id, m.conversation_id, m.seq, m.sender_id, m.client_message_id,
              m.body_ciphertext, m.key_version, m.created_at, m.edited_at, m.deleted_at,
              m.e2e_header
), archived AS (
    INSERT INTO archived_messages (id, conversation_id, seq, sender_id, client_message_id,
                                   body_ciphertext, key_version, created_at, edited_at,
                                   deleted_at, extra, archived_at)
    SELECT mv.id, mv.conversation_id, mv.seq, mv.sender_id, mv.client_message_id,
           mv.body_ciphertext, mv.key_version, mv.created_at, mv.edited_at, mv.deleted_at,
           CASE WHEN mv.e2e_header IS NULL THEN '{}'::jsonb
                ELSE jsonb_build_object('e2e_header', mv.e2e_header) END,
           $1::timestamptz
    FROM moved mv
    RETURNING id
)
SELECT array_agg(id::text) FROM archived
"""
"""Moves up to $3 messages expired at $1 ($2: the default retention days), each row
read once (``DELETE ... RETURNING`` feeding ``INSERT``).

Costs about what a plain ``DELETE`` of the same rows does: the victims go to the
delete as an array (one index lookup each; a join with a CTE let the planner hash
whole tables every transaction), deliveries are left to the foreign key's cascade
(not archived: a restore rebuilds them from the watermarks), and the archive's
only B-tree is its (conversation_id, seq) key, inserted in order. The insert is
plain: a conflict would mean a message archived twice, better an error than a
row silently dropped. ``extra`` names EXTRA_COLUMNS rather than ``to_jsonb(row)``,
which keeps the body's bytes out of JSON, and is built only for a row that has one
of them set (an end-to-end encrypted message's header)."""

_PURGE = """
WITH gone AS (
    DELETE FROM archived_messages
    WHERE ctid = ANY(ARRAY(
        SELECT ctid FROM archived_messages
        WHERE archived_at < $1::timestamptz - make_interval(days => $2::int)
        LIMIT $3
    ))
    RETURNING id
), notes AS (
    DELETE FROM notifications n WHERE n.message_id = ANY(ARRAY(SELECT id FROM gone))
    RETURNING 1
)
SELECT (SELECT array_agg(id::text) FROM gone) AS ids,
       (SELECT count(*) FROM notes) AS notifications
"""
"""Deletes for good up to $3 messages archived more than $2 days before $1, with the
notification rows that refer to them.

Old rows are found through the BRIN index on archived_at (archiving appends in
time order) and deleted by their physical address: no B-tree on archived_at to
keep up while archiving."""

_RESTORE = """
WITH back AS (
    DELETE FROM archived_messages
    WHERE conversation_id = $1 AND archived_at >= $2::timestamptz
    RETURNING *
), msgs AS (
    -- The whole row, whatever columns other revisions added (kept in extra);
    -- indexed_at cleared so the search indexer takes the message up again.
    INSERT INTO messages
    SELECT (jsonb_populate_record(
        NULL::messages,
        (to_jsonb(b) - 'extra' - 'archived_at') || b.extra || '{"indexed_at": null}'::jsonb
    )).*
    FROM back b
    ON CONFLICT DO NOTHING
    RETURNING id, conversation_id, seq, sender_id, created_at
), dl AS (
    -- Deliveries are rebuilt for the conversation's participants other than the
    -- sender, with the status their watermarks give (receipts move deliveries and
    -- watermarks together); when it was delivered or read is not kept.
    INSERT INTO deliveries (message_id, recipient_id, conversation_id, seq, status, sent_at)
    SELECT m.id, p.user_id, m.conversation_id, m.seq,
           CASE WHEN p.read_seq >= m.seq THEN 2 WHEN p.delivered_seq >= m.seq THEN 1 ELSE 0 END,
           m.created_at
    FROM msgs m
    JOIN participants p ON p.conversation_id = m.conversation_id AND p.user_id <> m.sender_id
    ON CONFLICT DO NOTHING
    RETURNING 1
)
SELECT (SELECT count(*) FROM msgs) AS messages, (SELECT count(*) FROM dl) AS deliveries
"""


class RetentionService:
    """Moves expired messages to the archive and purges it, in bounded transactions.

    A message expires ``retention_days`` (its conversation's, else the global
    default) after it was created, unless its conversation is on legal hold.
    Both steps select what is left to do on every transaction, so a rerun
    after a crash simply carries on.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        default_days: int | None,
        restore_window_days: int,
        chunk_size: int,
        index: MessageIndexRemover | None = None,
        purge_sinks: Sequence[PurgeSink] = (),
    ):
        if default_days is not None and default_days <= 0:
            raise InvalidInput(f"RETENTION_DEFAULT_DAYS must be positive, got {default_days}")
        if restore_window_days <= 0:
            raise InvalidInput(
                f"RETENTION_RESTORE_WINDOW_DAYS must be positive, got {restore_window_days}"
            )
        self._engine = engine
        self.default_days = default_days
        self.restore_window_days = restore_window_days
        self.chunk_size = chunk_size
        self._index = index
        self._purge_sinks = list(purge_sinks)

    @asynccontextmanager
    async def _conn(self) -> AsyncIterator[asyncpg.Connection]:
        async with self._engine.connect() as conn:
            raw = await conn.get_raw_connection()
            yield raw.driver_connection  # type: ignore[misc]

    async def archive_expired(
        self,
        now: datetime,
        *,
        chunk_size: int = 0,
        on_progress: Callable[[RetentionStepResult], Awaitable[None]] | None = None,
        start: RetentionStepResult | None = None,
    ) -> RetentionStepResult:
        """Moves every message expired at ``now`` to the archive (its deliveries are dropped).

        One transaction per ``chunk_size`` messages; after each, the totals go
        to ``on_progress``. ``start`` continues the totals of an earlier attempt.
        """
        size = chunk_size or self.chunk_size
        done = start or RetentionStepResult(messages=0)
        while True:
            async with self._conn() as conn, conn.transaction():
                ids = await conn.fetchval(_ARCHIVE, now, self.default_days, size) or []
                if ids and self._index is not None:
                    await self._index.delete_messages(ids)
            if not ids:
                return done
            done = RetentionStepResult(
                messages=done.messages + len(ids), transactions=done.transactions + 1
            )
            if on_progress is not None:
                await on_progress(done)

    async def purge_archived(
        self,
        now: datetime,
        *,
        chunk_size: int = 0,
        on_progress: Callable[[RetentionStepResult], Awaitable[None]] | None = None,
        start: RetentionStepResult | None = None,
    ) -> RetentionStepResult:
        """Deletes for good archived messages older than the restore window at ``now``.

        Each transaction of ``chunk_size`` messages also deletes their
        notification rows (and tells the purge sinks).
        """
        size = chunk_size or self.chunk_size
        done = start or RetentionStepResult(messages=0)
        while True:
            async with self._conn() as conn, conn.transaction():
                row = await conn.fetchrow(_PURGE, now, self.restore_window_days, size)
                ids = row["ids"] or []
                for sink in self._purge_sinks:
                    if ids:
                        await sink.messages_purged(ids)
            if not ids:
                return done
            done = RetentionStepResult(
                messages=done.messages + len(ids),
                transactions=done.transactions + 1,
                notifications=done.notifications + int(row["notifications"]),
            )
            if on_progress is not None:
                await on_progress(done)

    async def restore(
        self, conversation_id: str, *, now: datetime, hold: bool = False
    ) -> RestoreResult:
        """Brings a conversation's archived messages back, within the restore window.

        With ``hold`` the conversation is put on legal hold in the same
        transaction, so the next cleanup does not archive them again. Their
        deliveries are rebuilt for the conversation's current participants
        (other than the sender), with the status each one's delivered / read
        watermark gives; the times of delivery and reading are not kept.

        Raises:
            InvalidInput: a malformed id, nothing archived, or only messages
                archived longer ago than the restore window (purged soon, or already).
            ConversationNotFound: no such conversation.
        """
        cid = require_uuid(conversation_id, "conversation_id")
        since = now - timedelta(days=self.restore_window_days)
        async with self._conn() as conn, conn.transaction():
            found = await conn.fetchval(
                "SELECT id FROM conversations WHERE id = $1 FOR UPDATE", cid
            )
            if found is None:
                raise ConversationNotFound(f"conversation {cid} does not exist")
            counts = await conn.fetchrow(
                "SELECT count(*) AS archived, count(*) FILTER (WHERE archived_at >= $2) AS within"
                " FROM archived_messages WHERE conversation_id = $1",
                cid,
                since,
            )
            if counts["within"] == 0:
                if counts["archived"]:
                    raise InvalidInput(
                        f"conversation {cid}: its {counts['archived']} archived message(s) were "
                        f"archived more than {self.restore_window_days} days ago, outside the "
                        "restore window; they can no longer be restored"
                    )
                raise InvalidInput(
                    f"conversation {cid} has no archived messages within the restore window of "
                    f"{self.restore_window_days} days (purged messages cannot be restored)"
                )
            row = await conn.fetchrow(_RESTORE, cid, since)
            if hold:
                await conn.execute("UPDATE conversations SET legal_hold = true WHERE id = $1", cid)
            held = await conn.fetchval("SELECT legal_hold FROM conversations WHERE id = $1", cid)
        return RestoreResult(
            conversation_id=cid,
            messages=row["messages"],
            deliveries=row["deliveries"],
            legal_hold=held,
        )

    async def set_policy(
        self,
        conversation_id: str,
        *,
        retention_days: int | None = None,
        clear_retention: bool = False,
        legal_hold: bool | None = None,
    ) -> tuple[int | None, bool]:
        """Sets a conversation's retention days (or clears them) and/or its legal hold.

        Returns:
            The conversation's (retention_days, legal_hold) afterwards.

        Raises:
            InvalidInput: zero or negative days, or nothing to change.
            ConversationNotFound: no such conversation.
        """
        cid = require_uuid(conversation_id, "conversation_id")
        if retention_days is not None and (isinstance(retention_days, bool) or retention_days <= 0):
            raise InvalidInput(
                f"retention days must be a positive number of days, got {retention_days}"
            )
        if retention_days is None and not clear_retention and legal_hold is None:
            raise InvalidInput("nothing to change: give retention days, clear them, or a hold")
        async with self._conn() as conn, conn.transaction():
            row = await conn.fetchrow(
                "UPDATE conversations SET"
                " retention_days = CASE WHEN $2 THEN NULL ELSE COALESCE($3, retention_days) END,"
                " legal_hold = COALESCE($4, legal_hold)"
                " WHERE id = $1 RETURNING retention_days, legal_hold",
                cid,
                clear_retention,
                retention_days,
                legal_hold,
            )
        if row is None:
            raise ConversationNotFound(f"conversation {cid} does not exist")
        return row["retention_days"], row["legal_hold"]
