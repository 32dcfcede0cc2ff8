"""The indexer: pending messages and tombstones into the index, batch by batch."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text

from missive.crypto import WrappedKey
from missive.errors import DecryptionFailed, KeyVersionMissing
from missive.schemas import IndexerRunResult
from missive.search._check import IndexCheck
from missive.search._documents import ms, search_document
from missive.search._index import WAKE_INDEXER

log = logging.getLogger("missive.search")

IDLE_POLL_SECONDS = 1.0
"""Without a wake-up the indexer still looks this often (a PostgreSQL ``NOTIFY`` can
be missed while its connection is replaced)."""
TOMBSTONE_KEEP = "7 days"
"""Processed tombstones are kept this long: a rebuild replays those processed
after it began."""

_PENDING = text(
    """
    SELECT m.id::text AS id, m.conversation_id::text AS conversation_id, m.seq,
           m.sender_id::text AS sender_id, m.body_ciphertext, m.key_version, m.created_at,
           m.edited_at, m.deleted_at, m.xmin::text AS version,
           c.encryption_mode::text AS mode, k.master_key_version, k.wrapped_key
    FROM messages m
    JOIN conversations c ON c.id = m.conversation_id
    LEFT JOIN conversation_keys k
           ON k.conversation_id = m.conversation_id AND k.version = m.key_version
    WHERE m.indexed_at IS NULL
    ORDER BY m.created_at
    LIMIT :limit
    """
)

# Optimistic: a row changed since it was read (its xmin moved) stays pending and is
# indexed again on the next pass, so no row lock is held across the HTTP call.
_MARK_INDEXED = text(
    """
    UPDATE messages m SET indexed_at = now()
    FROM unnest(CAST(:ids AS uuid[]), CAST(:versions AS text[])) AS done(id, version)
    WHERE m.id = done.id AND m.xmin::text = done.version AND m.indexed_at IS NULL
    """
)

# A tombstone whose message id lives again (a restored message) is not applied:
# the row is the truth and is pending itself.
_TOMBSTONES = text(
    """
    SELECT d.message_id::text AS id, d.deleted_at, m.id IS NOT NULL AS alive
    FROM search_deletions d LEFT JOIN messages m ON m.id = d.message_id
    WHERE d.processed_at IS NULL
    ORDER BY d.deleted_at
    LIMIT :limit
    """
)

_MARK_TOMBSTONES = text(
    """
    UPDATE search_deletions d SET processed_at = now()
    FROM unnest(CAST(:ids AS uuid[]), CAST(:stamps AS timestamptz[])) AS done(id, stamp)
    WHERE d.message_id = done.id AND d.deleted_at = done.stamp AND d.processed_at IS NULL
    """
)

_PRUNE_TOMBSTONES = text(
    f"DELETE FROM search_deletions WHERE processed_at < now() - interval '{TOMBSTONE_KEEP}'"
)


@dataclass(frozen=True)
class _Doc:
    """A pending change: a document to upsert, or an id to delete, or neither."""

    id: str
    version: str
    document: dict[str, Any] | None
    delete: bool


class Indexer(IndexCheck):
    """Keeps the index in step with what PostgreSQL marks pending."""

    def _document(self, row: Any) -> dict[str, Any]:
        key = self._cipher.data_key(
            row.conversation_id,
            row.key_version,
            WrappedKey(row.master_key_version, row.wrapped_key),
        )
        body = self._cipher.decrypt_body(
            key,
            conversation_id=row.conversation_id,
            message_id=row.id,
            ciphertext=row.body_ciphertext,
        )
        return search_document(
            row.id,
            row.conversation_id,
            row.sender_id,
            row.seq,
            ms(row.created_at),
            None if row.edited_at is None else ms(row.edited_at),
            body.decode("utf-8"),
        )

    def _change(self, row: Any) -> _Doc:
        if row.deleted_at is not None:
            return _Doc(row.id, row.version, None, delete=True)
        if row.mode != "standard":
            # e2e: the server has no plaintext; such messages are never indexed.
            return _Doc(row.id, row.version, None, delete=False)
        if row.wrapped_key is None:
            log.error("message %s has no data key version %s: not indexed", row.id, row.key_version)
            return _Doc(row.id, row.version, None, delete=False)
        try:
            return _Doc(row.id, row.version, self._document(row), delete=False)
        except (DecryptionFailed, KeyVersionMissing, UnicodeDecodeError) as err:
            # Retrying cannot fix it; `search-check` keeps reporting it as missing.
            log.error("message %s cannot be indexed: %s", row.id, type(err).__name__)
            return _Doc(row.id, row.version, None, delete=False)

    async def backlog(self) -> tuple[int, float]:
        """How many messages wait for the indexer, and the oldest one's age in seconds."""
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    text(
                        "SELECT count(*) AS pending,"
                        " COALESCE(EXTRACT(EPOCH FROM now() - min(created_at)), 0) AS age"
                        " FROM messages WHERE indexed_at IS NULL"
                    )
                )
            ).one()
        return int(row.pending), float(row.age)

    async def index_pending(self, *, limit: int | None = None) -> IndexerRunResult:
        """Indexes one batch of pending messages and tombstones.

        Upserts go in one import call, deletes in one delete-by-ids call; then
        the rows are marked in one UPDATE each. Idempotent: a rerun after a crash
        re-sends the same documents.

        Raises:
            ProviderUnavailable: Typesense (or PostgreSQL) is unavailable; nothing
                is marked, the batch stays pending.
        """
        limit = limit or self._settings.search_batch_size
        async with self._sessions() as session:
            rows = (await session.execute(_PENDING, {"limit": limit})).all()
            tombstones = (await session.execute(_TOMBSTONES, {"limit": limit})).all()
        changes = [self._change(row) for row in rows]
        documents = [c.document for c in changes if c.document is not None]
        deletes = [c.id for c in changes if c.delete]
        deletes += [t.id for t in tombstones if not t.alive]
        if documents:
            await self.typesense.import_documents(self.alias, documents)
        if deletes:
            await self.typesense.delete_documents(self.alias, deletes)
        async with self._sessions() as session, session.begin():
            if changes:
                await session.execute(
                    _MARK_INDEXED,
                    {"ids": [c.id for c in changes], "versions": [c.version for c in changes]},
                )
            if tombstones:
                await session.execute(
                    _MARK_TOMBSTONES,
                    {
                        "ids": [t.id for t in tombstones],
                        "stamps": [t.deleted_at for t in tombstones],
                    },
                )
        return IndexerRunResult(
            indexed=len(documents),
            deleted=len(deletes),
            skipped=len(changes) - len(documents) - sum(c.delete for c in changes),
            batches=1 if rows or tombstones else 0,
        )

    async def run_indexer(
        self,
        *,
        heartbeat: Callable[[IndexerRunResult], None],
        stopping: Callable[[], Awaitable[None]],
        max_seconds: float,
        reconcile: bool = False,
    ) -> IndexerRunResult:
        """Indexes until ``max_seconds`` pass or ``stopping`` completes.

        Ensures the index exists first. Between batches it waits to be woken (a
        PostgreSQL ``NOTIFY`` on WAKE_INDEXER) or IDLE_POLL_SECONDS, so a new message
        is searchable a few milliseconds after it is committed.

        With ``reconcile`` (a retry after a failure: Typesense may have restarted
        and lost acknowledged writes), it first compares document counts and, if the
        index has fewer than PostgreSQL says were indexed, queues the gaps again.

        Raises:
            ProviderUnavailable: Typesense or PostgreSQL is unavailable.
        """
        collection = await self.ensure_index()
        if reconcile:
            await self.reconcile(collection)
        total = IndexerRunResult()
        wake = asyncio.Event()
        deadline = time.monotonic() + max_seconds
        last_prune = 0.0
        stop_task = asyncio.ensure_future(stopping())
        try:
            async with self._listening(wake):
                while not stop_task.done() and time.monotonic() < deadline:
                    wake.clear()
                    done = await self.index_pending()
                    total = IndexerRunResult(
                        indexed=total.indexed + done.indexed,
                        deleted=total.deleted + done.deleted,
                        skipped=total.skipped + done.skipped,
                        batches=total.batches + done.batches,
                    )
                    heartbeat(total)
                    busy = done.indexed + done.deleted + done.skipped
                    if busy >= self._settings.search_batch_size:
                        continue
                    if time.monotonic() - last_prune > 60:
                        last_prune = time.monotonic()
                        async with self._sessions() as session, session.begin():
                            await session.execute(_PRUNE_TOMBSTONES)
                    waiter = asyncio.ensure_future(wake.wait())
                    await asyncio.wait(
                        {waiter, stop_task},
                        timeout=min(IDLE_POLL_SECONDS, max(deadline - time.monotonic(), 0)),
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                    waiter.cancel()
        finally:
            stop_task.cancel()
        return total

    @asynccontextmanager
    async def _listening(self, wake: asyncio.Event) -> AsyncIterator[None]:
        """LISTENs on WAKE_INDEXER on one pooled connection while inside."""

        def woken(*_: object) -> None:
            wake.set()

        async with self._engine.connect() as conn:
            raw: Any = (await conn.get_raw_connection()).driver_connection
            await raw.add_listener(WAKE_INDEXER, woken)
            try:
                yield
            finally:
                if not raw.is_closed():
                    await raw.remove_listener(WAKE_INDEXER, woken)
