"""The index: an alias over versioned collections, and the parent search key."""

from __future__ import annotations

from urllib.parse import quote

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from missive.config import Settings
from missive.crypto import MessageCipher
from missive.search._client import TypesenseClient
from missive.search._documents import collection_schema
from missive.search._keys import parent_key_value

WAKE_INDEXER = "missive_search"
"""The PostgreSQL ``NOTIFY`` channel that wakes the indexer: the triggers of migration
0003 send on it when a message changes, and so do a repair and a rebuild's replay."""

SEARCHABLE = """
    FROM messages m JOIN conversations c ON c.id = m.conversation_id
    WHERE m.deleted_at IS NULL AND c.encryption_mode = 'standard'
"""
"""The messages that should be in the index (a FROM ... WHERE to complete)."""


class SearchIndex:
    """What every job of the search service shares: settings, PostgreSQL, the cipher,
    the Typesense client, and the alias with its collections and parent key."""

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

    async def wake_indexer(self) -> None:
        """Wakes the indexer now."""
        async with self._sessions() as session, session.begin():
            await wake_indexer_on_commit(session)


async def wake_indexer_on_commit(session: AsyncSession) -> None:
    """Wakes the indexer when ``session``'s transaction commits (PostgreSQL delivers a
    ``NOTIFY`` then, not before)."""
    await session.execute(text("SELECT pg_notify(:channel, '')"), {"channel": WAKE_INDEXER})
