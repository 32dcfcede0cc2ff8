"""BatchService and RetentionService against a real PostgreSQL: exact rows, reruns, bad input."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from temporalio.testing import ActivityEnvironment

from activities.batch import BatchActivities
from missive.constants import EVENT_MESSAGE_NEW
from missive.errors import ConversationNotFound, InvalidInput
from missive.jobs import EVENT_MESSAGES_BATCH
from missive.models import ConversationKind
from missive.schemas import BatchChunkInput, BatchKind
from missive.services.batch import BatchService, scan_import_file
from missive.services.directory import NewUser
from missive.services.retention import RetentionService
from runtime.wiring import Core

pytestmark = pytest.mark.integration


class RecordingEmitter:
    """Collects emitted events like a Socket.IO manager would publish them."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any], str | None]] = []

    async def emit(self, event: str, data: Any, *, room: str | None = None) -> None:
        self.events.append((event, data, room))


async def _count(core: Core, sql: str, **params: object) -> int:
    async with core.engine.connect() as conn:
        return int((await conn.execute(text(sql), params)).scalar_one())


async def _world(core: Core) -> tuple[str, str, str, str, str]:
    ana, ben, cy = [
        await core.directory.create_user(NewUser(handle=h)) for h in ("ana", "ben", "cy")
    ]
    group = await core.directory.create_conversation(
        kind=ConversationKind.GROUP, members=[ana, ben, cy]
    )
    direct = await core.directory.create_conversation(
        kind=ConversationKind.DIRECT, members=[ana, ben]
    )
    return ana, ben, cy, group, direct


def _write(path: Path, lines: list[object]) -> Path:
    path.write_text(
        "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n"
    )
    return path


async def test_import_stores_messages_deliveries_and_a_report_and_reruns_change_nothing(
    core: Core, tmp_path: Path
) -> None:
    ana, ben, cy, group, direct = await _world(core)
    unknown = "00000000-0000-4000-8000-000000000000"
    lines: list[object] = [
        {"conversation_id": group, "sender_id": ana, "body": f"g{i}"} for i in range(5)
    ]
    lines += [{"conversation_id": direct, "sender_id": ben, "body": f"d{i}"} for i in range(3)]
    lines += [
        "",  # blank lines are skipped but keep the numbering
        {"conversation_id": unknown, "sender_id": ana, "body": "nowhere"},  # line 10
        {"conversation_id": direct, "sender_id": cy, "body": "intruder"},  # line 11
        {"conversation_id": group, "sender_id": ana, "body": "   "},  # line 12
        {"conversation_id": "nope", "sender_id": ana, "body": "x"},  # line 13
    ]
    source = scan_import_file(_write(tmp_path / "items.jsonl", lines))
    assert source.total == 12
    emitter = RecordingEmitter()
    service = BatchService(core.engine, core.cipher, emitter, live_events_per_conversation=20)
    assert await service.stage_file("b1", BatchKind.IMPORT, source) is True
    assert await service.stage_file("b1", BatchKind.IMPORT, source) is False  # same content

    result = await service.process_chunk("b1", 1, 13, max_body_bytes=1000, step=4)
    assert (result.stored, result.failed) == (8, 4)
    assert await _count(core, "SELECT count(*) FROM messages") == 8
    # Two other members per group message, one per direct message.
    assert await _count(core, "SELECT count(*) FROM deliveries") == 5 * 2 + 3
    seqs = await _count(core, "SELECT sum(seq) FROM messages WHERE conversation_id = :c", c=group)
    assert seqs == 1 + 2 + 3 + 4 + 5
    assert await _count(core, "SELECT last_seq FROM conversations WHERE id = :c", c=direct) == 3
    assert sorted(e[1]["body"] for e in emitter.events if e[0] == EVENT_MESSAGE_NEW) == sorted(
        [f"g{i}" for i in range(5)] + [f"d{i}" for i in range(3)]
    )

    report = await service.report("b1", limit=10)
    assert (report.total, report.stored, report.failed, report.pending) == (12, 8, 4, 0)
    reasons = {f.line_no: f.reason for f in report.failures}
    assert reasons[10].startswith("ConversationNotFound")
    assert reasons[11].startswith("NotAMember")
    assert reasons[12] == "InvalidInput: body is empty"
    assert reasons[13].startswith("InvalidInput: conversation_id is not a valid UUID")

    # A rerun of the whole range (a retried activity) writes nothing new.
    again = await service.process_chunk("b1", 1, 13, max_body_bytes=1000, step=5)
    assert (again.stored, again.failed) == (8, 4)
    assert await _count(core, "SELECT count(*) FROM messages") == 8
    assert await _count(core, "SELECT count(*) FROM deliveries") == 13
    assert await _count(core, "SELECT last_seq FROM conversations WHERE id = :c", c=group) == 5
    mid = await _count(core, "SELECT count(*) FROM messages WHERE client_message_id = 'batch:b1:1'")
    assert mid == 1


async def test_bad_files_are_refused_with_line_numbers_and_nothing_is_staged(
    core: Core, tmp_path: Path
) -> None:
    good = {"conversation_id": "x", "sender_id": "y", "body": "z"}
    with pytest.raises(InvalidInput, match=r"line 3: not valid JSON.*line 4: expected a JSON obj"):
        scan_import_file(_write(tmp_path / "bad.jsonl", [good, good, "{oops", "[1, 2]"]))
    with pytest.raises(InvalidInput, match="the batch is empty"):
        scan_import_file(_write(tmp_path / "empty.jsonl", ["", "  "]))
    with pytest.raises(InvalidInput, match="cannot read import file"):
        scan_import_file(tmp_path / "missing.jsonl")
    service = BatchService(core.engine, core.cipher, None)
    with pytest.raises(InvalidInput, match="the batch is empty"):
        await service.stage_items("b2", BatchKind.ANNOUNCEMENT, [])
    source = scan_import_file(_write(tmp_path / "one.jsonl", [good]))
    await service.stage_file("b3", BatchKind.IMPORT, source)
    other = scan_import_file(_write(tmp_path / "two.jsonl", [good, good]))
    with pytest.raises(InvalidInput, match="already exists with other content"):
        await service.stage_file("b3", BatchKind.IMPORT, other)
    with pytest.raises(InvalidInput, match="batch id"):
        await service.stage_file("bad id!", BatchKind.IMPORT, other)
    assert await _count(core, "SELECT count(*) FROM batch_items") == 1
    with pytest.raises(InvalidInput, match="does not exist"):
        await service.report("nope", limit=5)


async def test_a_crashed_chunk_resumes_from_its_heartbeat_and_stores_each_item_once(
    core: Core,
) -> None:
    ana, _, _, group, _ = await _world(core)
    emitter = RecordingEmitter()
    service = BatchService(core.engine, core.cipher, emitter, live_events_per_conversation=20)
    items = [{"conversation_id": group, "sender_id": ana, "body": f"m{i}"} for i in range(50)]
    await service.stage_items("crash", BatchKind.IMPORT, items)
    activities = BatchActivities(service)
    chunk = BatchChunkInput(batch_id="crash", from_item=1, to_item=51, heartbeat_every=10)

    class WorkerDied(Exception):
        pass

    beats: list[int] = []

    def die_on_third(*details: Any) -> None:
        beats.append(details[0])
        if len(beats) == 3:
            raise WorkerDied

    env = ActivityEnvironment()
    env.on_heartbeat = die_on_third
    with pytest.raises(WorkerDied):
        await env.run(activities.process_batch_chunk, chunk)
    assert beats == [11, 21, 31]
    # The third transaction committed before its heartbeat was lost with the worker.
    assert await _count(core, "SELECT count(*) FROM messages") == 30

    resumed: list[int] = []
    retry = ActivityEnvironment()
    retry.info = dataclasses.replace(retry.info, heartbeat_details=[21], attempt=2)
    retry.on_heartbeat = lambda *d: resumed.append(d[0])
    result = await retry.run(activities.process_batch_chunk, chunk)
    assert resumed == [31, 41, 51]
    assert (result.stored, result.failed) == (50, 0)
    assert await _count(core, "SELECT count(*) FROM messages") == 50
    assert await _count(core, "SELECT count(DISTINCT seq) FROM messages") == 50
    assert await _count(core, "SELECT max(seq) FROM messages") == 50
    assert await _count(core, "SELECT count(*) FROM deliveries") == 100
    # Items 21-30 were stored by the crashed attempt after its last heartbeat:
    # the retry announces them again (same event ids) rather than lose them.
    new_ids = [e[1]["event_id"] for e in emitter.events if e[0] == EVENT_MESSAGE_NEW]
    assert len(new_ids) == len(emitter.events) == 30 + 10 + 20
    assert len(set(new_ids)) == 50


async def test_many_messages_to_one_conversation_get_one_compact_event(core: Core) -> None:
    ana, _, _, group, _ = await _world(core)
    emitter = RecordingEmitter()
    service = BatchService(core.engine, core.cipher, emitter, live_events_per_conversation=20)
    items = [{"conversation_id": group, "sender_id": ana, "body": f"h{i}"} for i in range(100)]
    await service.stage_items("hist", BatchKind.IMPORT, items)
    await service.process_chunk("hist", 1, 101, max_body_bytes=100, step=100)
    assert [(e[0], e[1]["from_seq"], e[1]["to_seq"], e[1]["count"]) for e in emitter.events] == [
        (EVENT_MESSAGES_BATCH, 1, 100, 100)
    ]


async def _backdate(core: Core, conversation_id: str, days: int) -> None:
    async with core.engine.begin() as conn:
        await conn.execute(
            text(
                "UPDATE messages SET created_at = now() - make_interval(days => :d)"
                " WHERE conversation_id = :c"
            ),
            {"d": days, "c": conversation_id},
        )


async def test_retention_archives_expired_messages_purges_after_the_window_and_restores(
    core: Core,
) -> None:
    ana, ben, cy, group, direct = await _world(core)
    held = await core.directory.create_conversation(kind=ConversationKind.DIRECT, members=[ana, cy])
    keep = await core.directory.create_conversation(kind=ConversationKind.DIRECT, members=[ben, cy])
    service = BatchService(core.engine, core.cipher, None)
    items = [
        {"conversation_id": c, "sender_id": s, "body": f"{n}"}
        for c, s, count in ((group, ana, 7), (direct, ben, 4), (held, ana, 3), (keep, ben, 2))
        for n in range(count)
    ]
    await service.stage_items("r", BatchKind.IMPORT, items)
    await service.process_chunk("r", 1, 17, max_body_bytes=100, step=100)
    retention = RetentionService(core.engine, default_days=30, restore_window_days=7, chunk_size=3)
    await retention.set_policy(group, retention_days=2)
    await retention.set_policy(held, retention_days=2, legal_hold=True)
    with pytest.raises(InvalidInput, match="positive number of days, got 0"):
        await retention.set_policy(group, retention_days=0)
    with pytest.raises(InvalidInput, match="got -3"):
        await retention.set_policy(group, retention_days=-3)
    with pytest.raises(InvalidInput, match="RETENTION_DEFAULT_DAYS"):
        RetentionService(core.engine, default_days=0, restore_window_days=7, chunk_size=3)
    for conv in (group, held):
        await _backdate(core, conv, 3)  # past their 2 days
    await _backdate(core, direct, 10)  # within the 30-day default
    await _backdate(core, keep, 40)  # past the default

    now = datetime.now(UTC)
    progress: list[int] = []

    async def seen(step: Any) -> None:
        progress.append(step.messages)

    archived = await retention.archive_expired(now, on_progress=seen)
    assert (archived.messages, archived.deliveries) == (7 + 2, 7 * 2 + 2)
    assert progress == [3, 6, 9]  # bounded transactions of 3
    assert await _count(core, "SELECT count(*) FROM archived_messages") == 9
    assert await _count(core, "SELECT count(*) FROM messages") == 4 + 3
    assert (
        await _count(core, "SELECT count(*) FROM messages WHERE conversation_id = :c", c=held) == 3
    )
    assert await _count(core, "SELECT count(*) FROM deliveries") == 4 + 3
    again = await retention.archive_expired(now)
    assert again.messages == 0
    assert (await retention.purge_archived(now)).messages == 0  # inside the window

    restored = await retention.restore(group, now=now, hold=True)
    assert (restored.messages, restored.deliveries, restored.legal_hold) == (7, 14, True)
    assert (
        await _count(core, "SELECT count(*) FROM messages WHERE conversation_id = :c", c=group) == 7
    )
    first = await _count(
        core, "SELECT count(*) FROM deliveries WHERE conversation_id = :c", c=group
    )
    assert first == 14
    body = await core.messages.load(
        str(
            await _scalar(
                core, "SELECT id FROM messages WHERE conversation_id = :c AND seq = 1", c=group
            )
        )
    )
    assert body.body == "0"
    with pytest.raises(InvalidInput, match="no archived messages"):
        await retention.restore(group, now=now)
    assert (await retention.archive_expired(now)).messages == 0  # the group is on hold now

    later = now + timedelta(days=8)
    with pytest.raises(InvalidInput, match="outside the restore window"):
        await retention.restore(keep, now=later)
    purged = await retention.purge_archived(later)
    assert purged.messages == 2
    assert await _count(core, "SELECT count(*) FROM archived_messages") == 0
    with pytest.raises(InvalidInput, match="no archived messages"):
        await retention.restore(keep, now=later)
    with pytest.raises(ConversationNotFound):
        await retention.restore("00000000-0000-4000-8000-000000000000", now=later)


async def _scalar(core: Core, sql: str, **params: object) -> object:
    async with core.engine.connect() as conn:
        return (await conn.execute(text(sql), params)).scalar_one()
