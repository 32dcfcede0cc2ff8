"""Reading conversations back: a page of messages (catch-up and history), and a user's
conversations with where they stand. Reads only: no workflow, straight from PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy.ext.asyncio import AsyncEngine

from missive.broadcast import history_json
from missive.crypto import MessageCipher, WrappedKey
from missive.db import DRIVER_CONNECTION_ERRORS, driver_connection
from missive.errors import (
    ConversationNotFound,
    InvalidInput,
    KeyVersionMissing,
    NotAMember,
    PermanentError,
    ProviderUnavailable,
)
from missive.validation import require_uuid

SYNC_DEFAULT_LIMIT = 100
"""Messages one ``message:sync`` returns when no limit is given."""

SYNC_MAX_LIMIT = 500
"""Most messages one ``message:sync`` returns."""

MAX_SEQ = 2**63 - 1
"""The largest seq a conversation can reach (a bigint); a sync past it reads nothing."""

_Keys = dict[tuple[str, int], WrappedKey]
"""Wrapped data keys by (conversation id, version)."""

# One round trip per page: the membership check, the conversation's last seq, the page
# (only for a member: the LATERAL's condition) and each row's data key. Run on the
# driver itself: SQLAlchemy's per-row work would cost more than the query.
_PAGE = """
SELECT c.last_seq, p.user_id IS NOT NULL AS is_member,
       m.id::text AS id, m.seq, m.sender_id::text AS sender_id, m.client_message_id,
       m.body_ciphertext, m.key_version, m.created_at, m.edited_at, m.deleted_at,
       m.e2e_header::text AS e2e_header, k.master_key_version, k.wrapped_key
FROM conversations c
LEFT JOIN participants p ON p.conversation_id = c.id AND p.user_id = $2
LEFT JOIN LATERAL (
    SELECT * FROM messages mm
    WHERE mm.conversation_id = c.id AND p.user_id IS NOT NULL AND {where}
    ORDER BY mm.seq {order} LIMIT $4
) m ON true
LEFT JOIN conversation_keys k ON k.conversation_id = c.id AND k.version = m.key_version
WHERE c.id = $1
ORDER BY m.seq {order}
"""
_AFTER = _PAGE.format(where="mm.seq > $3", order="ASC")
_BEFORE = _PAGE.format(where="mm.seq < $3", order="DESC")

# Catch-up on many conversations in one round trip: the page after each one's seq, with
# the same membership check per conversation. Unordered: the caller groups the rows by
# request (ord) and orders each group by seq, cheaper than the server sorting a
# thousand rows with their ciphertexts.
_AFTER_MANY = """
SELECT r.ord, c.last_seq, p.user_id IS NOT NULL AS is_member,
       m.id::text AS id, m.seq, m.sender_id::text AS sender_id, m.client_message_id,
       m.body_ciphertext, m.key_version, m.created_at, m.edited_at, m.deleted_at,
       m.e2e_header::text AS e2e_header
FROM unnest($2::uuid[], $3::int8[], $4::int4[]) WITH ORDINALITY AS r(cid, after_seq, n, ord)
JOIN conversations c ON c.id = r.cid
LEFT JOIN participants p ON p.conversation_id = c.id AND p.user_id = $1
LEFT JOIN LATERAL (
    SELECT * FROM messages mm
    WHERE mm.conversation_id = c.id AND p.user_id IS NOT NULL AND mm.seq > r.after_seq
    ORDER BY mm.seq LIMIT r.n
) m ON true
"""

# The wrapped data keys of the conversations a batched sync reads (a few versions each):
# apart from the rows, once per conversation instead of with every one of a thousand.
_KEYS = """
SELECT conversation_id::text AS conversation_id, version, master_key_version, wrapped_key
FROM conversation_keys WHERE conversation_id = ANY($1::uuid[])
"""

# Unread: the user's deliveries not yet read (the partial index ix_deliveries_pending),
# less those of messages deleted since, found from the deleted side (ix_messages_deleted;
# OFFSET 0 keeps the planner, short of statistics on fresh rows, from starting at the
# user's pending deliveries and visiting each one's message: 20 times the whole list).
# The newest first.
_LIST = """
SELECT c.id::text AS conversation_id, c.kind::text AS kind, c.title,
       c.encryption_mode::text AS encryption_mode, p.role::text AS role,
       (SELECT count(*) FROM participants pc WHERE pc.conversation_id = c.id)
           AS member_count,
       c.last_seq, p.delivered_seq, p.read_seq,
       (SELECT count(*) FROM deliveries d
         WHERE d.recipient_id = p.user_id AND d.conversation_id = c.id AND d.status < 2)
       - (SELECT count(*) FROM (
            SELECT m.id FROM messages m
             WHERE m.conversation_id = c.id AND m.deleted_at IS NOT NULL OFFSET 0
          ) gone
          WHERE EXISTS (SELECT FROM deliveries d WHERE d.message_id = gone.id
                          AND d.recipient_id = p.user_id AND d.status < 2))
           AS unread_count,
       coalesce(p.muted_until > now(), false) AS muted,
       (SELECT lm.created_at FROM messages lm
         WHERE lm.conversation_id = c.id AND lm.seq = c.last_seq) AS last_message_at
FROM participants p
JOIN conversations c ON c.id = p.conversation_id
WHERE p.user_id = $1
ORDER BY last_message_at DESC NULLS LAST, c.created_at DESC
"""


@dataclass(frozen=True)
class SyncPage:
    """One page of a conversation's messages, in seq order."""

    messages: list[dict[str, Any]]
    """The messages as ``message:sync`` returns them (``history_json``: a deleted one
    as a tombstone, body null and ``deleted_at`` set). Built from the rows directly: a
    reconnect's catch-up reads a thousand of them, and a dataclass and a second dict
    per message cost more than the decryption."""
    has_more: bool
    """More messages lie beyond the page in the direction asked."""
    last_seq: int
    """The conversation's latest seq now: sync on while a page ends below it."""


@dataclass(frozen=True)
class SyncRequest:
    """One conversation's page in a batched sync (``sync_many``)."""

    conversation_id: str
    after_seq: int | None = None
    before_seq: int | None = None
    limit: int = SYNC_DEFAULT_LIMIT


@dataclass(frozen=True)
class ConversationState:
    """One of a user's conversations, and where the user stands in it."""

    conversation_id: str
    kind: str
    title: str | None
    encryption_mode: str
    role: str
    member_count: int
    last_seq: int
    delivered_seq: int
    read_seq: int
    unread_count: int
    muted: bool
    last_message_at: datetime | None


class HistoryService:
    """Pages through a conversation's messages and lists a user's conversations."""

    def __init__(self, engine: AsyncEngine, cipher: MessageCipher, *, max_concurrent: int = 8):
        """Builds the service.

        Args:
            engine: The database (pages run on its pooled connections' driver).
            cipher: Decrypts the bodies.
            max_concurrent: Reads at once; more wait. Kept under the pool's size, so a
                reconnect's burst of syncs reuses pooled connections instead of opening
                (and closing) overflow ones, which costs more than the reads.
        """
        self._engine = engine
        self._cipher = cipher
        self._slots = asyncio.Semaphore(max_concurrent)

    async def sync(
        self,
        user_id: str,
        conversation_id: str,
        *,
        after_seq: int | None = None,
        before_seq: int | None = None,
        limit: int = SYNC_DEFAULT_LIMIT,
    ) -> SyncPage:
        """The messages after ``after_seq`` (catch-up), or just before ``before_seq``
        (paging back through history), at most ``limit``, in seq order.

        With neither, the first page of the conversation (``after_seq`` 0). Every
        current member reads the whole history (a member added later included);
        a user no longer a member reads nothing.

        Raises:
            InvalidInput: both seqs, a seq that is negative, not an integer or past the
                conversation's end, ``limit`` outside 1..SYNC_MAX_LIMIT.
            ConversationNotFound: no such conversation.
            NotAMember: the user does not take part in it (any more).
        """
        uid = require_uuid(user_id, "user_id")
        request = _checked(SyncRequest(conversation_id, after_seq, before_seq, limit))
        backwards = request.before_seq is not None
        query, seq = (
            (_BEFORE, request.before_seq) if backwards else (_AFTER, request.after_seq or 0)
        )
        cid = request.conversation_id
        try:
            async with self._slots, driver_connection(self._engine) as conn:
                rows = await conn.fetch(query, uuid.UUID(cid), uuid.UUID(uid), seq, limit + 1)
        except DRIVER_CONNECTION_ERRORS:
            raise ProviderUnavailable("the database is unavailable; try again shortly") from None
        keys = {  # a page's rows carry their keys (most pages: one version)
            (cid, row["key_version"]): WrappedKey(row["master_key_version"], row["wrapped_key"])
            for row in rows
            if row["wrapped_key"] is not None
        }
        return self._page(uid, request, rows, keys)

    async def sync_many(
        self, user_id: str, requests: Sequence[SyncRequest]
    ) -> list[SyncPage | PermanentError]:
        """``sync`` of many conversations: the catch-up pages (after a seq) in one
        statement, pages back through history one by one; each answer or refusal in
        the order asked.

        Raises:
            ProviderUnavailable: the database did not answer.
        """
        uid = require_uuid(user_id, "user_id")
        answers: list[SyncPage | PermanentError | None] = [None] * len(requests)
        after: list[tuple[int, SyncRequest]] = []
        for i, raw in enumerate(requests):
            try:
                request = _checked(raw)
            except PermanentError as err:
                answers[i] = err
                continue
            if request.before_seq is None:
                after.append((i, request))
            else:
                try:
                    answers[i] = await self.sync(
                        uid, request.conversation_id, before_seq=request.before_seq,
                        limit=request.limit,
                    )  # fmt: skip
                except PermanentError as err:
                    answers[i] = err
        if after:
            try:
                async with self._slots, driver_connection(self._engine) as conn:
                    cids = [uuid.UUID(r.conversation_id) for _, r in after]
                    rows = await conn.fetch(
                        _AFTER_MANY,
                        uuid.UUID(uid),
                        cids,
                        [r.after_seq or 0 for _, r in after],
                        [r.limit + 1 for _, r in after],
                    )
                    keys = await _keys(conn, cids)
            except DRIVER_CONNECTION_ERRORS:
                raise ProviderUnavailable(
                    "the database is unavailable; try again shortly"
                ) from None
            by_ord: dict[int, list[Any]] = {}
            for row in rows:
                by_ord.setdefault(row["ord"], []).append(row)
            for ord_, (i, request) in enumerate(after, start=1):
                group = by_ord.get(ord_, [])
                group.sort(key=_seq_or_zero)
                try:
                    answers[i] = self._page(uid, request, group, keys)
                except PermanentError as err:
                    answers[i] = err
        return [a for a in answers if a is not None]

    def _page(self, uid: str, request: SyncRequest, rows: Sequence[Any], keys: _Keys) -> SyncPage:
        """The page the rows of one request make, once the checks that need them pass."""
        cid = request.conversation_id
        if not rows:
            raise ConversationNotFound(f"conversation {cid} does not exist")
        last_seq, is_member = rows[0]["last_seq"], rows[0]["is_member"]
        if not is_member:
            raise NotAMember(f"user {uid} is not a member of conversation {cid}")
        after_seq, before_seq = request.after_seq, request.before_seq
        if after_seq is not None and after_seq > last_seq:
            raise InvalidInput(
                f"after_seq {after_seq} is past the end: conversation {cid}'s last seq"
                f" is {last_seq}"
            )
        if before_seq is not None and not 1 <= before_seq <= last_seq + 1:
            raise InvalidInput(
                f"before_seq must be from 1 to {last_seq + 1} (one past conversation"
                f" {cid}'s last seq), got {before_seq}"
            )
        found = [row for row in rows if row["id"] is not None]
        has_more = len(found) > request.limit
        found = found[: request.limit]
        if before_seq is not None:
            found.reverse()
        return SyncPage(
            messages=self._messages(cid, found, keys),
            has_more=has_more,
            last_seq=last_seq,
        )

    async def conversations(self, user_id: str) -> list[ConversationState]:
        """The user's conversations, the one with the latest message first."""
        uid = require_uuid(user_id, "user_id")
        try:
            async with self._slots, driver_connection(self._engine) as conn:
                rows = await conn.fetch(_LIST, uuid.UUID(uid))
        except DRIVER_CONNECTION_ERRORS:
            raise ProviderUnavailable("the database is unavailable; try again shortly") from None
        return [ConversationState(**dict(row)) for row in rows]

    def _messages(self, cid: str, rows: Sequence[Any], keys: _Keys) -> list[dict[str, Any]]:
        """The rows as ``message:sync`` gives them, decrypted with the conversation's keys."""
        unwrapped: dict[int, AESGCM] = {}
        messages = []
        for row in rows:
            mid, deleted_at, header = row["id"], row["deleted_at"], row["e2e_header"]
            body = None
            if deleted_at is None:
                version = row["key_version"]
                key = unwrapped.get(version)
                if key is None:
                    wrapped = keys.get((cid, version))
                    if wrapped is None:
                        raise KeyVersionMissing(
                            f"data key version {version} of conversation {cid} is missing"
                        )
                    key = unwrapped[version] = self._cipher.data_key(cid, version, wrapped)
                body = self._cipher.decrypt_body(
                    key, conversation_id=cid, message_id=mid, ciphertext=row["body_ciphertext"]
                ).decode("utf-8")
            messages.append(
                history_json(
                    message_id=mid,
                    conversation_id=cid,
                    seq=row["seq"],
                    sender_id=row["sender_id"],
                    client_message_id=row["client_message_id"],
                    body=body,
                    created_at=row["created_at"],
                    edited_at=row["edited_at"],
                    deleted_at=deleted_at,
                    # Stored as JSON, relayed as stored: no parse and dump per message.
                    e2e_header=orjson.Fragment(header) if header is not None else None,
                )
            )
        return messages


async def _keys(conn: Any, conversation_ids: Sequence[str | uuid.UUID]) -> _Keys:
    """The conversations' wrapped data keys, every version."""
    ids = [c if isinstance(c, uuid.UUID) else uuid.UUID(c) for c in conversation_ids]
    return {
        (row["conversation_id"], row["version"]): WrappedKey(
            row["master_key_version"], row["wrapped_key"]
        )
        for row in await conn.fetch(_KEYS, ids)
    }


def _seq_or_zero(row: Any) -> int:
    """A page row's seq; 0 for the row of a conversation with nothing to give."""
    return row["seq"] or 0


def _checked(request: SyncRequest) -> SyncRequest:
    """The request with its conversation id normalised, once its fields are in range.

    Raises:
        InvalidInput: a malformed id, both seqs, a seq that is negative, not an integer
            or past 64 bits, a limit outside 1..SYNC_MAX_LIMIT.
    """
    cid = require_uuid(request.conversation_id, "conversation_id")
    after_seq, before_seq, limit = request.after_seq, request.before_seq, request.limit
    if after_seq is not None and before_seq is not None:
        raise InvalidInput("give after_seq or before_seq, not both")
    for name, seq in (("after_seq", after_seq), ("before_seq", before_seq)):
        if seq is not None and not _is_int(seq, low=0, high=MAX_SEQ):
            raise InvalidInput(f"{name} must be an integer from 0 to {MAX_SEQ}, got {seq!r}")
    if not _is_int(limit, low=1, high=SYNC_MAX_LIMIT):
        raise InvalidInput(f"limit must be an integer from 1 to {SYNC_MAX_LIMIT}, got {limit!r}")
    return SyncRequest(cid, after_seq, before_seq, limit)


def _is_int(value: object, *, low: int, high: int | None = None) -> bool:
    """Whether ``value`` is an integer (not a bool) from ``low`` to ``high``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        return False
    return high is None or value <= high
