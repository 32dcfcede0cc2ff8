"""Batches and the retention Schedule on the Temporal dev server, with real PostgreSQL.

Includes the kill test: ``python worker.py`` SIGKILLed mid-batch, restarted,
every item stored exactly once.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import text
from temporalio.client import ScheduleOverlapPolicy
from temporalio.testing import WorkflowEnvironment

from missive.config import Settings
from missive.constants import SEARCH_ATTRIBUTE_PROGRESS, SEARCH_ATTRIBUTE_STATUS, TASK_QUEUE_BATCH
from missive.errors import InvalidInput
from missive.models import ConversationKind
from missive.schemas import BatchStatus, RetentionResult
from missive.services.directory import NewUser
from runtime.batch_worker import (
    RETENTION_CATCHUP_WINDOW,
    batch_service,
    batch_worker,
    ensure_retention_schedule,
)
from runtime.wiring import Core
from starter.batch import BatchClient, BatchOptions
from tests.conftest import ROOT, process_env
from tests.integration.test_batch_services import RecordingEmitter
from workflows.batch import PROGRESS_KEY, STATUS_KEY

pytestmark = pytest.mark.integration


async def _count(core: Core, sql: str, **params: object) -> int:
    async with core.engine.connect() as conn:
        return int((await conn.execute(text(sql), params)).scalar_one())


async def _group(core: Core, size: int = 3) -> tuple[list[str], str]:
    users = [
        await core.directory.create_user(NewUser(handle=f"u{uuid.uuid4().hex[:8]}"))
        for _ in range(size)
    ]
    conv = await core.directory.create_conversation(kind=ConversationKind.GROUP, members=users)
    return users, conv


async def test_import_runs_to_the_end_with_progress_search_attributes_and_report(
    settings: Settings, core: Core, dev_env: WorkflowEnvironment, task_queue: str, tmp_path: Path
) -> None:
    (ana, _, _), conv = await _group(core)
    lines = [
        json.dumps({"conversation_id": conv, "sender_id": ana, "body": f"m{i}"}) for i in range(30)
    ]
    lines.insert(
        4, json.dumps({"conversation_id": str(uuid.uuid4()), "sender_id": ana, "body": "?"})
    )
    lines.append(json.dumps({"conversation_id": conv, "sender_id": ana, "body": ""}))
    path = tmp_path / "import.jsonl"
    path.write_text("\n".join(lines) + "\n")
    client = BatchClient(dev_env.client, settings, task_queue=task_queue)
    emitter = RecordingEmitter()
    async with client, batch_worker(settings, dev_env.client, core, emitter, task_queue=task_queue):
        started = await client.start_import(
            path, options=BatchOptions(chunk_size=7, failure_threshold=0.1)
        )
        result = await asyncio.wait_for(client.result(started.batch_id), 120)
        progress = await client.progress(started.batch_id)
        described = await client._handle(started.batch_id).describe()
        report = await client.report(started.batch_id)
        # The same file and id again: joins the finished batch, stages nothing twice.
        again = await client.start_import(path, batch_id=started.batch_id)
        other = tmp_path / "other.jsonl"
        other.write_text(lines[0] + "\n")
        with pytest.raises(InvalidInput, match="already exists with other content"):
            await client.start_import(other, batch_id=started.batch_id)

    assert (result.status, result.stored, result.failed, result.total) == (
        BatchStatus.COMPLETED,
        30,
        2,
        32,
    )
    assert (progress.processed, progress.chunks_done, progress.chunks_total) == (32, 5, 5)
    assert progress.rate_per_second > 0
    assert described.typed_search_attributes.get(PROGRESS_KEY) == 100
    assert described.typed_search_attributes.get(STATUS_KEY) == "completed"
    assert [(f.line_no, f.reason.split(":")[0]) for f in report.failures] == [
        (5, "ConversationNotFound"),
        (32, "InvalidInput"),
    ]
    assert again.staged is False and again.total == 32
    assert await _count(core, "SELECT count(*) FROM messages") == 30
    assert await _count(core, "SELECT count(*) FROM deliveries") == 60
    # 30 messages to one conversation in chunks of 7: one compact event per chunk.
    compact = [e[1] for e in emitter.events if e[0] == "messages:batch"]
    assert [e[1]["count"] for e in emitter.events if e[0] == "message:new"] == []
    assert sum(e["count"] for e in compact) == 30
    assert sorted((e["from_seq"], e["to_seq"]) for e in compact)[0][0] == 1
    # The Web UI can filter batches by the search attributes.
    query = f"{SEARCH_ATTRIBUTE_STATUS} = 'completed' AND {SEARCH_ATTRIBUTE_PROGRESS} = 100"
    found = [w.id async for w in dev_env.client.list_workflows(query)]
    for _ in range(50):  # visibility is eventually consistent
        if started.workflow_id in found:
            break
        await asyncio.sleep(0.2)
        found = [w.id async for w in dev_env.client.list_workflows(query)]
    assert started.workflow_id in found


async def test_retention_schedule_is_idempotent_and_its_trigger_runs_the_cleanup(
    settings: Settings, core: Core, dev_env: WorkflowEnvironment, task_queue: str
) -> None:
    (ana, _, _), conv = await _group(core)
    client = BatchClient(dev_env.client, settings, task_queue=task_queue)
    await client.batches.stage_items(
        "ret",
        "import",  # type: ignore[arg-type]
        [{"conversation_id": conv, "sender_id": ana, "body": f"old {i}"} for i in range(12)],
    )
    # The starter only stages; the worker's service stores the chunk.
    await batch_service(core, None).process_chunk("ret", 1, 13, max_body_bytes=100, step=100)
    await client.set_policy(conv, retention_days=1)
    async with core.engine.begin() as conn:
        await conn.execute(text("UPDATE messages SET created_at = now() - interval '2 days'"))

    schedule_id = f"retention-test-{uuid.uuid4().hex[:8]}"
    assert await ensure_retention_schedule(
        dev_env.client, settings, schedule_id=schedule_id, task_queue=task_queue
    )
    assert not await ensure_retention_schedule(
        dev_env.client, settings, schedule_id=schedule_id, task_queue=task_queue
    )
    try:
        async with (
            client,
            batch_worker(settings, dev_env.client, core, None, task_queue=task_queue),
        ):
            described = await client.describe_schedule(schedule_id)
            policy = described.schedule.policy
            assert policy.overlap is ScheduleOverlapPolicy.SKIP
            assert policy.catchup_window == RETENTION_CATCHUP_WINDOW
            # The server keeps the cron "17 3 * * *" as a calendar: next runs at 03:17 UTC.
            next_runs = described.info.next_action_times
            assert next_runs and all((t.hour, t.minute) == (3, 17) for t in next_runs)

            await client.trigger_schedule(schedule_id)
            for _ in range(300):
                if await _count(core, "SELECT count(*) FROM archived_messages") == 12:
                    break
                await asyncio.sleep(0.2)
            assert await _count(core, "SELECT count(*) FROM archived_messages") == 12
            assert await _count(core, "SELECT count(*) FROM messages") == 0
            assert await _count(core, "SELECT count(*) FROM deliveries") == 0
            runs = (await client.describe_schedule(schedule_id)).info.recent_actions
            assert len(runs) == 1
            run = dev_env.client.get_workflow_handle(
                getattr(runs[0].action, "workflow_id", ""), result_type=RetentionResult
            )
            outcome = await asyncio.wait_for(run.result(), 60)
            assert (outcome.archived, outcome.purged) == (12, 0)

            await client.pause_schedule(schedule_id)
            assert (await client.describe_schedule(schedule_id)).schedule.state.paused
            await client.unpause_schedule(schedule_id)
            assert not (await client.describe_schedule(schedule_id)).schedule.state.paused

            restored = await client.restore(conv, hold=True)
            assert (restored.messages, restored.deliveries, restored.legal_hold) == (12, 24, True)
            assert await _count(core, "SELECT count(*) FROM messages") == 12
    finally:
        await dev_env.client.get_schedule_handle(schedule_id).delete()


async def _worker_process(env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "worker.py",
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )


async def test_a_worker_killed_mid_batch_resumes_and_stores_every_item_exactly_once(
    settings: Settings, core: Core, dev_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    (ana, _, _), conv = await _group(core)
    total = 30_000
    path = tmp_path / "big.jsonl"
    with path.open("w") as handle:
        for i in range(total):
            handle.write(json.dumps({"conversation_id": conv, "sender_id": ana, "body": f"b{i}"}))
            handle.write("\n")
    env = process_env(
        DATABASE_URL=str(settings.database_url),
        TEMPORAL_ADDRESS=dev_env.client.service_client.config.target_host,
        RETENTION_SCHEDULE_ON_START="false",
        GRACEFUL_SHUTDOWN_SECONDS="1",
    )
    client = BatchClient(dev_env.client, settings, task_queue=TASK_QUEUE_BATCH)
    async with client:
        started = await client.start_import(
            path,
            options=BatchOptions(
                chunk_size=2_000,
                max_concurrent_chunks=2,
                items_per_transaction=200,
                heartbeat_timeout_seconds=3,
            ),
        )
        first = await _worker_process(env)
        try:
            for _ in range(1200):
                if await _count(core, "SELECT count(*) FROM messages") > 0:
                    break
                await asyncio.sleep(0.05)
        finally:
            os.kill(first.pid, signal.SIGKILL)
            await first.wait()
        at_kill = await _count(core, "SELECT count(*) FROM messages")
        assert 0 < at_kill < total, "the kill must land mid-batch"

        second = await _worker_process(env)
        try:
            result = await asyncio.wait_for(client.result(started.batch_id), 240)
        finally:
            second.send_signal(signal.SIGTERM)
            _, stderr = await asyncio.wait_for(second.communicate(), 60)
    assert second.returncode == 0, stderr.decode()[-2000:]
    assert (result.status, result.stored, result.failed) == (BatchStatus.COMPLETED, total, 0)
    assert await _count(core, "SELECT count(*) FROM messages") == total
    assert await _count(core, "SELECT count(DISTINCT seq) FROM messages") == total
    assert await _count(core, "SELECT max(seq) FROM messages") == total
    assert await _count(core, "SELECT last_seq FROM conversations WHERE id = :c", c=conv) == total
    assert await _count(core, "SELECT count(*) FROM deliveries") == 2 * total
    stored = await _count(core, "SELECT count(*) FROM batch_items WHERE state = 1")
    assert stored == total


async def _cli(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "starter",
        *args,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_cli_announces_to_users_in_their_direct_conversations(
    settings: Settings, core: Core, dev_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    (ana, ben, cy), _ = await _group(core)
    dee = await core.directory.create_user(NewUser(handle=f"u{uuid.uuid4().hex[:8]}"))
    existing = await core.directory.create_conversation(
        kind=ConversationKind.DIRECT, members=[ana, ben]
    )
    unknown = str(uuid.uuid4())
    users = tmp_path / "users.txt"
    # The sender and a repeated id are left out; the unknown user is a report entry.
    users.write_text("\n".join([ben, cy, ana, dee, cy, unknown, ""]) + "\n")
    env = process_env(
        DATABASE_URL=str(settings.database_url),
        TEMPORAL_ADDRESS=dev_env.client.service_client.config.target_host,
    )
    client = BatchClient(dev_env.client, settings, task_queue=TASK_QUEUE_BATCH)
    async with (
        client,
        batch_worker(settings, dev_env.client, core, None, task_queue=TASK_QUEUE_BATCH),
    ):
        code, out, err = await _cli(
            "batch", "announce", "--sender", ana, "--body", "office closed friday",
            "--users-file", str(users), "--failure-threshold", "0.5", "--json",
            env=env,
        )  # fmt: skip
        assert code == 0, err
        started = json.loads(out)
        assert started["total"] == 4
        result = await asyncio.wait_for(client.result(started["batch_id"]), 120)
        code, out, err = await _cli("batch", "report", started["batch_id"], "--json", env=env)
        assert code == 0, err
        report = json.loads(out)
        code, _, err = await _cli(
            "batch", "announce", "--sender", ana, "--body", "x", "--users-file", str(users),
            "--conversations-file", str(users), env=env,
        )  # fmt: skip
        assert code == 2 and "not allowed with argument" in err

    assert (result.status, result.stored, result.failed) == (BatchStatus.COMPLETED, 3, 1)
    assert [f["reason"] for f in report["failures"]] == [
        f"UserNotFound: user {unknown} does not exist"
    ]
    conversations = {
        user: await _count(
            core,
            "SELECT count(*) FROM conversations c JOIN participants a"
            " ON a.conversation_id = c.id AND a.user_id = :ana JOIN participants u"
            " ON u.conversation_id = c.id AND u.user_id = :u WHERE c.kind = 'direct'",
            ana=ana,
            u=user,
        )
        for user in (ben, cy, dee)
    }
    assert conversations == {ben: 1, cy: 1, dee: 1}
    assert (
        await _count(core, "SELECT count(*) FROM messages WHERE conversation_id = :c", c=existing)
        == 1
    )
    sql = (
        "SELECT count(*) FROM messages m JOIN conversations c ON c.id = m.conversation_id"
        " WHERE c.kind = 'direct' AND m.sender_id = :ana"
    )
    assert await _count(core, sql, ana=ana) == 3
    assert await _count(core, "SELECT count(*) FROM deliveries") == 3


async def test_import_with_created_at_through_the_batch_client(
    settings: Settings, core: Core, dev_env: WorkflowEnvironment, task_queue: str, tmp_path: Path
) -> None:
    (ana, _, _), conv = await _group(core)
    lines = [
        {
            "conversation_id": conv,
            "sender_id": ana,
            "body": "then",
            "created_at": "2024-02-29T23:59:59-05:00",
        },
        {
            "conversation_id": conv,
            "sender_id": ana,
            "body": "bad",
            "created_at": "2024-02-30T00:00:00Z",
        },
        {"conversation_id": conv, "sender_id": ana, "body": "now"},
    ]
    path = tmp_path / "history.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    client = BatchClient(dev_env.client, settings, task_queue=task_queue)
    async with client, batch_worker(settings, dev_env.client, core, None, task_queue=task_queue):
        started = await client.start_import(path, options=BatchOptions(failure_threshold=0.5))
        result = await asyncio.wait_for(client.result(started.batch_id), 120)
        report = await client.report(started.batch_id)
    assert (result.stored, result.failed) == (2, 1)
    assert [(f.line_no, f.reason) for f in report.failures] == [
        (2, "InvalidInput: created_at '2024-02-30T00:00:00Z' is not an ISO-8601 date and time")
    ]
    first = await _count(
        core,
        "SELECT extract(epoch FROM created_at)::int8 FROM messages WHERE conversation_id = :c"
        " AND seq = 1",
        c=conv,
    )
    assert first == int(datetime(2024, 3, 1, 4, 59, 59, tzinfo=UTC).timestamp())
