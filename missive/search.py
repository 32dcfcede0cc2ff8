"""Message search over Typesense: index, indexer batches, rebuilds, checks, user queries."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from missive.config import Settings
from missive.crypto import MessageCipher, WrappedKey
from missive.errors import (
    DecryptionFailed,
    InvalidInput,
    KeyVersionMissing,
    NotAMember,
    PermanentError,
    ProviderUnavailable,
)
from missive.schemas import (
    ConversationGap,
    IndexerRunResult,
    RebuildBegun,
    RebuildFillResult,
    RebuildFinishResult,
    SearchCheckResult,
    SearchHit,
    SearchKeyGrant,
    SearchQuery,
    SearchResult,
)
from missive.validation import require_uuid

log = logging.getLogger("missive.search")

NOTIFY_CHANNEL = "missive_search"
"""Where the triggers of migration 0003 announce index work."""

MAX_QUERY_CHARS = 512
"""Longest query text accepted."""
MAX_PER_PAGE = 100
MAX_PAGE = 1_000
IDLE_POLL_SECONDS = 1.0
"""Without a notification the indexer still looks this often (a NOTIFY can be
missed while its connection is replaced)."""
TOMBSTONE_KEEP = "7 days"
"""Processed tombstones are kept this long: a rebuild replays those processed
after it began."""


class SearchRejected(PermanentError):
    """Typesense refused a request as malformed (4xx); retrying cannot help."""


def collection_schema(name: str) -> dict[str, Any]:
    """The Typesense schema of a message collection."""
    return {
        "name": name,
        "fields": [
            {"name": "conversation_id", "type": "string", "facet": True},
            {"name": "sender_id", "type": "string", "facet": True},
            {"name": "seq", "type": "int64"},
            {"name": "created_at", "type": "int64"},
            {"name": "edited_at", "type": "int64", "optional": True},
            {"name": "text", "type": "string"},
        ],
        "default_sorting_field": "created_at",
    }


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _ms(value: datetime) -> int:
    """Epoch milliseconds, floored in integers (as the rebuild's SQL does): no float
    rounding, so the indexer and a rebuild write the same value."""
    return (value - _EPOCH) // timedelta(milliseconds=1)


def _search_document(
    mid: str,
    cid: str,
    sender: str,
    seq: int,
    created_ms: int,
    edited_ms: int | None,
    text_: str,
) -> dict[str, Any]:
    """A message's Typesense document (the collection's fields; edited_at only if edited)."""
    document: dict[str, Any] = {
        "id": mid,
        "conversation_id": cid,
        "sender_id": sender,
        "seq": seq,
        "created_at": created_ms,
        "text": text_,
    }
    if edited_ms is not None:
        document["edited_at"] = edited_ms
    return document


def _from_ms(value: int) -> datetime:
    return datetime.fromtimestamp(value / 1000, UTC)


def parent_key_value(admin_key: str, alias: str) -> str:
    """The search-only parent key, derived from the admin key: every process
    computes the same value, so no process has to store or fetch it."""
    digest = hmac.new(admin_key.encode(), f"missive-search:{alias}".encode(), hashlib.sha256)
    return digest.hexdigest()


def scoped_search_key(parent_key: str, embedded: dict[str, Any]) -> str:
    """Typesense's scoped search key: HMAC-SHA256 of the embedded parameters under the
    parent key (what ``typesense.ApiKeys.generate_scoped_search_key`` computes,
    without building a synchronous client)."""
    params = json.dumps(embedded)
    digest = base64.b64encode(
        hmac.new(parent_key.encode(), params.encode(), hashlib.sha256).digest()
    ).decode()
    return base64.b64encode(f"{digest}{parent_key[:4]}{params}".encode()).decode()


class TypesenseClient:
    """A small async client of Typesense's REST API (aiohttp, one session).

    Connection failures and 5xx answers raise ProviderUnavailable (retryable);
    4xx answers raise SearchRejected with Typesense's message, except those a
    caller accepts through ``ok``.
    """

    def __init__(self, url: str, api_key: str, *, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        """Base URL of the server."""
        self._api_key = api_key
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=self._timeout,
                connector=aiohttp.TCPConnector(limit=32, keepalive_timeout=30),
            )
        return self._session

    async def close(self) -> None:
        """Closes the HTTP session (a later call opens a new one)."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        body: Any = None,
        data: bytes | None = None,
        api_key: str | None = None,
        ok: Sequence[int] = (),
    ) -> tuple[int, Any]:
        """Sends one request; returns (status, parsed JSON or text).

        Raises:
            ProviderUnavailable: Typesense did not answer or answered 5xx.
            SearchRejected: a 4xx answer not listed in ``ok``.
        """
        headers = {"X-TYPESENSE-API-KEY": api_key or self._api_key}
        if data is not None:
            headers["Content-Type"] = "text/plain"
        try:
            async with self._http().request(
                method,
                f"{self.url}{path}",
                params=params,
                json=body if data is None else None,
                data=data,
                headers=headers,
            ) as response:
                raw = await response.text()
                status = response.status
        except (aiohttp.ClientError, OSError, TimeoutError) as err:
            raise ProviderUnavailable(
                f"Typesense at {self.url} did not answer: {type(err).__name__}: {err}"[:300]
            ) from None
        parsed: Any = raw
        if raw[:1] in ("{", "["):
            try:
                parsed = json.loads(raw)
            except ValueError:
                parsed = raw
        if status >= 500 or status == 503:
            raise ProviderUnavailable(f"Typesense at {self.url} answered {status}: {raw[:200]}")
        if status >= 400 and status not in ok:
            message = parsed.get("message") if isinstance(parsed, dict) else raw[:200]
            raise SearchRejected(f"Typesense refused {method} {path} ({status}): {message}")
        return status, parsed

    async def import_documents(self, collection: str, documents: Sequence[dict[str, Any]]) -> None:
        """Upserts documents in ONE import call.

        Raises:
            ProviderUnavailable: Typesense is down, or refused some documents
                (the whole batch is retried; upserts are idempotent).
        """
        if not documents:
            return
        payload = b"\n".join(map(orjson.dumps, documents))
        _, answer = await self.request(
            "POST",
            f"/collections/{quote(collection)}/documents/import",
            params={"action": "upsert"},
            data=payload,
        )
        lines = answer.splitlines() if isinstance(answer, str) else [json.dumps(answer)]
        failed = [line for line in lines if '"success":true' not in line.replace(" ", "")]
        if failed:
            raise ProviderUnavailable(
                f"Typesense refused {len(failed)} of {len(documents)} documents: {failed[0][:200]}"
            )

    async def delete_documents(self, collection: str, ids: Sequence[str]) -> int:
        """Removes documents by id in one call; absent ones are fine."""
        if not ids:
            return 0
        _, answer = await self.request(
            "DELETE",
            f"/collections/{quote(collection)}/documents",
            params={"filter_by": f"id:[{','.join(ids)}]", "batch_size": 500},
        )
        return int(answer.get("num_deleted", 0)) if isinstance(answer, dict) else 0

    async def export_ids(self, collection: str) -> AsyncIterator[tuple[str, str]]:
        """Every (document id, conversation id) of a collection, streamed."""
        headers = {"X-TYPESENSE-API-KEY": self._api_key}
        try:
            async with self._http().get(
                f"{self.url}/collections/{quote(collection)}/documents/export",
                params={"include_fields": "id,conversation_id"},
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=None, sock_read=60),
            ) as response:
                if response.status >= 400:
                    raise ProviderUnavailable(
                        f"Typesense export of {collection} answered {response.status}"
                    )
                async for line in response.content:
                    if line.strip():
                        doc = json.loads(line)
                        yield doc["id"], doc.get("conversation_id", "")
        except (aiohttp.ClientError, OSError, TimeoutError) as err:
            raise ProviderUnavailable(f"Typesense at {self.url} did not answer: {err}") from None


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

_SEARCHABLE = """
    FROM messages m JOIN conversations c ON c.id = m.conversation_id
    WHERE m.deleted_at IS NULL AND c.encryption_mode = 'standard'
"""


@dataclass(frozen=True)
class _Doc:
    """A pending change: a document to upsert, or an id to delete, or neither."""

    id: str
    version: str
    document: dict[str, Any] | None
    delete: bool


class SearchService:
    """Indexes messages into Typesense and answers users' searches.

    The index is an alias (``typesense_collection``) over versioned collections.
    PostgreSQL says what is pending (``messages.indexed_at IS NULL`` and
    ``search_deletions``), so delivery never waits for search and a Typesense
    outage only delays indexing.
    """

    def __init__(
        self,
        settings: Settings,
        engine: AsyncEngine,
        sessions: async_sessionmaker[AsyncSession],
        cipher: MessageCipher,
        typesense: TypesenseClient,
    ) -> None:
        self.alias = settings.typesense_collection
        """The alias every search and index write goes through."""
        self._settings = settings
        self._engine = engine
        self._sessions = sessions
        self._cipher = cipher
        self.typesense = typesense
        """The Typesense client (admin key)."""
        self._parent_key = parent_key_value(settings.typesense_api_key, self.alias)
        self._index_ready = False

    # -- the index ----------------------------------------------------------------

    def first_collection(self) -> str:
        """The collection made when there is none yet."""
        return f"{self.alias}_v1"

    async def current_collection(self) -> str | None:
        """The collection the alias points at, or None when there is no alias."""
        status, answer = await self.typesense.request(
            "GET", f"/aliases/{quote(self.alias)}", ok=(404,)
        )
        return None if status == 404 else str(answer["collection_name"])

    async def create_collection(self, name: str) -> None:
        """Creates a collection; one that already exists is left as it is."""
        await self.typesense.request(
            "POST", "/collections", body=collection_schema(name), ok=(409,)
        )

    async def ensure_index(self) -> str:
        """Creates the first collection, the alias and the parent search key if missing.

        Idempotent; returns the collection the alias points at.
        """
        current = await self.current_collection()
        if current is None:
            current = self.first_collection()
            await self.create_collection(current)
            await self.point_alias(current)
        await self.typesense.request(
            "POST",
            "/keys",
            body={
                "value": self._parent_key,
                "description": f"missive: parent of per-user search keys on {self.alias}",
                "actions": ["documents:search"],
                "collections": [self.alias],
            },
            ok=(409,),  # already created by this or another process
        )
        return current

    async def point_alias(self, collection: str) -> None:
        """Points the alias at a collection (atomic for searches)."""
        await self.typesense.request(
            "PUT", f"/aliases/{quote(self.alias)}", body={"collection_name": collection}
        )

    # -- indexing -----------------------------------------------------------------

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
        return _search_document(
            row.id,
            row.conversation_id,
            row.sender_id,
            row.seq,
            _ms(row.created_at),
            None if row.edited_at is None else _ms(row.edited_at),
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

        Ensures the index exists first. Between batches it waits for a NOTIFY on
        ``missive_search`` (or IDLE_POLL_SECONDS), so a new message is searchable
        a few milliseconds after it is committed.

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

    async def reconcile(self, collection: str) -> bool:
        """Runs a repairing check when the index holds fewer documents than PostgreSQL
        has marked indexed; returns whether it did."""
        _, info = await self.typesense.request("GET", f"/collections/{quote(collection)}")
        async with self._sessions() as session:
            indexed = (
                await session.execute(
                    text("SELECT count(*) " + _SEARCHABLE + " AND m.indexed_at IS NOT NULL")
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

    @asynccontextmanager
    async def _listening(self, wake: asyncio.Event) -> AsyncIterator[None]:
        """LISTENs on the search channel on one pooled connection while inside."""

        def notified(*_: object) -> None:
            wake.set()

        async with self._engine.connect() as conn:
            raw: Any = (await conn.get_raw_connection()).driver_connection
            await raw.add_listener(NOTIFY_CHANNEL, notified)
            try:
                yield
            finally:
                if not raw.is_closed():
                    await raw.remove_listener(NOTIFY_CHANNEL, notified)

    async def notify(self) -> None:
        """Wakes the indexer now."""
        async with self._sessions() as session, session.begin():
            await session.execute(
                text("SELECT pg_notify(:channel, '')"), {"channel": NOTIFY_CHANNEL}
            )

    # -- rebuild ------------------------------------------------------------------

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
            total = (await session.execute(text("SELECT count(*) " + _SEARCHABLE))).scalar_one()
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
        """A chunk's documents, as _document makes them; a message that does not
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
            documents.append(_search_document(mid, cid, sender, seq, created_ms, edited_ms, plain))
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
            await session.execute(text("SELECT pg_notify(:c, '')"), {"c": NOTIFY_CHANNEL})
        _, collections = await self.typesense.request("GET", "/collections")
        dropped = []
        for info in collections:
            name = info["name"]
            if name.startswith(f"{self.alias}_v") and name != collection:
                await self.typesense.request("DELETE", f"/collections/{quote(name)}", ok=(404,))
                dropped.append(name)
        return RebuildFinishResult(dropped=sorted(dropped), replayed=int(replayed or 0))

    # -- check --------------------------------------------------------------------

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
                        " m.indexed_at IS NULL AS pending " + _SEARCHABLE
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
            await session.execute(text("SELECT pg_notify(:c, '')"), {"c": NOTIFY_CHANNEL})

    # -- user search --------------------------------------------------------------

    async def issue_key(self, user_id: str, conversation_id: str | None = None) -> SearchKeyGrant:
        """A short-lived scoped key that can only search the user's conversations.

        The conversations come from ``participants`` now, so a removed member's
        next key no longer covers the conversation.

        Raises:
            InvalidInput: a malformed id.
            NotAMember: ``conversation_id`` is not one of the user's conversations
                (an unknown conversation answers the same, telling nothing).
        """
        uid = require_uuid(user_id, "user_id")
        cid = require_uuid(conversation_id, "conversation_id") if conversation_id else None
        if not self._index_ready:
            # Once per process: the parent key must exist before a scoped key works,
            # whether or not the indexer has started yet.
            await self.ensure_index()
            self._index_ready = True
        async with self._sessions() as session:
            ids = (
                (
                    await session.execute(
                        text(
                            "SELECT p.conversation_id::text FROM participants p"
                            " JOIN conversations c ON c.id = p.conversation_id"
                            " WHERE p.user_id = :uid AND c.encryption_mode = 'standard'"
                            " ORDER BY 1"
                        ),
                        {"uid": uid},
                    )
                )
                .scalars()
                .all()
            )
        if cid is not None:
            if cid not in ids:
                raise NotAMember(f"user {uid} does not take part in conversation {cid}")
            ids = [cid]
        expires_at = int(time.time()) + self._settings.search_key_ttl_seconds
        if not ids:
            return SearchKeyGrant(
                key="", collection=self.alias, expires_at=expires_at, conversation_count=0
            )
        scope = ",".join(f"`{c}`" for c in ids)
        key = scoped_search_key(
            self._parent_key,
            {"filter_by": f"conversation_id:=[{scope}]", "expires_at": expires_at},
        )
        return SearchKeyGrant(
            key=key, collection=self.alias, expires_at=expires_at, conversation_count=len(ids)
        )

    async def search(self, user_id: str, query: SearchQuery) -> SearchResult:
        """Searches the messages of the user's conversations.

        Raises:
            InvalidInput: an empty or too long query, a bad filter value or page.
            NotAMember: a conversation filter the user does not take part in.
            ProviderUnavailable: Typesense is unavailable.
        """
        params = search_params(query)
        grant = await self.issue_key(user_id, query.conversation_id)
        return await query_with_key(self.typesense, grant, params, query)


def _is_uuid(value: str) -> bool:
    try:
        require_uuid(value, "id")
    except InvalidInput:
        return False
    return True


def _aware(value: datetime | None, name: str) -> int | None:
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise InvalidInput(f"{name} must be a datetime")
    if value.tzinfo is None:
        raise InvalidInput(f"{name} must include a timezone")
    return _ms(value)


def search_params(query: SearchQuery) -> dict[str, Any]:
    """Checks a query and builds Typesense's search parameters from its values only.

    Every filter value is validated (UUIDs, times, ints) and written by this
    function: nothing the caller sends becomes filter syntax. The scoped key's
    embedded filter is ANDed with this one by Typesense, so it can only narrow.

    Raises:
        InvalidInput: naming the bad field.
    """
    if not isinstance(query.text, str) or not query.text.strip():
        raise InvalidInput("query is empty")
    if len(query.text) > MAX_QUERY_CHARS:
        raise InvalidInput(
            f"query is {len(query.text)} characters, over the limit of {MAX_QUERY_CHARS}"
        )
    for name, value, high in (
        ("page", query.page, MAX_PAGE),
        ("per_page", query.per_page, MAX_PER_PAGE),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
            raise InvalidInput(f"{name} must be an integer from 1 to {high}, got {value!r}")
    filters: list[str] = []
    if query.conversation_id is not None:
        filters.append(
            f"conversation_id:=`{require_uuid(query.conversation_id, 'conversation_id')}`"
        )
    if query.sender_id is not None:
        filters.append(f"sender_id:=`{require_uuid(query.sender_id, 'sender_id')}`")
    since, until = _aware(query.since, "since"), _aware(query.until, "until")
    if since is not None and until is not None and since > until:
        raise InvalidInput("since is after until")
    if since is not None:
        filters.append(f"created_at:>={since}")
    if until is not None:
        filters.append(f"created_at:<={until}")
    params: dict[str, Any] = {
        "q": query.text.strip(),
        "query_by": "text",
        "num_typos": 2,
        "typo_tokens_threshold": 1,
        "sort_by": "_text_match:desc,created_at:desc",
        "highlight_full_fields": "text",
        "page": query.page,
        "per_page": query.per_page,
    }
    if filters:
        params["filter_by"] = " && ".join(filters)
    return params


async def query_with_key(
    typesense: TypesenseClient, grant: SearchKeyGrant, params: dict[str, Any], query: SearchQuery
) -> SearchResult:
    """Runs a search with a scoped key; a grant for no conversation finds nothing.

    Raises:
        ProviderUnavailable: Typesense is unavailable.
        InvalidInput: Typesense refused the query.
    """
    if not grant.conversation_count:
        return SearchResult(found=0, page=query.page, per_page=query.per_page)
    try:
        _, answer = await typesense.request(
            "GET",
            f"/collections/{quote(grant.collection)}/documents/search",
            params=params,
            api_key=grant.key,
            ok=(401, 403),
        )
    except SearchRejected as err:
        raise InvalidInput(f"the search was refused: {err}") from None
    if isinstance(answer, dict) and "hits" not in answer:
        # 401/403: the key expired between issue and use, or the index is being set up.
        raise ProviderUnavailable(f"Typesense refused the search key: {answer.get('message')}")
    return SearchResult(
        found=int(answer.get("found", 0)),
        page=query.page,
        per_page=query.per_page,
        hits=[_hit(hit) for hit in answer.get("hits", [])],
    )


def _hit(hit: dict[str, Any]) -> SearchHit:
    doc = hit["document"]
    snippets: Iterable[dict[str, Any]] = hit.get("highlights") or []
    snippet = next((h.get("snippet", "") for h in snippets if h.get("field") == "text"), "")
    return SearchHit(
        message_id=doc["id"],
        conversation_id=doc["conversation_id"],
        sender_id=doc["sender_id"],
        seq=int(doc["seq"]),
        created_at=_from_ms(int(doc["created_at"])),
        text=doc["text"],
        snippet=snippet or doc["text"][:200],
        edited_at=_from_ms(int(doc["edited_at"])) if doc.get("edited_at") else None,
    )


def parse_time(value: object, name: str) -> datetime | None:
    """An ISO 8601 time with a timezone, or None."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInput(f"{name} must be an ISO 8601 string")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInput(f"{name} is not an ISO 8601 time: {value[:40]!r}") from None
    if parsed.tzinfo is None:
        raise InvalidInput(f"{name} must include a timezone (e.g. 2026-01-31T12:00:00+00:00)")
    return parsed


def _parse_int(value: object, name: str, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"{name} must be an integer, got {type(value).__name__}")
    return value


def parse_search_request(payload: object) -> SearchQuery:
    """A ``message:search`` payload (JSON values) as a checked SearchQuery.

    Accepts ``{"query", "conversation_id"?, "sender_id"?, "since"?, "until"?,
    "page"?, "per_page"?}``; anything else is refused by name.

    Raises:
        InvalidInput: naming the bad or unknown field.
    """
    if not isinstance(payload, dict):
        raise InvalidInput(f"the payload must be an object, got {type(payload).__name__}")
    known = {"query", "conversation_id", "sender_id", "since", "until", "page", "per_page"}
    unknown = sorted(str(k) for k in payload if k not in known)
    if unknown:
        raise InvalidInput(f"unknown field {unknown[0][:40]!r}")
    text_value = payload.get("query")
    if not isinstance(text_value, str):
        raise InvalidInput("query must be a string")
    ids = {}
    for name in ("conversation_id", "sender_id"):
        value = payload.get(name)
        ids[name] = require_uuid(value, name) if value is not None else None
    query = SearchQuery(
        text=text_value,
        conversation_id=ids["conversation_id"],
        sender_id=ids["sender_id"],
        since=parse_time(payload.get("since"), "since"),
        until=parse_time(payload.get("until"), "until"),
        page=_parse_int(payload.get("page"), "page", 1),
        per_page=_parse_int(payload.get("per_page"), "per_page", 20),
    )
    search_params(query)  # every check, before any I/O
    return query


def result_json(result: SearchResult) -> dict[str, Any]:
    """A SearchResult as JSON values (times in ISO 8601)."""
    return {
        "found": result.found,
        "page": result.page,
        "per_page": result.per_page,
        "hits": [
            {
                "message_id": h.message_id,
                "conversation_id": h.conversation_id,
                "sender_id": h.sender_id,
                "seq": h.seq,
                "created_at": h.created_at.isoformat(),
                "edited_at": h.edited_at.isoformat() if h.edited_at else None,
                "text": h.text,
                "snippet": h.snippet,
            }
            for h in result.hits
        ],
    }
