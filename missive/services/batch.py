"""Batches of messages: staging (COPY), chunk processing with bulk statements, reports."""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

from missive.broadcast import Emitter, emit_many, message_new_event
from missive.constants import (
    EVENT_MESSAGE_NEW,
    EVENT_MESSAGES_BATCH,
    batch_client_message_id,
    conversation_room,
    message_id_for,
)
from missive.crypto import MessageCipher, StagingCipher, WrappedKey
from missive.e2e import E2E
from missive.errors import InvalidInput, PermanentError
from missive.pubsub import Emit
from missive.schemas import BatchChunkResult, BatchFailure, BatchKind, BatchReport
from missive.stored import StoredMessage
from missive.validation import require_body, require_client_message_id, require_uuid

PENDING, STORED, FAILED = 0, 1, 2
"""batch_items.state values."""

LIVE_EVENTS_PER_CONVERSATION = 1
"""Default: up to this many messages of one conversation per transaction get a
``message:new`` each (an announcement); above it (an import of history), one
compact ``messages:batch`` event tells clients to catch up. Each live event is
a publish round trip: per-message events for an import cost half its speed."""

_DIRECT_NAMESPACE = uuid.UUID("5b0c51a4-3b7e-4e36-9d67-4f1f0c1f2d8e")
"""Of direct_conversation_id; fixed, so later batches derive the same ids."""
_MAX_LISTED_BAD_LINES = 10
_BATCH_ID = re.compile(r"^[A-Za-z0-9_-]{1,48}$")


def require_batch_id(value: str) -> str:
    """A batch id is 1-48 letters, digits, '-' or '_' (it is part of the workflow id)."""
    if not isinstance(value, str) or not _BATCH_ID.match(value):
        raise InvalidInput(f"batch id must be 1-48 letters, digits, '-' or '_', got {value!r}")
    return value


class StoredMessagesSink(Protocol):
    """Whatever else must hear of messages a batch stored (the notification seam).

    Called after each transaction commits, with the messages it stored and the
    batch's kind, and again on a retry that cannot tell whether the first call
    happened: an implementation must be idempotent (dedupe by message id).
    """

    async def messages_stored(self, messages: Sequence[StoredMessage], *, kind: str) -> None:
        """Hands the stored messages over in one call."""


@dataclass(frozen=True)
class StagedSource:
    """An import file checked line by line: what staging needs to know."""

    path: Path
    """The JSON-lines file."""
    total: int
    """Items in it (non-blank lines)."""
    sha256: str
    """Digest of its bytes: restaging the same batch id with other content is refused."""


def scan_import_file(path: Path) -> StagedSource:
    """Checks that every non-blank line of a JSON-lines file is a JSON object.

    Nothing is kept in memory but the digest and the count.

    Raises:
        InvalidInput: the file cannot be read, is empty, or has malformed lines
            (the first few are named by line number).
    """
    digest = hashlib.sha256()
    total = 0
    bad: list[str] = []
    bad_count = 0
    try:
        with path.open("rb") as handle:
            for line_no, raw in enumerate(handle, start=1):
                digest.update(raw)
                if not raw.strip():
                    continue
                total += 1
                problem = _line_problem(raw)
                if problem is not None:
                    bad_count += 1
                    if len(bad) < _MAX_LISTED_BAD_LINES:
                        bad.append(f"line {line_no}: {problem}")
    except OSError as err:
        raise InvalidInput(f"cannot read import file {path}: {err.strerror or err}") from None
    if bad:
        more = f" (and {bad_count - len(bad)} more)" if bad_count > len(bad) else ""
        raise InvalidInput(
            f"{path.name}: {bad_count} malformed line(s), nothing was staged: "
            + "; ".join(bad)
            + more
        )
    if total == 0:
        raise InvalidInput(f"{path.name}: the batch is empty (no items)")
    return StagedSource(path=path, total=total, sha256=digest.hexdigest())


def _line_problem(raw: bytes) -> str | None:
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as err:
        return f"not valid JSON ({str(err).split(':')[0]})"
    if not isinstance(value, dict):
        return f"expected a JSON object, got {type(value).__name__}"
    return None


def _file_records(batch_id: str, path: Path) -> Iterator[tuple[str, int, int, str]]:
    item_no = 0
    with path.open("rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            if raw.strip():
                item_no += 1
                yield batch_id, item_no, line_no, raw.decode("utf-8").strip()


def announcement_items(
    sender_id: str, body: str, conversation_ids: Iterable[str]
) -> list[dict[str, str]]:
    """The items of an announcement: the same body from one sender to each conversation."""
    return [
        {"conversation_id": cid, "sender_id": sender_id, "body": body} for cid in conversation_ids
    ]


def user_announcement_items(
    sender_id: str, body: str, user_ids: Iterable[str]
) -> list[dict[str, str]]:
    """The items of an announcement to users: the same body from one sender to each
    user, in their direct conversation (found or created when the item is stored)."""
    return [{"recipient_id": uid, "sender_id": sender_id, "body": body} for uid in user_ids]


def direct_conversation_id(user_a: str, user_b: str) -> str:
    """The id a batch gives the direct conversation of two users it creates.

    Derived from the pair (in either order), so concurrent chunks, retries and
    other batches that create the same pair's conversation create one.
    """
    first, second = sorted((user_a, user_b))
    return str(uuid.uuid5(_DIRECT_NAMESPACE, f"direct:{first}:{second}"))


def parse_created_at(value: object, *, now: datetime) -> datetime:
    """An item's own ``created_at``: ISO-8601 with a UTC offset, not in the future.

    Raises:
        InvalidInput: naming created_at and what is wrong with it.
    """
    if not isinstance(value, str):
        raise InvalidInput(f"created_at must be an ISO-8601 string, got {type(value).__name__}")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInput(f"created_at {value[:64]!r} is not an ISO-8601 date and time") from None
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise InvalidInput(f"created_at {value[:64]!r} has no UTC offset (add Z or +hh:mm)")
    parsed = parsed.astimezone(UTC)
    if parsed > now:
        raise InvalidInput(f"created_at {value[:64]!r} is in the future")
    return parsed


@dataclass(frozen=True)
class _Item:
    item_no: int
    mid: str
    cid: str
    """The conversation; empty while a recipient's direct conversation is resolved."""
    sender: str
    cmid: str
    body: bytes
    recipient: str | None = None
    """The user whose direct conversation with the sender the item goes to."""
    created_at: datetime | None = None
    """The item's own creation time (an import of history); None: now."""


class BatchService:
    """Stages batches and processes their chunks with bulk statements.

    Every write of a chunk's transaction (sequence numbers, messages,
    deliveries, item states) commits together, keyed by natural keys, so a
    rerun of any range stores nothing twice.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        cipher: MessageCipher,
        emitter: Emitter | None,
        *,
        sinks: Sequence[StoredMessagesSink] = (),
        live_events_per_conversation: int = LIVE_EVENTS_PER_CONVERSATION,
        max_body_bytes: int | None = None,
        staging: StagingCipher | None = None,
    ):
        # Staged items are sealed with ``staging`` (CODEC_KEYS-derived in the worker
        # and the starter), else with the master keys'; either opens here.
        self._staging = (staging or cipher.staging).with_fallback(cipher.staging)
        self._max_body_bytes = max_body_bytes
        """This process's MAX_BODY_BYTES: a chunk's own limit can only lower it."""
        self._live_events = live_events_per_conversation
        self._engine = engine
        self._cipher = cipher
        self._emitter = emitter
        self._sinks = list(sinks)

    @asynccontextmanager
    async def _conn(self) -> AsyncIterator[asyncpg.Connection]:
        async with self._engine.connect() as conn:
            raw = await conn.get_raw_connection()
            yield raw.driver_connection  # type: ignore[misc]

    # --- staging -------------------------------------------------------------

    async def stage_file(self, batch_id: str, kind: BatchKind, source: StagedSource) -> bool:
        """COPYs a scanned import file into batch_items in one transaction.

        Returns:
            False when this batch id was staged before from the same content
            (nothing is written again), True when it was staged now.

        Raises:
            InvalidInput: the batch id exists with other content.
        """
        return await self._stage(
            require_batch_id(batch_id),
            kind,
            source.total,
            source.sha256,
            lambda: _file_records(batch_id, source.path),
        )

    async def stage_items(
        self, batch_id: str, kind: BatchKind, items: Sequence[dict[str, Any]]
    ) -> bool:
        """Stages items given in memory (an announcement); see ``stage_file``.

        Raises:
            InvalidInput: no items, or the batch id exists with other content.
        """
        if not items:
            raise InvalidInput("the batch is empty (no items)")
        lines = [json.dumps(item, sort_keys=True) for item in items]
        digest = hashlib.sha256("\n".join(lines).encode()).hexdigest()
        return await self._stage(
            require_batch_id(batch_id),
            kind,
            len(lines),
            digest,
            lambda: ((batch_id, n, n, line) for n, line in enumerate(lines, start=1)),
        )

    async def _stage(
        self,
        batch_id: str,
        kind: BatchKind,
        total: int,
        digest: str,
        records: Callable[[], Iterator[tuple[str, int, int, str]]],
    ) -> bool:
        async with self._conn() as conn:
            async with conn.transaction():
                inserted = await conn.fetchval(
                    "INSERT INTO batches (id, kind, total, source_sha256) VALUES ($1, $2, $3, $4)"
                    " ON CONFLICT (id) DO NOTHING RETURNING id",
                    batch_id,
                    str(kind),
                    total,
                    digest,
                )
                if inserted is None:
                    row = await conn.fetchrow(
                        "SELECT kind, source_sha256 FROM batches WHERE id = $1", batch_id
                    )
                    if row is None or row["source_sha256"] != digest or row["kind"] != str(kind):
                        raise InvalidInput(
                            f"batch {batch_id} already exists with other content; "
                            "choose another batch id"
                        )
                    return False
                # Sealed, never in clear: the item is plaintext until its chunk stores it.
                seal, label = self._staging.seal, self._staging.current
                await conn.copy_records_to_table(
                    "batch_items",
                    records=(
                        (bid, n, line_no, seal(bid, n, item.encode()), label)
                        for bid, n, line_no, item in records()
                    ),
                    columns=["batch_id", "item_no", "line_no", "payload_sealed", "payload_key"],
                )
        return True

    # --- processing ----------------------------------------------------------

    async def process_chunk(
        self,
        batch_id: str,
        from_item: int,
        to_item: int,
        *,
        max_body_bytes: int,
        step: int,
        resume_from: int | None = None,
        on_progress: Callable[[int], Awaitable[None]] | None = None,
    ) -> BatchChunkResult:
        """Processes items [from_item, to_item) in transactions of ``step`` items.

        After each transaction commits and its messages are broadcast, the
        cursor (the next item number) goes to ``on_progress``; a retry passes
        the last one back as ``resume_from`` and starts there. Items stored
        or failed by an earlier attempt are never written again.

        Returns:
            Counts over the whole range, earlier attempts included.
        """
        if step <= 0:
            raise InvalidInput(f"step must be positive, got {step}")
        if self._max_body_bytes is not None:
            max_body_bytes = min(max_body_bytes, self._max_body_bytes)
        cursor = from_item if resume_from is None else max(from_item, resume_from)
        # The sinks are told the batch's kind; it never changes, so it is read once.
        described = await self.exists(batch_id) if self._sinks else None
        kind = described[0] if described is not None else ""
        while cursor < to_item:
            end = min(cursor + step, to_item)
            await self._process_range(batch_id, kind, cursor, end, max_body_bytes)
            cursor = end
            if on_progress is not None:
                await on_progress(cursor)
        async with self._conn() as conn:
            rows = await conn.fetch(
                "SELECT state, count(*) AS n FROM batch_items WHERE batch_id = $1"
                " AND item_no >= $2 AND item_no < $3 GROUP BY state",
                batch_id,
                from_item,
                to_item,
            )
        counts = {r["state"]: r["n"] for r in rows}
        return BatchChunkResult(
            from_item=from_item,
            to_item=to_item,
            stored=counts.get(STORED, 0),
            failed=counts.get(FAILED, 0),
        )

    async def _process_range(
        self, batch_id: str, kind: str, start: int, end: int, max_body_bytes: int
    ) -> None:
        announce: list[StoredMessage] = []
        async with self._conn() as conn:
            async with conn.transaction():
                rows = await conn.fetch(
                    "SELECT item_no, payload, payload_sealed, payload_key, state, message_id"
                    " FROM batch_items"
                    " WHERE batch_id = $1 AND item_no >= $2 AND item_no < $3"
                    " ORDER BY item_no FOR UPDATE",
                    batch_id,
                    start,
                    end,
                )
                # Stored by an attempt that may have crashed before announcing them.
                earlier = [str(r["message_id"]) for r in rows if r["state"] == STORED]
                pending = [r for r in rows if r["state"] == PENDING]
                if pending:
                    announce = await self._store(conn, batch_id, pending, max_body_bytes)
            if earlier:
                announce = await self._load(conn, earlier) + announce
        if announce:
            await self._announce(batch_id, kind, announce)

    def _opened(self, batch_id: str, row: asyncpg.Record) -> object:
        """A staged item's JSON: opened, or as staged before items were sealed (0010).

        Raises:
            DecryptionFailed, KeyVersionMissing: the sealed item does not open here.
        """
        if row["payload_sealed"] is None:
            return row["payload"]
        return self._staging.open(
            row["payload_key"], batch_id, row["item_no"], bytes(row["payload_sealed"])
        ).decode("utf-8")

    async def _store(
        self,
        conn: asyncpg.Connection,
        batch_id: str,
        rows: Sequence[asyncpg.Record],
        max_body_bytes: int,
    ) -> list[StoredMessage]:
        failures: dict[int, str] = {}
        items: list[_Item] = []
        now = datetime.now(UTC)
        for row in rows:
            try:
                raw = self._opened(batch_id, row)
                items.append(_parse_item(batch_id, row, raw, max_body_bytes, now=now))
            except PermanentError as err:
                failures[row["item_no"]] = f"{err.type}: {err}"
        if any(i.recipient is not None for i in items):
            items = await self._direct_conversations(conn, items, failures)
        conv_ids = sorted({i.cid for i in items})
        # Lock the touched conversations in id order: concurrent chunks and sends
        # take their sequence numbers without deadlocking.
        convs = {
            str(r["id"]): r
            for r in await conn.fetch(
                "SELECT c.id, c.key_version, c.encryption_mode::text AS encryption_mode,"
                "       k.master_key_version, k.wrapped_key"
                " FROM conversations c JOIN conversation_keys k"
                "   ON k.conversation_id = c.id AND k.version = c.key_version"
                " WHERE c.id = ANY($1::uuid[]) ORDER BY c.id FOR UPDATE OF c",
                conv_ids,
            )
        }
        pairs = sorted({(i.cid, i.sender) for i in items if i.cid in convs})
        members = {
            (str(r["conversation_id"]), str(r["user_id"]))
            for r in await conn.fetch(
                "SELECT p.conversation_id, p.user_id FROM participants p"
                " JOIN unnest($1::uuid[], $2::uuid[]) AS x(cid, uid)"
                "   ON p.conversation_id = x.cid AND p.user_id = x.uid",
                [p[0] for p in pairs],
                [p[1] for p in pairs],
            )
        }
        existing = {
            str(r["id"])
            for r in await conn.fetch(
                "SELECT id FROM messages WHERE id = ANY($1::uuid[])", [i.mid for i in items]
            )
        }
        valid: list[_Item] = []
        for item in items:
            if item.cid not in convs:
                failures[item.item_no] = (
                    f"ConversationNotFound: conversation {item.cid} does not exist"
                )
            elif convs[item.cid]["encryption_mode"] == E2E:
                failures[item.item_no] = (
                    f"InvalidInput: conversation {item.cid} is end-to-end encrypted; a batch "
                    "stores text the server encrypts and cannot post there"
                )
            elif (item.cid, item.sender) not in members:
                failures[item.item_no] = (
                    f"NotAMember: user {item.sender} is not a participant of "
                    f"conversation {item.cid}"
                )
            elif item.mid in existing:
                failures[item.item_no] = (
                    f"DuplicateClientMessageId: client_message_id {item.cmid!r} of user "
                    f"{item.sender} is already used by message {item.mid}"
                )
            else:
                valid.append(item)
        stored: list[StoredMessage] = []
        if valid:
            stored = await self._insert(conn, valid, convs)
        done = {m.message_id for m in stored}
        item_nos: list[int] = []
        states: list[int] = []
        reasons: list[str | None] = []
        mids: list[str | None] = []
        for item in valid:
            item_nos.append(item.item_no)
            states.append(STORED if item.mid in done else FAILED)
            reasons.append(None if item.mid in done else "DuplicateClientMessageId: raced")
            mids.append(item.mid)
        for item_no, reason in failures.items():
            item_nos.append(item_no)
            states.append(FAILED)
            reasons.append(reason[:1000])
            mids.append(None)
        await conn.execute(
            # A settled item's staged payload goes: the message holds it, encrypted.
            "UPDATE batch_items b SET state = x.state, reason = x.reason, message_id = x.mid,"
            "   payload = NULL, payload_sealed = NULL"
            " FROM unnest($2::int[], $3::int2[], $4::text[], $5::uuid[])"
            "   AS x(item_no, state, reason, mid)"
            " WHERE b.batch_id = $1 AND b.item_no = x.item_no",
            batch_id,
            item_nos,
            states,
            reasons,
            mids,
        )
        return stored

    async def _direct_conversations(
        self, conn: asyncpg.Connection, items: list[_Item], failures: dict[int, str]
    ) -> list[_Item]:
        """Gives each item addressed to a recipient its direct conversation with the
        sender: found (a standard one before an end-to-end one, then the oldest) or
        created, with its data key and both participants, in bulk.

        Created conversations get ids derived from the pair, and every insert is
        ``ON CONFLICT DO NOTHING``: a retry, a concurrent chunk or another batch
        creating the same pair's conversation end up with the same one. Items
        whose sender or recipient does not exist go to ``failures``.
        """
        pairs = sorted({(i.sender, i.recipient) for i in items if i.recipient is not None})
        people = sorted({user for pair in pairs for user in pair})
        users = {
            str(r["id"])
            for r in await conn.fetch("SELECT id FROM users WHERE id = ANY($1::uuid[])", people)
        }
        known = [p for p in pairs if p[0] in users and p[1] in users]
        found = {
            (str(r["sender"]), str(r["recipient"])): str(r["id"])
            for r in await conn.fetch(_FIND_DIRECT, [p[0] for p in known], [p[1] for p in known])
        }
        created = {direct_conversation_id(a, b): tuple(sorted((a, b))) for a, b in known}
        created = {cid: pair for cid, pair in created.items() if not _found(found, pair)}
        if created:
            ids = sorted(created)
            keys = [self._cipher.new_data_key(cid, 1) for cid in ids]
            # Ids in order: concurrent creators wait on each other without deadlocking.
            await conn.execute(
                "INSERT INTO conversations (id, kind)"
                " SELECT id, 'direct' FROM unnest($1::uuid[]) AS x(id) ORDER BY id"
                " ON CONFLICT (id) DO NOTHING",
                ids,
            )
            await conn.execute(
                "INSERT INTO conversation_keys (conversation_id, version, master_key_version,"
                "                               wrapped_key)"
                " SELECT x.id, 1, x.master, x.wrapped"
                " FROM unnest($1::uuid[], $2::int4[], $3::bytea[]) AS x(id, master, wrapped)"
                " ON CONFLICT DO NOTHING",
                ids,
                [k.master_key_version for k in keys],
                [k.wrapped for k in keys],
            )
            await conn.execute(
                "INSERT INTO participants (conversation_id, user_id)"
                " SELECT * FROM unnest($1::uuid[], $2::uuid[]) ON CONFLICT DO NOTHING",
                [cid for cid in ids for _ in range(2)],
                [user for cid in ids for user in created[cid]],
            )
        resolved: list[_Item] = []
        for item in items:
            if item.recipient is None:
                resolved.append(item)
            elif item.sender not in users:
                failures[item.item_no] = f"UserNotFound: user {item.sender} does not exist"
            elif item.recipient not in users:
                failures[item.item_no] = f"UserNotFound: user {item.recipient} does not exist"
            else:
                pair = (item.sender, item.recipient)
                cid = found.get(pair) or direct_conversation_id(*pair)
                resolved.append(replace(item, cid=cid))
        return resolved

    async def _insert(
        self,
        conn: asyncpg.Connection,
        items: list[_Item],
        convs: dict[str, asyncpg.Record],
    ) -> list[StoredMessage]:
        per_conv = Counter(i.cid for i in items)
        ordered = sorted(per_conv)
        last = {
            str(r["id"]): r["last_seq"]
            for r in await conn.fetch(
                "UPDATE conversations c SET last_seq = c.last_seq + x.n"
                " FROM unnest($1::uuid[], $2::int8[]) AS x(id, n)"
                " WHERE c.id = x.id RETURNING c.id, c.last_seq",
                ordered,
                [per_conv[c] for c in ordered],
            )
        }
        next_seq = {cid: last[cid] - per_conv[cid] + 1 for cid in ordered}
        keys = {
            cid: self._cipher.data_key(
                cid,
                row["key_version"],
                WrappedKey(row["master_key_version"], row["wrapped_key"]),
            )
            for cid, row in convs.items()
            if cid in per_conv
        }
        seqs: list[int] = []
        bodies: list[bytes] = []
        versions: list[int] = []
        for item in items:
            seqs.append(next_seq[item.cid])
            next_seq[item.cid] += 1
            bodies.append(
                self._cipher.encrypt_body(
                    keys[item.cid], conversation_id=item.cid, message_id=item.mid, body=item.body
                )
            )
            versions.append(convs[item.cid]["key_version"])
        inserted = {
            str(r["id"]): r["created_at"]
            for r in await conn.fetch(
                "INSERT INTO messages (id, conversation_id, seq, sender_id, client_message_id,"
                "                      body_ciphertext, key_version, created_at)"
                " SELECT x.id, x.cid, x.seq, x.sender, x.cmid, x.body, x.kv,"
                "        COALESCE(x.created_at, now())"
                " FROM unnest($1::uuid[], $2::uuid[], $3::int8[], $4::uuid[], $5::text[],"
                "             $6::bytea[], $7::int4[], $8::timestamptz[])"
                "   AS x(id, cid, seq, sender, cmid, body, kv, created_at)"
                " ON CONFLICT DO NOTHING RETURNING id, created_at",
                [i.mid for i in items],
                [i.cid for i in items],
                seqs,
                [i.sender for i in items],
                [i.cmid for i in items],
                bodies,
                versions,
                [i.created_at for i in items],
            )
        }
        # A delivery was sent when its message was created (an imported one then too).
        await conn.execute(
            "INSERT INTO deliveries (message_id, recipient_id, conversation_id, seq, status,"
            "                        sent_at)"
            " SELECT m.id, p.user_id, m.cid, m.seq, 0, m.created_at"
            " FROM unnest($1::uuid[], $2::uuid[], $3::int8[], $4::uuid[], $5::timestamptz[])"
            "   AS m(id, cid, seq, sender, created_at)"
            " JOIN participants p ON p.conversation_id = m.cid AND p.user_id <> m.sender"
            " ON CONFLICT DO NOTHING",
            [i.mid for i in items if i.mid in inserted],
            [i.cid for i in items if i.mid in inserted],
            [s for i, s in zip(items, seqs, strict=True) if i.mid in inserted],
            [i.sender for i in items if i.mid in inserted],
            [inserted[i.mid] for i in items if i.mid in inserted],
        )
        return [
            StoredMessage(
                message_id=i.mid,
                conversation_id=i.cid,
                seq=s,
                sender_id=i.sender,
                client_message_id=i.cmid,
                body=i.body.decode("utf-8"),
                created_at=inserted[i.mid],
                edited_at=None,
                deleted_at=None,
            )
            for i, s in zip(items, seqs, strict=True)
            if i.mid in inserted
        ]

    async def _load(self, conn: asyncpg.Connection, message_ids: list[str]) -> list[StoredMessage]:
        rows = await conn.fetch(
            "SELECT m.id, m.conversation_id, m.seq, m.sender_id, m.client_message_id,"
            "       m.body_ciphertext, m.key_version, m.created_at, m.edited_at, m.deleted_at,"
            "       k.master_key_version, k.wrapped_key"
            " FROM messages m JOIN conversation_keys k"
            "   ON k.conversation_id = m.conversation_id AND k.version = m.key_version"
            " WHERE m.id = ANY($1::uuid[]) ORDER BY m.conversation_id, m.seq",
            message_ids,
        )
        loaded = []
        for r in rows:
            cid, mid = str(r["conversation_id"]), str(r["id"])
            key = self._cipher.data_key(
                cid, r["key_version"], WrappedKey(r["master_key_version"], r["wrapped_key"])
            )
            body = self._cipher.decrypt_body(
                key, conversation_id=cid, message_id=mid, ciphertext=r["body_ciphertext"]
            )
            loaded.append(
                StoredMessage(
                    message_id=mid,
                    conversation_id=cid,
                    seq=r["seq"],
                    sender_id=str(r["sender_id"]),
                    client_message_id=r["client_message_id"],
                    body=body.decode("utf-8"),
                    created_at=r["created_at"],
                    edited_at=r["edited_at"],
                    deleted_at=r["deleted_at"],
                )
            )
        return loaded

    async def _announce(self, batch_id: str, kind: str, messages: list[StoredMessage]) -> None:
        for sink in self._sinks:
            await sink.messages_stored(messages, kind=kind)
        if self._emitter is None:
            return
        by_conv: dict[str, list[StoredMessage]] = defaultdict(list)
        for message in messages:
            by_conv[message.conversation_id].append(message)
        emits: list[Emit] = []
        for cid, group in by_conv.items():
            if len(group) <= self._live_events:
                emits.extend(
                    Emit(EVENT_MESSAGE_NEW, message_new_event(m), conversation_room(cid))
                    for m in group
                )
            else:
                first, last = min(m.seq for m in group), max(m.seq for m in group)
                compact = {
                    "event_id": f"{EVENT_MESSAGES_BATCH}:{batch_id}:{cid}:{first}",
                    "batch_id": batch_id,
                    "conversation_id": cid,
                    "from_seq": first,
                    "to_seq": last,
                    "count": len(group),
                }
                emits.append(Emit(EVENT_MESSAGES_BATCH, compact, conversation_room(cid)))
        await emit_many(self._emitter, emits)

    # --- reports -------------------------------------------------------------

    async def report(self, batch_id: str, *, limit: int) -> BatchReport:
        """Counts of a batch's items and its first ``limit`` failures.

        Raises:
            InvalidInput: no such batch.
        """
        require_batch_id(batch_id)
        async with self._conn() as conn:
            batch = await conn.fetchrow("SELECT kind, total FROM batches WHERE id = $1", batch_id)
            if batch is None:
                raise InvalidInput(f"batch {batch_id} does not exist")
            counts = {
                r["state"]: r["n"]
                for r in await conn.fetch(
                    "SELECT state, count(*) AS n FROM batch_items WHERE batch_id = $1"
                    " GROUP BY state",
                    batch_id,
                )
            }
            failures = await conn.fetch(
                "SELECT item_no, line_no, reason FROM batch_items"
                " WHERE batch_id = $1 AND state = 2 ORDER BY item_no LIMIT $2",
                batch_id,
                limit,
            )
        return BatchReport(
            batch_id=batch_id,
            kind=batch["kind"],
            total=batch["total"],
            pending=counts.get(PENDING, 0),
            stored=counts.get(STORED, 0),
            failed=counts.get(FAILED, 0),
            failures=[
                BatchFailure(item_no=r["item_no"], line_no=r["line_no"], reason=r["reason"] or "")
                for r in failures
            ],
        )

    async def exists(self, batch_id: str) -> tuple[str, int] | None:
        """The (kind, total) of a staged batch, or None."""
        async with self._conn() as conn:
            row = await conn.fetchrow("SELECT kind, total FROM batches WHERE id = $1", batch_id)
        return None if row is None else (row["kind"], row["total"])


_FIND_DIRECT = """
SELECT DISTINCT ON (x.sender, x.recipient) x.sender, x.recipient, c.id
FROM unnest($1::uuid[], $2::uuid[]) AS x(sender, recipient)
JOIN participants pr ON pr.user_id = x.recipient
JOIN conversations c ON c.id = pr.conversation_id AND c.kind = 'direct'
JOIN participants ps ON ps.conversation_id = c.id AND ps.user_id = x.sender
WHERE (SELECT count(*) FROM participants o WHERE o.conversation_id = c.id) = 2
ORDER BY x.sender, x.recipient, c.encryption_mode = 'e2e', c.created_at, c.id
"""
"""The direct conversation of each (sender, recipient) pair that has one."""


def _found(found: dict[tuple[str, str], str], pair: tuple[str, ...]) -> bool:
    a, b = pair
    return (a, b) in found or (b, a) in found


_ITEM_FIELDS = {
    "conversation_id",
    "recipient_id",
    "sender_id",
    "body",
    "client_message_id",
    "created_at",
}


def _parse_item(
    batch_id: str, row: asyncpg.Record, raw: object, max_body_bytes: int, *, now: datetime
) -> _Item:
    payload = json.loads(raw) if isinstance(raw, str) else raw
    if not isinstance(payload, dict):
        raise InvalidInput("item is not a JSON object")
    unknown = set(payload) - _ITEM_FIELDS
    if unknown:
        raise InvalidInput(f"unknown field(s): {', '.join(sorted(unknown))}")
    if "conversation_id" in payload and "recipient_id" in payload:
        raise InvalidInput("give conversation_id or recipient_id, not both")
    if "conversation_id" not in payload and "recipient_id" not in payload:
        raise InvalidInput("conversation_id (or recipient_id) is missing")
    for name in ("sender_id", "body"):
        if name not in payload:
            raise InvalidInput(f"{name} is missing")
    sender = require_uuid(payload["sender_id"], "sender_id")
    cid, recipient = "", None
    if "recipient_id" in payload:
        recipient = require_uuid(payload["recipient_id"], "recipient_id")
        if recipient == sender:
            raise InvalidInput(f"recipient_id {recipient} is the sender")
    else:
        cid = require_uuid(payload["conversation_id"], "conversation_id")
    body = require_body(payload["body"], max_bytes=max_body_bytes)
    created_at = payload.get("created_at")
    cmid = require_client_message_id(
        payload.get("client_message_id") or batch_client_message_id(batch_id, row["item_no"])
    )
    return _Item(
        item_no=row["item_no"],
        mid=message_id_for(sender, cmid),
        cid=cid,
        sender=sender,
        cmid=cmid,
        body=body,
        recipient=recipient,
        created_at=None if created_at is None else parse_created_at(created_at, now=now),
    )


def new_batch_id() -> str:
    """A fresh batch id."""
    return uuid.uuid4().hex[:16]
