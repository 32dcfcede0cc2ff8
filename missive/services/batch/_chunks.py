"""Chunk processing: a batch's staged items stored with bulk statements, then announced."""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Protocol

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

from missive.broadcast import Emitter, batch_emits, emit_many
from missive.crypto import MessageCipher, StagingCipher, WrappedKey
from missive.db import driver_connection
from missive.e2e import E2E
from missive.errors import (
    ConversationNotFound,
    DuplicateClientMessageId,
    InvalidInput,
    NotAMember,
    PermanentError,
)
from missive.models import DeliveryStatus
from missive.schemas import BatchChunkResult
from missive.services.batch._direct import direct_conversations
from missive.services.batch._items import ItemState, failure_reason
from missive.services.batch._parse import Item, parse_item
from missive.services.batch._staging import BatchStaging
from missive.stored import StoredMessage

LIVE_EVENTS_PER_CONVERSATION = 1
"""Default: up to this many messages of one conversation per transaction get a
``message:new`` each (an announcement); above it (an import of history), one
compact ``messages:batch`` event tells clients to catch up. Each live event is
a publish round trip: per-message events for an import cost half its speed."""

_RACED = failure_reason(DuplicateClientMessageId("raced"))
"""The reason of an item whose message another writer inserted first."""


class StoredMessagesSink(Protocol):
    """Whatever else must hear of messages a batch stored (the notification seam).

    Called after each transaction commits, with the messages it stored and the
    batch's kind, and again on a retry that cannot tell whether the first call
    happened: an implementation must be idempotent (dedupe by message id).
    """

    async def messages_stored(self, messages: Sequence[StoredMessage], *, kind: str) -> None:
        """Hands the stored messages over in one call."""


class BatchService(BatchStaging):
    """Processes the chunks of staged batches with bulk statements (and, as a
    BatchStaging, stages and reports too: the worker's keys open either seal).

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
        super().__init__(engine, (staging or cipher.staging).with_fallback(cipher.staging))
        self._max_body_bytes = max_body_bytes
        """This process's MAX_BODY_BYTES: a chunk's own limit can only lower it."""
        self._live_events = live_events_per_conversation
        self._cipher = cipher
        self._emitter = emitter
        self._sinks = list(sinks)

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
        async with driver_connection(self._engine) as conn:
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
            stored=counts.get(ItemState.STORED, 0),
            failed=counts.get(ItemState.FAILED, 0),
        )

    async def _process_range(
        self, batch_id: str, kind: str, start: int, end: int, max_body_bytes: int
    ) -> None:
        announce: list[StoredMessage] = []
        async with driver_connection(self._engine) as conn:
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
                earlier = [str(r["message_id"]) for r in rows if r["state"] == ItemState.STORED]
                pending = [r for r in rows if r["state"] == ItemState.PENDING]
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
        items: list[Item] = []
        now = datetime.now(UTC)
        for row in rows:
            try:
                raw = self._opened(batch_id, row)
                items.append(parse_item(batch_id, row, raw, max_body_bytes, now=now))
            except PermanentError as err:
                failures[row["item_no"]] = failure_reason(err)
        if any(i.recipient is not None for i in items):
            items = await direct_conversations(conn, self._cipher, items, failures)
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
        valid: list[Item] = []
        for item in items:
            if item.cid not in convs:
                failures[item.item_no] = failure_reason(
                    ConversationNotFound(f"conversation {item.cid} does not exist")
                )
            elif convs[item.cid]["encryption_mode"] == E2E:
                failures[item.item_no] = failure_reason(
                    InvalidInput(
                        f"conversation {item.cid} is end-to-end encrypted; a batch "
                        "stores text the server encrypts and cannot post there"
                    )
                )
            elif (item.cid, item.sender) not in members:
                failures[item.item_no] = failure_reason(
                    NotAMember(
                        f"user {item.sender} is not a participant of conversation {item.cid}"
                    )
                )
            elif item.mid in existing:
                failures[item.item_no] = failure_reason(
                    DuplicateClientMessageId(
                        f"client_message_id {item.cmid!r} of user "
                        f"{item.sender} is already used by message {item.mid}"
                    )
                )
            else:
                valid.append(item)
        stored: list[StoredMessage] = []
        if valid:
            stored = await self._insert(conn, valid, convs)
        done = {m.message_id for m in stored}
        item_nos: list[int] = []
        states: list[ItemState] = []
        reasons: list[str | None] = []
        mids: list[str | None] = []
        for item in valid:
            item_nos.append(item.item_no)
            states.append(ItemState.STORED if item.mid in done else ItemState.FAILED)
            reasons.append(None if item.mid in done else _RACED)
            mids.append(item.mid)
        for item_no, reason in failures.items():
            item_nos.append(item_no)
            states.append(ItemState.FAILED)
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

    async def _insert(
        self,
        conn: asyncpg.Connection,
        items: list[Item],
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
            f" SELECT m.id, p.user_id, m.cid, m.seq, {DeliveryStatus.SENT.value}, m.created_at"
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
        emits = batch_emits(batch_id, messages, live_events=self._live_events)
        await emit_many(self._emitter, emits)
