"""The asyncpg driver under a pooled connection, after the server dropped it."""

from __future__ import annotations

import asyncpg
import pytest

from missive.config import Settings
from missive.db import create_engine, driver_connection

pytestmark = pytest.mark.integration


async def test_a_connection_the_server_dropped_is_not_handed_out_again(
    settings: Settings,
) -> None:
    """SQLAlchemy never sees the driver's errors, so a dropped connection went back into
    the pool and every later block failed with "connection is closed". The block that
    finds it dead fails (its caller retries); the next gets a fresh connection."""
    assert settings.database_url is not None
    engine = create_engine(settings.database_url, pool_size=1)
    killer = create_engine(settings.database_url, pool_size=1)
    try:
        async with driver_connection(engine) as conn:
            first = await conn.fetchval("SELECT pg_backend_pid()")
        async with driver_connection(killer) as conn:
            # Waits (up to 5 s) until the backend is gone, not only signalled.
            assert await conn.fetchval("SELECT pg_terminate_backend($1, 5000)", first)
        with pytest.raises((asyncpg.InterfaceError, asyncpg.ConnectionDoesNotExistError)):
            async with driver_connection(engine) as conn:
                await conn.fetchval("SELECT 1")
        for _ in range(2):
            async with driver_connection(engine) as conn:
                again = await conn.fetchval("SELECT pg_backend_pid()")
            assert again != first
    finally:
        await engine.dispose()
        await killer.dispose()
