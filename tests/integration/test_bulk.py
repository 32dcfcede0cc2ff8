"""Bulk send through MissiveClient and ``python -m starter send-bulk``, against real servers."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from missive.config import Settings
from missive.constants import TASK_QUEUE_MESSAGES, message_workflow_id
from missive.errors import InvalidInput
from missive.models import ConversationKind
from missive.services.directory import NewUser
from runtime.wiring import WORKFLOWS, Core, activity_methods, message_activities
from starter.bulk import BulkSend, parse_send_line, send_many
from starter.client import MissiveClient
from tests.conftest import process_env

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


class _Silent:
    async def emit(self, event: str, data: Any, *, room: str | None = None) -> None:
        return None


@pytest.fixture
async def missive(
    dev_env: WorkflowEnvironment, core: Core, settings: Settings
) -> AsyncIterator[MissiveClient]:
    async with (
        Worker(
            dev_env.client,
            task_queue=TASK_QUEUE_MESSAGES,
            workflows=WORKFLOWS,
            activities=activity_methods(message_activities(core, _Silent())),  # type: ignore[arg-type]
        ),
        MissiveClient(dev_env.client, settings, call_timeout=timedelta(seconds=30)) as client,
    ):
        yield client


async def _setup(core: Core) -> tuple[str, str, str]:
    ana = await core.directory.create_user(NewUser(handle="ana"))
    ben = await core.directory.create_user(NewUser(handle="ben"))
    outsider = await core.directory.create_user(NewUser(handle="out"))
    conv = await core.directory.create_conversation(kind=ConversationKind.GROUP, members=[ana, ben])
    return conv, ana, outsider


async def _bodies(core: Core) -> dict[str, str]:
    async with core.engine.connect() as conn:
        rows = await conn.execute(text("SELECT client_message_id, seq FROM messages ORDER BY seq"))
        return {row[0]: row[1] for row in rows}


async def test_send_many_sums_up_started_duplicates_and_refusals(
    missive: MissiveClient, core: Core
) -> None:
    conv, ana, outsider = await _setup(core)
    await missive.send(conv, ana, "b-0", "hello 0")
    sends = [BulkSend(conv, ana, f"b-{i}", f"hello {i}") for i in range(12)]
    sends.append(BulkSend(conv, outsider, "x-1", "let me in"))
    sends.append(BulkSend("not-a-uuid", ana, "x-2", "bad"))

    summary = await send_many(missive, sends, concurrency=4)

    assert (summary.total, summary.started, summary.duplicates) == (14, 11, 1)
    assert [(p.number, p.error_type) for p in summary.refused] == [
        (13, "NotAMember"),
        (14, "InvalidInput"),
    ]
    assert summary.failed == [] and summary.waited_for_ack
    stored = await _bodies(core)
    assert sorted(stored) == sorted(f"b-{i}" for i in range(12))
    assert sorted(stored.values()) == list(range(1, 13))
    with pytest.raises(InvalidInput, match="concurrency"):
        await send_many(missive, sends, concurrency=0)


async def test_start_only_mode_starts_lifecycles_and_counts_running_ones_as_duplicates(
    missive: MissiveClient, core: Core
) -> None:
    conv, ana, _ = await _setup(core)
    sends = [BulkSend(conv, ana, f"s-{i}", f"hi {i}") for i in range(5)]

    first = await send_many(missive, sends, concurrency=8, wait_for_ack=False)
    again = await send_many(missive, sends[:2], concurrency=8, wait_for_ack=False)

    assert (first.started, first.duplicates, first.waited_for_ack) == (5, 0, False)
    assert (again.started, again.duplicates) == (0, 2)
    for i in range(5):
        handle = missive.temporal.get_workflow_handle(message_workflow_id(ana, f"s-{i}"))
        assert (await handle.describe()).workflow_type == "MessageLifecycleWorkflow"

    for _ in range(150):  # the lifecycles run on the worker after the bulk returned
        if len(await _bodies(core)) == 5:
            break
        await asyncio.sleep(0.2)
    assert sorted(await _bodies(core)) == [f"s-{i}" for i in range(5)]


def test_parse_send_line_names_the_line_and_the_problem() -> None:
    with pytest.raises(InvalidInput, match="line 3: not JSON"):
        parse_send_line("{", 3)
    with pytest.raises(InvalidInput, match="line 4: body is missing or not a string"):
        parse_send_line('{"conversation_id": "c", "sender_id": "s", "client_message_id": "x"}', 4)
    with pytest.raises(InvalidInput, match="line 5: unknown field"):
        parse_send_line('{"conversation_id": "c", "colour": 1}', 5)


async def test_cli_send_bulk_reports_line_numbers_and_exits_2_on_refusals(
    missive: MissiveClient, core: Core, dev_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    conv, ana, outsider = await _setup(core)

    def to_line(sender: str, cmid: str, body: str) -> str:
        fields = {"conversation_id": conv, "sender_id": sender, "client_message_id": cmid}
        return json.dumps({**fields, "body": body})

    lines = [
        to_line(ana, "f-1", "one"),
        "",
        "not json",
        to_line(outsider, "f-2", "no"),
        to_line(ana, "f-3", "3"),
    ]
    path = tmp_path / "sends.jsonl"
    path.write_text("\n".join(lines) + "\n")
    address = dev_env.client.service_client.config.target_host

    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "starter", "send-bulk", "--file", str(path), "--json"],
        cwd=ROOT,
        env=process_env(TEMPORAL_ADDRESS=address),
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert done.returncode == 2, done.stderr
    summary = json.loads(done.stdout)
    assert (summary["total"], summary["started"], summary["duplicates"]) == (4, 2, 0)
    assert [(p["number"], p["error_type"]) for p in summary["refused"]] == [
        (3, "InvalidInput"),
        (4, "NotAMember"),
    ]
    assert summary["refused"][0]["message"].startswith("line 3: not JSON")
    [line] = done.stderr.splitlines()
    assert json.loads(line)["error"] == "PermanentError"
    assert "2 send(s) refused (first: line 3" in json.loads(line)["message"]
    assert sorted(await _bodies(core)) == ["f-1", "f-3"]
