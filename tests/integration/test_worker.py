"""``python worker.py`` as a process: one-line errors, real work, a clean drain on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import sys

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from temporalio.testing import WorkflowEnvironment

from missive.config import Settings
from missive.constants import EVENT_MESSAGE_NEW
from missive.models import ConversationKind
from missive.services.directory import NewUser
from runtime.wiring import SOCKETIO_CHANNEL, Core
from starter import MissiveClient
from tests.conftest import ROOT, process_env

pytestmark = pytest.mark.integration


def _closed() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


_environment = process_env


async def _worker(env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "worker.py",
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def test_unreachable_dependencies_are_named_in_one_line(settings: Settings) -> None:
    closed = _closed()
    cases = [
        (_environment(DATABASE_URL=f"postgresql://u@{closed}/missive"), "cannot reach PostgreSQL"),
        (
            _environment(DATABASE_URL=str(settings.database_url), TEMPORAL_ADDRESS=closed),
            f"cannot reach Temporal at {closed}",
        ),
    ]
    for env, message in cases:
        process = await _worker(env)
        _, stderr = await asyncio.wait_for(process.communicate(), 60)
        lines = stderr.decode().strip().splitlines()
        assert process.returncode == 1, lines
        assert len(lines) == 1 and message in lines[0], lines


async def test_worker_runs_lifecycles_broadcasts_across_processes_and_drains(
    settings: Settings, core: Core, dev_env: WorkflowEnvironment
) -> None:
    ana = await core.directory.create_user(NewUser(handle="ana"))
    ben = await core.directory.create_user(NewUser(handle="ben"))
    conv = await core.directory.create_conversation(
        kind=ConversationKind.DIRECT, members=[ana, ben]
    )

    # Listen where the gateways listen: the worker's broadcast must come through here.
    url = make_url(str(settings.database_url))
    listener = await asyncpg.connect(
        host=url.query.get("host") or url.host,
        port=url.port,
        user=url.username,
        database=url.database,
    )
    heard: asyncio.Queue[str] = asyncio.Queue()
    await listener.add_listener(SOCKETIO_CHANNEL, lambda *args: heard.put_nowait(args[3]))
    address = dev_env.client.service_client.config.target_host
    process = await _worker(
        _environment(
            DATABASE_URL=str(settings.database_url),
            TEMPORAL_ADDRESS=address,
            GRACEFUL_SHUTDOWN_SECONDS="2",
        )
    )
    try:
        missive = MissiveClient(dev_env.client, settings)
        sent = await asyncio.wait_for(missive.send(conv, ana, "w-1", "via the worker"), 60)
        assert sent.seq == 1 and not sent.duplicate
        packet = json.loads(await asyncio.wait_for(heard.get(), 20))
        assert packet["event"] == EVENT_MESSAGE_NEW
        [event] = packet["data"]  # the pub/sub packet carries the emit's argument list
        assert event["message_id"] == sent.message_id and event["body"] == "via the worker"
        assert (await missive.mark_read(ben, conv, up_to_seq=1)).changed == 1
        async with core.engine.connect() as conn:
            status = (await conn.execute(text("SELECT status FROM deliveries"))).scalar_one()
        assert status == 2
    finally:
        await listener.close()
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, stderr.decode()
    assert b"Traceback" not in stderr, stderr.decode()
