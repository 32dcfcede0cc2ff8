"""The async engine and session factory, built once per process and passed in."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from sqlalchemy import TextClause
from sqlalchemy.dialects.postgresql import asyncpg as asyncpg_dialect
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)


def create_engine(database_url: str, *, pool_size: int = 10) -> AsyncEngine:
    """Creates the process's engine (asyncpg); whoever creates it disposes it.

    No pre-ping: it costs two round trips (BEGIN, ROLLBACK) per checkout, as much
    as the hot path's own statements. A connection that died meanwhile (a database
    restart) fails its first statement instead; SQLAlchemy recognises the
    disconnect and drops the pool's connections, and the activity's retry runs on
    a fresh one.
    """
    return create_async_engine(
        database_url,
        pool_size=pool_size,
        max_overflow=pool_size,
        # asyncpg caches prepared statements per connection: the hot path reuses them.
        connect_args={"statement_cache_size": 512},
    )


def session_factory(engine: AsyncEngine) -> async_sessionmaker:
    """A session factory whose objects stay readable after commit."""
    return async_sessionmaker(engine, expire_on_commit=False)


def engine_of(sessions: async_sessionmaker[AsyncSession]) -> AsyncEngine:
    """The engine a session factory is bound to (for its driver paths)."""
    engine: AsyncEngine = sessions.kw["bind"]
    return engine


def autocommit(sessions: async_sessionmaker[AsyncSession]) -> async_sessionmaker[AsyncSession]:
    """Sessions on the same pool whose statements each commit on their own.

    For a unit of work that is one write statement, plus reads that need no
    snapshot shared with it (under READ COMMITTED a transaction would not give one
    either): it saves the BEGIN and COMMIT round trips, a third of such a unit.
    """
    engine = engine_of(sessions)
    return async_sessionmaker(
        engine.execution_options(isolation_level="AUTOCOMMIT"), expire_on_commit=False
    )


def describe(database_url: str) -> str:
    """host:port/db of a URL, without the password, for one-line errors."""
    url = make_url(database_url)
    return f"{url.host or 'localhost'}:{url.port or 5432}/{url.database}"


DRIVER_CONNECTION_ERRORS = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,  # the server shutting down
)
"""What asyncpg raises when the database is down or restarting (no SQLAlchemy wrapper)."""


@asynccontextmanager
async def driver_connection(engine: AsyncEngine) -> AsyncIterator[asyncpg.Connection]:
    """A pooled connection's asyncpg driver, for the paths where SQLAlchemy's per-row
    work would cost more than the query (COPY, bulk statements, history pages, the
    receipt batch).

    A connection the server dropped (a restart, a terminated backend) is invalidated
    when its block fails, not put back: SQLAlchemy does that for its own statements,
    but it never sees the driver's errors, and the pool handed the dead connection to
    every later block (each failing with "connection is closed").
    """
    async with engine.connect() as conn:
        raw = await conn.get_raw_connection()
        driver: asyncpg.Connection = raw.driver_connection  # type: ignore[assignment]
        try:
            yield driver
        except BaseException:
            if driver.is_closed():
                await conn.invalidate()
            raise


_ASYNCPG = asyncpg_dialect.dialect()


class DriverQuery:
    """A ``text()`` statement compiled once for the asyncpg driver (``$n`` in place of
    ``:name``), run with the same named parameters on a ``driver_connection``.

    For the receipt batch: through a session each of its five statements cost the
    gateway about twice its round trip in CPU (the session, the compiled-cache key,
    the result rows), and in a two-member chat a batch holds two or three receipts.
    """

    __slots__ = ("names", "sql")

    def __init__(self, statement: TextClause) -> None:
        compiled = statement.compile(dialect=_ASYNCPG)
        self.sql: str = compiled.string
        self.names: tuple[str, ...] = tuple(compiled.positiontup or ())
        """The parameters in ``$n`` order (a name used twice is one parameter)."""

    async def fetch(self, conn: asyncpg.Connection, params: Mapping[str, Any]) -> list[Any]:
        """The statement's rows (asyncpg records: ``row["column"]``)."""
        return list(await conn.fetch(self.sql, *[params[name] for name in self.names]))
