"""The index check: PostgreSQL against the index per conversation, and its repair."""

from __future__ import annotations

import logging
from collections import defaultdict
from urllib.parse import quote

from sqlalchemy import text

from missive.errors import InvalidInput
from missive.schemas import ConversationGap, SearchCheckResult
from missive.search._index import SEARCHABLE, SearchIndex, wake_indexer_on_commit
from missive.validation import require_uuid

log = logging.getLogger("missive.search")


class IndexCheck(SearchIndex):
    """Finds what the index misses or holds in excess, and queues the repair."""

    async def check(self, *, repair: bool, report_limit: int = 100) -> SearchCheckResult:
        """Compares, per conversation, the messages that should be searchable with
        the documents in the index; with ``repair``, queues missing messages for the
        indexer and stray documents for removal.

        Raises:
            ProviderUnavailable: Typesense or PostgreSQL is unavailable.
        """
        async with self._sessions() as session:
            rows = (
                await session.execute(
                    text(
                        "SELECT m.id::text AS id, m.conversation_id::text AS cid,"
                        " m.indexed_at IS NULL AS pending " + SEARCHABLE
                    )
                )
            ).all()
        expected: dict[str, set[str]] = defaultdict(set)
        pending: set[str] = set()
        for row in rows:
            if row.pending:
                pending.add(row.id)
            else:
                expected[row.cid].add(row.id)
        indexed: dict[str, set[str]] = defaultdict(set)
        async for doc_id, cid in self.typesense.export_ids(self.alias):
            indexed[cid].add(doc_id)
        live = {row.id for row in rows}
        gaps: list[ConversationGap] = []
        missing_ids: list[str] = []
        extra_ids: list[str] = []
        for cid in sorted(set(expected) | set(indexed)):
            missing = expected[cid] - indexed[cid]
            extra = indexed[cid] - live
            if missing or extra:
                gaps.append(
                    ConversationGap(
                        conversation_id=cid,
                        expected=len(expected[cid]),
                        indexed=len(indexed[cid]),
                        missing=len(missing),
                        extra=len(extra),
                    )
                )
                missing_ids.extend(missing)
                extra_ids.extend(extra)
        if repair and (missing_ids or extra_ids):
            await self._repair(missing_ids, extra_ids)
        return SearchCheckResult(
            conversations=len(set(expected) | set(indexed)),
            expected=sum(len(ids) for ids in expected.values()),
            indexed=sum(len(ids) for ids in indexed.values()),
            pending=len(pending),
            missing=len(missing_ids),
            extra=len(extra_ids),
            gaps=gaps[:report_limit],
            repaired=repair and bool(missing_ids or extra_ids),
        )

    async def _repair(self, missing: list[str], extra: list[str]) -> None:
        async with self._sessions() as session, session.begin():
            await session.execute(
                text(
                    "UPDATE messages SET indexed_at = NULL"
                    " WHERE id = ANY(CAST(:ids AS uuid[])) AND indexed_at IS NOT NULL"
                ),
                {"ids": missing},
            )
            await session.execute(
                text(
                    "INSERT INTO search_deletions (message_id)"
                    " SELECT unnest(CAST(:ids AS uuid[]))"
                    " ON CONFLICT (message_id) DO UPDATE"
                    " SET deleted_at = now(), processed_at = NULL"
                ),
                {"ids": [i for i in extra if _is_uuid(i)]},
            )
            await wake_indexer_on_commit(session)

    async def reconcile(self, collection: str) -> bool:
        """Runs a repairing check when the index holds fewer documents than PostgreSQL
        has marked indexed; returns whether it did."""
        _, info = await self.typesense.request("GET", f"/collections/{quote(collection)}")
        async with self._sessions() as session:
            indexed = (
                await session.execute(
                    text("SELECT count(*) " + SEARCHABLE + " AND m.indexed_at IS NOT NULL")
                )
            ).scalar_one()
        if int(info.get("num_documents", 0)) >= int(indexed):
            return False
        checked = await self.check(repair=True, report_limit=0)
        log.warning(
            "search index had lost documents: %d queued again, %d stray removed",
            checked.missing,
            checked.extra,
        )
        return True


def _is_uuid(value: str) -> bool:
    try:
        require_uuid(value, "id")
    except InvalidInput:
        return False
    return True
