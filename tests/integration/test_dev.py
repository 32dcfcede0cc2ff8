"""``python dev.py --demo`` starts everything, the demo's messages get read, SIGTERM stops it all.

Runs the real thing: embedded PostgreSQL (or a fresh database on the server at
DATABASE_URL when the test environment has one, as in conftest.py), the Temporal dev
server, the worker and the gateway, each on free ports and a temporary data dir.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import stat
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import psutil
import pytest
from sqlalchemy.engine import make_url
from temporalio.client import Client

from tests.conftest import free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DEMO_DONE = "messages delivered and read by everyone"
DEMO_TIMEOUT = 90.0
STOP_TIMEOUT = 60.0
UNSET = (
    "DATABASE_URL",
    "TEMPORAL_ADDRESS",
    "MASTER_KEYS",
    "CODEC_KEYS",
    "GATEWAY_SECRET",
    "GATEWAY_HOST",
    "REDIS_URL",
    "DATA_DIR",
)


@pytest.fixture
async def dev_database_url() -> AsyncIterator[str | None]:
    """A fresh database on the server at DATABASE_URL, or None: dev.py embeds its own."""
    configured = os.environ.get("DATABASE_URL")
    if not configured:
        yield None
        return
    admin = make_url(configured).set(drivername="postgresql")
    name = f"missive_dev_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(admin.render_as_string(hide_password=False))
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    yield admin.set(drivername="postgresql+asyncpg", database=name).render_as_string(
        hide_password=False
    )
    conn = await asyncpg.connect(admin.render_as_string(hide_password=False))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def read_until(stream: asyncio.StreamReader, marker: str, lines: list[str]) -> None:
    """Appends output lines until one contains marker; fails on EOF first."""
    while raw := await stream.readline():
        lines.append(raw.decode(errors="replace"))
        if marker in lines[-1]:
            return
    pytest.fail("dev.py ended before the demo finished:\n" + "".join(lines))


def descendants(pid: int) -> list[psutil.Process]:
    """Every process started under pid (its children are in their own sessions)."""
    return psutil.Process(pid).children(recursive=True)


def kill_all(processes: list[psutil.Process]) -> None:
    """Last resort after a failure: nothing may outlive the test."""
    for process in processes:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass


@dataclass
class DevRun:
    """One run of ``dev.py --demo`` until SIGTERM."""

    output: str
    """Its stdout and stderr."""
    code: int
    """Its exit code."""
    children: list[psutil.Process]
    """The processes it had started (checked for being gone)."""


@pytest.fixture
def dev_env(dev_database_url: str | None) -> dict[str, str]:
    """The test's environment without Missive settings, on a free gateway port."""
    env = {k: v for k, v in os.environ.items() if k not in UNSET}
    env.update(GATEWAY_PORT=str(free_port()), PYTHONUNBUFFERED="1")
    if dev_database_url:
        env["DATABASE_URL"] = dev_database_url
    return env


async def run_dev(
    data_dir: Path,
    env: dict[str, str],
    ports: dict[str, int],
    *,
    while_running: Callable[[str], Awaitable[None]] | None = None,
) -> DevRun:
    """Runs dev.py --demo until the demo is done (then ``while_running``), then SIGTERMs it."""
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "dev.py", "--demo", "--data-dir", str(data_dir)),
        *("--temporal-port", str(ports["temporal"]), "--ui-port", str(ports["ui"])),
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    children: list[psutil.Process] = []
    try:
        try:
            await asyncio.wait_for(read_until(proc.stdout, DEMO_DONE, lines), DEMO_TIMEOUT)
        except TimeoutError:
            pytest.fail(f"no '{DEMO_DONE}' within {DEMO_TIMEOUT:.0f}s:\n" + "".join(lines))
        try:
            children = descendants(proc.pid)
        except psutil.NoSuchProcess:  # dev.py ended on its own: say why
            rest = await asyncio.wait_for(proc.stdout.read(), STOP_TIMEOUT)
            lines.append(rest.decode(errors="replace"))
            pytest.fail("dev.py ended right after its demo:\n" + "".join(lines))
        if while_running:
            await while_running("".join(lines))
        proc.send_signal(signal.SIGTERM)
        rest = await asyncio.wait_for(proc.stdout.read(), STOP_TIMEOUT)
        lines.append(rest.decode(errors="replace"))
        code = await asyncio.wait_for(proc.wait(), STOP_TIMEOUT)
    finally:
        if proc.returncode is None:
            with contextlib.suppress(psutil.NoSuchProcess):  # it may have just ended
                kill_all([*descendants(proc.pid), psutil.Process(proc.pid)])
        kill_all(children)
    return DevRun("".join(lines), code, children)


def demo_ids(output: str) -> str:
    """The demo's ``users ... ; group conversation ...`` line."""
    match = re.search(r"demo: users (.+)$", output, re.MULTILINE)
    assert match, output
    return match.group(1)


@pytest.fixture
def data_root() -> Iterator[Path]:
    """A data folder the embedded PostgreSQL's own system user can reach.

    pytest's tmp_path lives under a root-only folder (mode 700), which a
    PostgreSQL started as another user cannot traverse.
    """
    folder = Path(tempfile.mkdtemp(prefix="missive-dev-test-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


async def test_dev_demo_runs_end_to_end_and_stops_cleanly(
    data_root: Path, dev_env: dict[str, str]
) -> None:
    data_dir = data_root / "data"
    ports = {"temporal": free_port(), "ui": free_port()}
    run = await run_dev(data_dir, dev_env, ports)
    output = run.output

    assert run.code == 0, output
    assert "Traceback" not in output, output
    _, alive = psutil.wait_procs(run.children, timeout=5)
    assert not alive, f"still running after dev.py exited: {alive}"
    assert len(run.children) >= 3, "expected temporal, the worker and the gateway"
    if "DATABASE_URL" not in dev_env:
        assert not (data_dir / "postgres" / "postmaster.pid").exists(), "PostgreSQL still running"

    # What a newcomer sees: where things are, each event on a socket, the demo's end.
    assert f"http://127.0.0.1:{ports['ui']}" in output
    assert f"http://127.0.0.1:{dev_env['GATEWAY_PORT']}" in output
    assert "python -m starter token" in output
    for handle in ("ana", "ben", "cy"):
        assert f"{handle} <- message:new" in output
        assert f"{handle} <- message:receipt" in output
    # The demo's clients ack as chat apps do: delivered on arrival, read once seen.
    assert re.search(r"message:receipt seq \d+ delivered by", output), output
    assert re.search(r"message:receipt seq \d+ read by", output), output
    assert "3 messages delivered and read by everyone" in output

    # Keys were generated once, readable by the owner only, and never printed.
    keys_file = data_dir / "keys.env"
    assert stat.S_IMODE(keys_file.stat().st_mode) == 0o600
    for line in keys_file.read_text().splitlines():
        value = line.partition("=")[2]
        secret = value.partition(":")[2] or value
        assert secret and secret not in output


async def test_dev_keeps_keys_users_and_workflows_across_a_restart(
    data_root: Path, dev_env: dict[str, str]
) -> None:
    data_dir = data_root / "data"
    ports = {"temporal": free_port(), "ui": free_port()}
    first = await run_dev(data_dir, dev_env, ports)
    assert first.code == 0, first.output
    keys = (data_dir / "keys.env").read_text()
    workflow_ids = re.findall(r"workflow (message-[0-9a-f-]+)", first.output)
    assert len(workflow_ids) == 3, first.output

    async def first_run_workflows_exist(_: str) -> None:
        client = await Client.connect(f"127.0.0.1:{ports['temporal']}")
        for workflow_id in workflow_ids:
            await client.get_workflow_handle(workflow_id).describe()

    second = await run_dev(data_dir, dev_env, ports, while_running=first_run_workflows_exist)
    assert second.code == 0, second.output
    assert (data_dir / "keys.env").read_text() == keys
    assert demo_ids(second.output) == demo_ids(first.output)
