"""BatchService and RetentionService against a real PostgreSQL: exact rows, reruns, bad input."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.engine import make_url
from temporalio.testing import ActivityEnvironment

from activities.batch import BatchActivities
from missive.constants import EVENT_MESSAGE_NEW, EVENT_MESSAGES_BATCH
from missive.errors import ConversationNotFound, InvalidInput
from missive.models import ConversationKind, EncryptionMode
from missive.schemas import BatchChunkInput, BatchKind, ReceiptInput, ReceiptStatus
from missive.services.batch import (
    BatchService,
    direct_conversation_id,
    scan_import_file,
    user_announcement_items,
)
from missive.services.directory import NewUser
from missive.services.retention import RetentionService
from runtime.wiring import Core
from tests.conftest import ROOT, _admin, _sqlalchemy_url

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
    assert (archived.messages, archived.deliveries) == (7 + 2, 0)  # deliveries: not archived
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


_DELIVERY_STATE = (
    "SELECT recipient_id::text, seq, status, sent_at, delivered_at, read_at FROM deliveries"
    " WHERE conversation_id = :c ORDER BY seq, recipient_id"
)


async def _rows(core: Core, sql: str, **params: object) -> list[tuple[object, ...]]:
    async with core.engine.connect() as conn:
        return [tuple(r) for r in (await conn.execute(text(sql), params)).all()]


async def _notify(core: Core, recipient: str, message_id: str | None, key: str) -> None:
    async with core.engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO notifications (id, recipient_id, channel, dedupe_key, status,"
                " message_id, due_at) VALUES (gen_random_uuid(), :r, 'in_app', :k, 'sent',"
                " :m, now())"
            ),
            {"r": recipient, "k": key, "m": message_id},
        )


async def test_restore_rebuilds_deliveries_from_watermarks_and_purge_drops_notifications(
    core: Core,
) -> None:
    ana, ben, cy, group, direct = await _world(core)
    service = BatchService(core.engine, core.cipher, None)
    items = [{"conversation_id": group, "sender_id": ana, "body": f"g{i}"} for i in range(6)]
    items += [{"conversation_id": direct, "sender_id": ana, "body": "kept"}]
    await service.stage_items("p", BatchKind.IMPORT, items)
    await service.process_chunk("p", 1, 8, max_body_bytes=100, step=100)
    read = ReceiptInput(user_id=ben, conversation_id=group, status=ReceiptStatus.READ, up_to_seq=4)
    await core.receipts.apply(read)
    got = ReceiptInput(
        user_id=cy, conversation_id=group, status=ReceiptStatus.DELIVERED, up_to_seq=2
    )
    await core.receipts.apply(got)
    # A receipt moves deliveries and watermarks together: the archive keeps neither
    # copy of the deliveries, the restore derives them from the watermarks.
    before = {(r[0], r[1]): r[2] for r in await _rows(core, _DELIVERY_STATE, c=group)}
    assert [before[ben, s] for s in range(1, 7)] == [2, 2, 2, 2, 0, 0]
    assert [before[cy, s] for s in range(1, 7)] == [1, 1, 0, 0, 0, 0]
    group_ids = [
        str(r[0])
        for r in await _rows(core, "SELECT id FROM messages WHERE conversation_id = :c", c=group)
    ]
    kept_id = str(
        await _scalar(core, "SELECT id FROM messages WHERE conversation_id = :c", c=direct)
    )
    for n, mid in enumerate(group_ids):
        await _notify(core, ben, mid, f"m{n}")
    await _notify(core, ben, kept_id, "kept")
    await _notify(core, cy, None, "digest")

    retention = RetentionService(
        core.engine, default_days=None, restore_window_days=7, chunk_size=4
    )
    await retention.set_policy(group, retention_days=2)
    await _backdate(core, group, 3)
    header = "SELECT e2e_header->>'key' FROM messages WHERE conversation_id = :c AND seq = 2"
    async with core.engine.begin() as conn:  # a column archived_messages keeps in extra
        await conn.execute(text('UPDATE messages SET e2e_header = \'{"key": "k1"}\' WHERE seq = 2'))
    now = datetime.now(UTC)
    archived = await retention.archive_expired(now)
    assert (archived.messages, archived.transactions) == (6, 2)
    extras = "SELECT count(*) FROM archived_messages WHERE extra = '{}'::jsonb"
    assert await _count(core, extras) == 5
    assert (
        await _count(core, "SELECT count(*) FROM deliveries WHERE conversation_id = :c", c=group)
        == 0
    )
    assert await _count(core, "SELECT count(*) FROM notifications") == 8  # kept until the purge

    restored = await retention.restore(group, now=now)
    assert (restored.messages, restored.deliveries, restored.legal_hold) == (6, 12, False)
    after = await _rows(core, _DELIVERY_STATE, c=group)
    assert {(r[0], r[1]): r[2] for r in after} == before
    created = {
        r[0]: r[1]
        for r in await _rows(
            core, "SELECT seq, created_at FROM messages WHERE conversation_id = :c", c=group
        )
    }
    assert all(r[3] == created[r[1]] and r[4] is None and r[5] is None for r in after)
    pending = "SELECT count(*) FROM messages WHERE conversation_id = :c AND indexed_at IS NULL"
    assert await _count(core, pending, c=group) == 6  # indexed again
    assert await _scalar(core, header, c=group) == "k1"
    assert await _count(core, "SELECT count(*) FROM archived_messages") == 0

    # Not on hold: the next run archives them again; past the window they go for
    # good with their notifications, in bounded transactions.
    assert (await retention.archive_expired(now)).messages == 6
    assert (await retention.purge_archived(now)).messages == 0  # still inside the window
    purged = await retention.purge_archived(now + timedelta(days=8))
    assert (purged.messages, purged.notifications, purged.transactions) == (6, 6, 2)
    assert await _count(core, "SELECT count(*) FROM archived_messages") == 0
    left = await _rows(core, "SELECT dedupe_key FROM notifications ORDER BY dedupe_key")
    assert left == [("digest",), ("kept",)]
    assert await _count(core, "SELECT count(*) FROM messages") == 1


async def test_migration_0006_rekeys_the_archive_and_downgrades_with_rebuilt_deliveries(
    pg_admin_url: str,
) -> None:
    name = f"missive_m_{uuid.uuid4().hex[:12]}"
    await _admin(pg_admin_url, f'CREATE DATABASE "{name}"')
    config = Config(str(ROOT / "alembic.ini"))
    config.attributes["database_url"] = _sqlalchemy_url(pg_admin_url, name)
    config.attributes["configure_logger"] = False
    ana, ben, cid = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    dsn = make_url(pg_admin_url).set(database=name).render_as_string(hide_password=False)
    try:
        for target in ("0004", "0005"):
            await asyncio.to_thread(command.upgrade, config, target)
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(
                "INSERT INTO users (id, handle, display_name) VALUES ($1, 'ana', 'Ana'),"
                " ($2, 'ben', 'Ben')",
                ana,
                ben,
            )
            await conn.execute("INSERT INTO conversations (id, kind) VALUES ($1, 'direct')", cid)
            await conn.execute(
                "INSERT INTO participants (conversation_id, user_id, delivered_seq, read_seq)"
                " VALUES ($1, $2, 0, 0), ($1, $3, 7, 6)",
                cid,
                ana,
                ben,
            )
            await conn.execute(
                "INSERT INTO archived_messages (id, conversation_id, seq, sender_id,"
                " client_message_id, body_ciphertext, key_version, created_at, deliveries,"
                " archived_at) SELECT gen_random_uuid(), $1, s, $2, 'c' || s, '\\x00', 1,"
                " now(), '[{}]'::jsonb, now() FROM generate_series(6, 8) s",
                cid,
                ana,
            )
            await asyncio.to_thread(command.upgrade, config, "heads")
            columns = await conn.fetchval(
                "SELECT count(*) FROM information_schema.columns"
                " WHERE table_name = 'archived_messages' AND column_name = 'deliveries'"
            )
            assert columns == 0
            indexes = await conn.fetch(
                "SELECT indexname, indexdef FROM pg_indexes"
                " WHERE tablename = 'archived_messages' ORDER BY indexname"
            )
            assert [r["indexname"] for r in indexes] == [
                "archived_messages_pkey",
                "ix_archived_messages_archived_at",
            ]
            assert "(conversation_id, seq)" in indexes[0]["indexdef"]
            assert "USING brin (archived_at)" in indexes[1]["indexdef"]
            assert await conn.fetchval("SELECT count(*) FROM archived_messages") == 3

            await asyncio.to_thread(command.downgrade, config, "0006-1")
            rows = await conn.fetch("SELECT seq, deliveries FROM archived_messages ORDER BY seq")
            rebuilt = {r["seq"]: json.loads(r["deliveries"]) for r in rows}
            assert {
                s: [(d["recipient_id"], d["status"]) for d in v] for s, v in rebuilt.items()
            } == {
                6: [(str(ben), 2)],
                7: [(str(ben), 1)],
                8: [(str(ben), 0)],
            }
        finally:
            await conn.close()
    finally:
        await _admin(pg_admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def test_import_lines_carry_their_own_created_at_and_bad_values_are_reported(
    core: Core, tmp_path: Path
) -> None:
    ana, _, _, group, _ = await _world(core)

    def line(body: str, **extra: object) -> dict[str, object]:
        return {"conversation_id": group, "sender_id": ana, "body": body, **extra}

    lines: list[object] = [
        line("a", created_at="2025-03-01T09:30:00Z"),
        line("b", created_at="2025-03-01T11:31:00+02:00"),
        line("c"),
        line("d", created_at="yesterday"),  # line 4
        line("e", created_at="2025-03-01T09:30:00"),  # line 5: no offset
        line("f", created_at="2999-01-01T00:00:00Z"),  # line 6: future
        line("g", created_at=1700000000),  # line 7
    ]
    source = scan_import_file(_write(tmp_path / "history.jsonl", lines))
    service = BatchService(core.engine, core.cipher, None)
    await service.stage_file("h", BatchKind.IMPORT, source)
    began = datetime.now(UTC)
    result = await service.process_chunk("h", 1, 8, max_body_bytes=100, step=3)
    assert (result.stored, result.failed) == (3, 4)

    report = await service.report("h", limit=10)
    assert [(f.line_no, f.reason) for f in report.failures] == [
        (4, "InvalidInput: created_at 'yesterday' is not an ISO-8601 date and time"),
        (5, "InvalidInput: created_at '2025-03-01T09:30:00' has no UTC offset (add Z or +hh:mm)"),
        (6, "InvalidInput: created_at '2999-01-01T00:00:00Z' is in the future"),
        (7, "InvalidInput: created_at must be an ISO-8601 string, got int"),
    ]
    stored = await _rows(
        core,
        "SELECT m.seq, m.created_at, min(d.sent_at), count(d.*) FROM messages m"
        " JOIN deliveries d ON d.message_id = m.id GROUP BY m.seq, m.created_at ORDER BY m.seq",
    )
    assert [r[0] for r in stored] == [1, 2, 3]  # sequence numbers in file order
    assert stored[0][1] == datetime(2025, 3, 1, 9, 30, tzinfo=UTC)
    assert stored[1][1] == datetime(2025, 3, 1, 9, 31, tzinfo=UTC)
    assert isinstance(stored[2][1], datetime) and stored[2][1] >= began - timedelta(seconds=5)
    # Deliveries were sent when their message was created; two other members each.
    assert all(r[2] == r[1] and r[3] == 2 for r in stored)


async def test_announcement_to_users_finds_or_creates_their_direct_conversations(
    core: Core,
) -> None:
    ana, ben, cy, group, direct = await _world(core)  # group: ana, ben and cy
    dee, eve, fay = [
        await core.directory.create_user(NewUser(handle=h)) for h in ("dee", "eve", "fay")
    ]
    e2e = await core.directory.create_conversation(
        kind=ConversationKind.DIRECT, members=[ana, eve], encryption_mode=EncryptionMode.E2E
    )
    await core.directory.create_conversation(kind=ConversationKind.DIRECT, members=[ben, cy])
    unknown = "00000000-0000-4000-8000-000000000000"
    directs = "SELECT count(*) FROM conversations WHERE kind = 'direct'"
    assert await _count(core, directs) == 3

    emitter = RecordingEmitter()
    service = BatchService(core.engine, core.cipher, emitter)
    items: list[dict[str, Any]] = user_announcement_items(
        ana, "all hands at 10", [ben, cy, dee, eve, unknown, ana]
    )
    items.append({"recipient_id": ben, "sender_id": unknown, "body": "who?"})
    await service.stage_items("u1", BatchKind.ANNOUNCEMENT, items)
    result = await service.process_chunk("u1", 1, 8, max_body_bytes=100, step=2)
    assert (result.stored, result.failed) == (3, 4)
    report = await service.report("u1", limit=10)
    assert [(f.item_no, f.reason) for f in report.failures] == [
        (
            4,
            f"InvalidInput: conversation {e2e} is end-to-end encrypted; a batch stores text "
            "the server encrypts and cannot post there",
        ),
        (5, f"UserNotFound: user {unknown} does not exist"),
        (6, f"InvalidInput: recipient_id {ana} is the sender"),
        (7, f"UserNotFound: user {unknown} does not exist"),
    ]

    # ben's existing direct conversation is used; cy and dee get one each, with
    # the pair's derived id, both members and a data key (the bodies decrypt).
    assert await _count(core, directs) == 5
    created = {direct_conversation_id(ana, cy): cy, direct_conversation_id(ana, dee): dee}
    for conv, user in [(direct, ben), *created.items()]:
        members = await _rows(
            core,
            "SELECT user_id::text FROM participants WHERE conversation_id = :c ORDER BY 1",
            c=conv,
        )
        assert members == sorted([(ana,), (user,)])
        mid = await _scalar(core, "SELECT id FROM messages WHERE conversation_id = :c", c=conv)
        message = await core.messages.load(str(mid))
        assert (message.body, message.seq, message.sender_id) == ("all hands at 10", 1, ana)
    assert await _count(core, "SELECT count(*) FROM messages") == 3
    assert await _count(core, "SELECT count(*) FROM deliveries") == 3
    assert await _count(core, "SELECT last_seq FROM conversations WHERE id = :c", c=group) == 0
    assert sorted(e[1]["conversation_id"] for e in emitter.events if e[0] == EVENT_MESSAGE_NEW) == (
        sorted([direct, *created])
    )

    # A rerun (a retried chunk) creates and stores nothing new.
    again = await service.process_chunk("u1", 1, 8, max_body_bytes=100, step=7)
    assert (again.stored, again.failed) == (3, 4)
    assert await _count(core, directs) == 5
    assert await _count(core, "SELECT count(*) FROM messages") == 3

    # A later announcement finds the conversations the first one created; two
    # batches creating the same pair's conversation at once end up with one.
    await service.stage_items("u2", BatchKind.ANNOUNCEMENT, user_announcement_items(ana, "2", [cy]))
    for bid in ("u3", "u4"):
        await service.stage_items(
            bid, BatchKind.ANNOUNCEMENT, user_announcement_items(ana, bid, [fay])
        )
    results = await asyncio.gather(
        *(service.process_chunk(b, 1, 2, max_body_bytes=100, step=1) for b in ("u2", "u3", "u4"))
    )
    assert [(r.stored, r.failed) for r in results] == [(1, 0), (1, 0), (1, 0)]
    assert await _count(core, directs) == 6
    fay_conv = direct_conversation_id(ana, fay)
    assert (
        await _count(core, "SELECT count(*) FROM messages WHERE conversation_id = :c", c=fay_conv)
        == 2
    )
    assert await _count(core, "SELECT last_seq FROM conversations WHERE id = :c", c=fay_conv) == 2
    cy_conv = direct_conversation_id(ana, cy)
    assert await _count(core, "SELECT last_seq FROM conversations WHERE id = :c", c=cy_conv) == 2
    assert (
        await _count(
            core, "SELECT count(*) FROM conversation_keys WHERE conversation_id = :c", c=fay_conv
        )
        == 1
    )
