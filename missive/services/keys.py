"""Key rotation over the database: re-wrap data keys, re-encrypt messages, report usage.

Every step is idempotent: it only touches rows that are not in their target
state yet, so a rerun after a crash continues where the last commit left off.
"""

from __future__ import annotations

from collections.abc import Callable

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from missive.crypto import MessageCipher, WrappedKey
from missive.errors import ConversationNotFound, InvalidInput, KeyVersionMissing
from missive.schemas import (
    ConversationKeyState,
    DataKeyUsage,
    KeyUsageReport,
    MasterKeyUsage,
    ReencryptMessagesInput,
    ReencryptMessagesResult,
    RewrapDataKeysInput,
    RewrapDataKeysResult,
)
from missive.validation import require_uuid

Progress = Callable[[int, object], None]
"""Told after each committed chunk: how many so far, and the cursor (for a heartbeat)."""

_OLD_WRAPPED = text(
    """
    SELECT conversation_id, version, master_key_version, wrapped_key
    FROM conversation_keys
    WHERE master_key_version <> :current
      AND (conversation_id, version) > (CAST(:after_cid AS uuid), :after_version)
    ORDER BY conversation_id, version
    LIMIT :limit
    FOR UPDATE
    """
)

_REWRAP = text(
    """
    UPDATE conversation_keys k
    SET master_key_version = :current, wrapped_key = u.wrapped
    FROM unnest(CAST(:cids AS uuid[]), CAST(:versions AS int[]), CAST(:wrapped AS bytea[]))
         AS u(conversation_id, version, wrapped)
    WHERE k.conversation_id = u.conversation_id AND k.version = u.version
      AND k.master_key_version <> :current
    """
)

_OLD_MESSAGES = text(
    """
    SELECT id, seq, key_version, body_ciphertext
    FROM messages
    WHERE conversation_id = :cid AND key_version < :to_version AND seq > :after_seq
    ORDER BY seq
    LIMIT :limit
    FOR UPDATE
    """
)

_KEYS_OF = text(
    """
    SELECT version, master_key_version, wrapped_key
    FROM conversation_keys
    WHERE conversation_id = :cid AND version = ANY(CAST(:versions AS int[]))
    """
)

_REENCRYPT = text(
    """
    UPDATE messages m
    SET body_ciphertext = u.body, key_version = :to_version
    FROM unnest(CAST(:ids AS uuid[]), CAST(:old AS int[]), CAST(:bodies AS bytea[]))
         AS u(id, old_version, body)
    WHERE m.id = u.id AND m.key_version = u.old_version
    """
)


class KeyService:
    """Rotates master keys and conversation data keys, and reports what is in use."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], cipher: MessageCipher):
        self._sessions = sessions
        self._cipher = cipher

    def _require_master(self, requested: int | None) -> int:
        current = self._cipher.current_version
        if requested is not None and requested != current:
            raise InvalidInput(
                f"master_key_version {requested} was asked for, but this worker's "
                f"MASTER_KEY_VERSION is {current}: configure every worker first"
            )
        return current

    async def rewrap_data_keys(
        self, req: RewrapDataKeysInput, *, progress: Progress | None = None
    ) -> RewrapDataKeysResult:
        """Re-wraps data keys under the current master key, ``chunk_size`` per transaction.

        No message is touched: the data keys themselves do not change.

        Raises:
            InvalidInput: a bad chunk size, or the worker's master version is not the one asked.
            KeyVersionMissing: a data key is wrapped by a master version not configured.
            DecryptionFailed: a wrapped data key does not authenticate.
        """
        current = self._require_master(req.master_key_version)
        _require_chunking(req.chunk_size, req.max_chunks)
        done, after = 0, ("00000000-0000-0000-0000-000000000000", -1)
        for _ in range(req.max_chunks):
            async with self._sessions() as session, session.begin():
                rows = (
                    await session.execute(
                        _OLD_WRAPPED,
                        {
                            "current": current,
                            "after_cid": after[0],
                            "after_version": after[1],
                            "limit": req.chunk_size,
                        },
                    )
                ).all()
                if not rows:
                    break
                rewrapped = [
                    self._cipher.rewrap(
                        str(r.conversation_id),
                        r.version,
                        WrappedKey(r.master_key_version, r.wrapped_key),
                    )
                    for r in rows
                ]
                await session.execute(
                    _REWRAP,
                    {
                        "current": current,
                        "cids": [str(r.conversation_id) for r in rows],
                        "versions": [r.version for r in rows],
                        "wrapped": [w.wrapped for w in rewrapped],
                    },
                )
            done += len(rows)
            after = (str(rows[-1].conversation_id), rows[-1].version)
            if progress is not None:
                progress(done, list(after))
            if len(rows) < req.chunk_size:
                break
        async with self._sessions() as session:
            remaining = await session.scalar(
                text("SELECT count(*) FROM conversation_keys WHERE master_key_version <> :c"),
                {"c": current},
            )
        return RewrapDataKeysResult(
            master_key_version=current, rewrapped=done, remaining=int(remaining or 0)
        )

    async def key_state(self, conversation_id: str) -> ConversationKeyState:
        """The conversation's current data key version.

        Raises:
            ConversationNotFound: no such conversation.
        """
        cid = require_uuid(conversation_id, "conversation_id")
        async with self._sessions() as session:
            version = await session.scalar(
                text("SELECT key_version FROM conversations WHERE id = :cid"), {"cid": cid}
            )
        if version is None:
            raise ConversationNotFound(f"conversation {cid} does not exist")
        return ConversationKeyState(conversation_id=cid, key_version=int(version))

    async def create_data_key(self, conversation_id: str, version: int) -> ConversationKeyState:
        """Creates data key ``version`` and points the conversation at it.

        New messages use it from the next send on. Idempotent: an existing
        ``version`` is kept, and the conversation never moves back to an older one.

        Raises:
            InvalidInput: version below 2.
            ConversationNotFound: no such conversation.
        """
        cid = require_uuid(conversation_id, "conversation_id")
        if version < 2:
            raise InvalidInput(f"a rotated data key version must be 2 or more, got {version}")
        wrapped = self._cipher.new_data_key(cid, version)
        async with self._sessions() as session, session.begin():
            exists = await session.scalar(
                text("SELECT key_version FROM conversations WHERE id = :cid FOR UPDATE"),
                {"cid": cid},
            )
            if exists is None:
                raise ConversationNotFound(f"conversation {cid} does not exist")
            await session.execute(
                text(
                    "INSERT INTO conversation_keys (conversation_id, version, master_key_version,"
                    " wrapped_key) VALUES (:cid, :v, :mv, :wk) ON CONFLICT DO NOTHING"
                ),
                {"cid": cid, "v": version, "mv": wrapped.master_key_version, "wk": wrapped.wrapped},
            )
            current = await session.scalar(
                text(
                    "UPDATE conversations SET key_version = GREATEST(key_version, :v)"
                    " WHERE id = :cid RETURNING key_version"
                ),
                {"cid": cid, "v": version},
            )
        return ConversationKeyState(conversation_id=cid, key_version=int(current))

    async def reencrypt_messages(
        self, req: ReencryptMessagesInput, *, progress: Progress | None = None
    ) -> ReencryptMessagesResult:
        """Moves the conversation's messages under older data keys to ``to_version``.

        Each chunk is one transaction: the rows are locked, decrypted with their
        own key version, encrypted with the new one and written back in one
        ``UPDATE ... FROM unnest``. Old versions keep decrypting meanwhile.

        Raises:
            InvalidInput: a bad chunk size.
            KeyVersionMissing: a message names a data key version that does not exist.
            DecryptionFailed: a message body does not authenticate (tampered).
        """
        cid = require_uuid(req.conversation_id, "conversation_id")
        _require_chunking(req.chunk_size, req.max_chunks)
        done, after_seq = 0, 0
        for _ in range(req.max_chunks):
            async with self._sessions() as session, session.begin():
                rows = (
                    await session.execute(
                        _OLD_MESSAGES,
                        {
                            "cid": cid,
                            "to_version": req.to_version,
                            "after_seq": after_seq,
                            "limit": req.chunk_size,
                        },
                    )
                ).all()
                if not rows:
                    break
                keys = await self._data_keys(
                    session, cid, {r.key_version for r in rows} | {req.to_version}
                )
                new_key = keys[req.to_version]
                bodies = []
                for r in rows:
                    mid = str(r.id)
                    if not r.body_ciphertext:  # a deleted message's destroyed body
                        bodies.append(b"")
                        continue
                    plain = self._cipher.decrypt_body(
                        keys[r.key_version],
                        conversation_id=cid,
                        message_id=mid,
                        ciphertext=r.body_ciphertext,
                    )
                    bodies.append(
                        self._cipher.encrypt_body(
                            new_key, conversation_id=cid, message_id=mid, body=plain
                        )
                    )
                await session.execute(
                    _REENCRYPT,
                    {
                        "to_version": req.to_version,
                        "ids": [str(r.id) for r in rows],
                        "old": [r.key_version for r in rows],
                        "bodies": bodies,
                    },
                )
            done += len(rows)
            after_seq = rows[-1].seq
            if progress is not None:
                progress(done, after_seq)
            if len(rows) < req.chunk_size:
                break
        async with self._sessions() as session:
            remaining = await session.scalar(
                text(
                    "SELECT count(*) FROM messages WHERE conversation_id = :cid"
                    " AND key_version < :v"
                ),
                {"cid": cid, "v": req.to_version},
            )
        return ReencryptMessagesResult(reencrypted=done, remaining=int(remaining or 0))

    async def _data_keys(
        self, session: AsyncSession, cid: str, versions: set[int]
    ) -> dict[int, AESGCM]:
        rows = (await session.execute(_KEYS_OF, {"cid": cid, "versions": sorted(versions)})).all()
        found = {
            r.version: self._cipher.data_key(
                cid, r.version, WrappedKey(r.master_key_version, r.wrapped_key)
            )
            for r in rows
        }
        missing = sorted(versions - found.keys())
        if missing:
            raise KeyVersionMissing(
                f"data key version {missing[0]} of conversation {cid} does not exist"
            )
        return found

    async def usage_report(self) -> KeyUsageReport:
        """Which master and data key versions are still in use (counts, no key material)."""
        async with self._sessions() as session:
            masters = (
                await session.execute(
                    text(
                        "SELECT master_key_version AS version, count(*) AS n"
                        " FROM conversation_keys GROUP BY 1 ORDER BY 1"
                    )
                )
            ).all()
            data = (
                await session.execute(
                    text(
                        """
                        SELECT v.version,
                               (SELECT count(*) FROM conversations c
                                 WHERE c.key_version = v.version) AS conversations,
                               (SELECT count(*) FROM messages m
                                 WHERE m.key_version = v.version) AS messages
                        FROM (SELECT DISTINCT version FROM conversation_keys) v
                        ORDER BY v.version
                        """
                    )
                )
            ).all()
            stale = await session.scalar(
                text(
                    "SELECT count(DISTINCT m.conversation_id) FROM messages m"
                    " JOIN conversations c ON c.id = m.conversation_id"
                    " WHERE m.key_version < c.key_version"
                )
            )
        configured = sorted(self._cipher.master_versions)
        in_use = {r.version for r in masters}
        return KeyUsageReport(
            current_master_key_version=self._cipher.current_version,
            configured_master_key_versions=configured,
            master_keys=[MasterKeyUsage(version=r.version, data_keys=r.n) for r in masters],
            removable_master_key_versions=[
                v for v in configured if v not in in_use and v != self._cipher.current_version
            ],
            missing_master_key_versions=sorted(in_use - set(configured)),
            data_keys=[
                DataKeyUsage(version=r.version, conversations=r.conversations, messages=r.messages)
                for r in data
                if r.conversations or r.messages
            ],
            conversations_with_old_messages=int(stale or 0),
        )


def _require_chunking(chunk_size: int, max_chunks: int) -> None:
    if not 1 <= chunk_size <= 10_000:
        raise InvalidInput(f"chunk_size must be 1-10000, got {chunk_size}")
    if max_chunks < 1:
        raise InvalidInput(f"max_chunks must be positive, got {max_chunks}")
