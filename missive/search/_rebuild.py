"""The rebuild: a new collection filled from PostgreSQL, then swapped in under the alias."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import quote

from sqlalchemy import text

from missive.crypto import WrappedKey
from missive.errors import DecryptionFailed, InvalidInput, KeyVersionMissing
from missive.schemas import RebuildBegun, RebuildFillResult, RebuildFinishResult
from missive.search._documents import search_document
from missive.search._index import SEARCHABLE, SearchIndex, wake_indexer_on_commit

log = logging.getLogger("missive.search")

# The columns in the order _rebuild_documents unpacks them; times already in epoch ms.
# Run on the driver (asyncpg) itself: a chunk is thousands of rows, and SQLAlchemy's
# row processing would cost more than the query.
_REBUILD_CHUNK = """
    SELECT m.id::text AS id, m.conversation_id::text AS conversation_id, m.seq,
           m.sender_id::text AS sender_id, m.body_ciphertext, m.key_version,
           floor(extract(epoch FROM m.created_at) * 1000)::bigint AS created_ms,
           floor(extract(epoch FROM m.edited_at) * 1000)::bigint AS edited_ms,
           k.master_key_version, k.wrapped_key
    FROM (SELECT * FROM messages
           WHERE id > CAST($1 AS uuid) AND deleted_at IS NULL
             AND conversation_id NOT IN (
                 SELECT id FROM conversations WHERE encryption_mode = 'e2e')
           ORDER BY id
           LIMIT $2) AS m
    -- LEFT: a chunk keeps its size (the end is a short chunk); a message whose key
    -- version is missing is reported by _rebuild_documents, not silently dropped.
    LEFT JOIN conversation_keys k
         ON k.conversation_id = m.conversation_id AND k.version = m.key_version
    ORDER BY m.id
"""


class IndexRebuild(SearchIndex):
    """Rebuilds the index into a new collection while searches keep working."""

    async def begin_rebuild(self, version: int) -> RebuildBegun:
        """Creates collection ``<alias>_v<version>`` (idempotent) and records when the
        rebuild began.

        Raises:
            InvalidInput: the version is not a positive integer.
        """
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise InvalidInput(f"version must be a positive integer, got {version!r}")
        collection = f"{self.alias}_v{version}"
        previous = await self.current_collection()
        await self.create_collection(collection)
        async with self._sessions() as session:
            started_at = (await session.execute(text("SELECT now()"))).scalar_one()
            total = (await session.execute(text("SELECT count(*) " + SEARCHABLE))).scalar_one()
        return RebuildBegun(
            collection=collection, previous=previous, started_at=started_at, total=int(total)
        )

    async def _rebuild_rows(self, after: str, limit: int) -> list[Any]:
        async with self._engine.connect() as conn:
            driver = (await conn.get_raw_connection()).driver_connection
            assert driver is not None  # a live connection from the pool
            return list(await driver.fetch(_REBUILD_CHUNK, after, limit))

    async def fill_rebuild(
        self,
        collection: str,
        *,
        after_id: str,
        batch_size: int,
        max_seconds: float,
        heartbeat: Callable[[RebuildFillResult], None],
    ) -> RebuildFillResult:
        """Imports live standard messages with ids after ``after_id`` into ``collection``.

        Reads the next chunk from PostgreSQL while the current one is imported,
        heartbeats the cursor after each import and returns after ``max_seconds``
        (or at the end).

        Raises:
            ProviderUnavailable: Typesense or PostgreSQL is unavailable.
        """
        cursor = after_id or "00000000-0000-0000-0000-000000000000"
        deadline = time.monotonic() + max_seconds
        indexed = 0
        rows = await self._rebuild_rows(cursor, batch_size)
        documents = self._rebuild_documents(rows)
        while rows:
            last = rows[-1]["id"]
            # Typesense indexes this chunk while we read and decrypt the next one.
            importing = asyncio.ensure_future(
                self.typesense.import_documents(collection, documents)
            )
            try:
                await asyncio.sleep(0)  # let the import send its request first
                rows = await self._rebuild_rows(last, batch_size) if len(rows) == batch_size else []
                next_documents = self._rebuild_documents(rows)
                await importing
            except BaseException:
                importing.cancel()
                raise
            indexed += len(documents)
            cursor, documents = last, next_documents
            heartbeat(RebuildFillResult(after_id=cursor, indexed=indexed, done=False))
            if rows and time.monotonic() > deadline:
                return RebuildFillResult(after_id=cursor, indexed=indexed, done=False)
        return RebuildFillResult(after_id=cursor, indexed=indexed, done=True)

    def _rebuild_documents(self, rows: Sequence[Any]) -> list[dict[str, Any]]:
        """A chunk's documents, as the indexer makes them; a message that does not
        decrypt is logged and left out (the check command reports it as missing).

        The rebuild's inner loop: rows are unpacked as tuples, and each
        conversation's data key is looked up once per chunk.
        """
        keys: dict[tuple[str, int], Any] = {}
        documents: list[dict[str, Any]] = []
        for mid, cid, seq, sender, body, version, created_ms, edited_ms, master, wrapped in rows:
            try:
                key = keys.get((cid, version))
                if key is None:
                    if wrapped is None:
                        raise KeyVersionMissing(
                            f"data key version {version} of conversation {cid} is missing"
                        )
                    key = self._cipher.data_key(cid, version, WrappedKey(master, wrapped))
                    keys[(cid, version)] = key
                plain = self._cipher.decrypt_body(
                    key, conversation_id=cid, message_id=mid, ciphertext=body
                ).decode("utf-8")
            except (DecryptionFailed, KeyVersionMissing, UnicodeDecodeError) as err:
                log.error("message %s cannot be indexed: %s", mid, type(err).__name__)
                continue
            documents.append(search_document(mid, cid, sender, seq, created_ms, edited_ms, plain))
        return documents

    async def finish_rebuild(self, collection: str, started_at: datetime) -> RebuildFinishResult:
        """Swaps the alias to ``collection``, replays index writes made since the rebuild
        began, and drops the alias's older collections. Idempotent."""
        await self.point_alias(collection)
        async with self._sessions() as session, session.begin():
            replayed = (
                await session.execute(
                    text("UPDATE messages SET indexed_at = NULL WHERE indexed_at >= :t"),
                    {"t": started_at},
                )
            ).rowcount  # type: ignore[attr-defined]
            replayed += (
                await session.execute(
                    text(
                        "UPDATE search_deletions SET processed_at = NULL WHERE processed_at >= :t"
                    ),
                    {"t": started_at},
                )
            ).rowcount  # type: ignore[attr-defined]
            await wake_indexer_on_commit(session)
        _, collections = await self.typesense.request("GET", "/collections")
        dropped = []
        for info in collections:
            name = info["name"]
            if name.startswith(f"{self.alias}_v") and name != collection:
                await self.typesense.request("DELETE", f"/collections/{quote(name)}", ok=(404,))
                dropped.append(name)
        return RebuildFinishResult(dropped=sorted(dropped), replayed=int(replayed or 0))
