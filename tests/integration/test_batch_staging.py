"""Staged batch items against a real PostgreSQL: sealed at rest, gone once stored."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import text
from temporalio.testing import WorkflowEnvironment

from missive.config import Settings
from missive.errors import InvalidInput
from missive.models import ConversationKind
from missive.schemas import BatchKind
from missive.services.batch import BatchService
from missive.services.directory import NewUser
from runtime.wiring import Core, staging_cipher
from starter.batch import BatchClient
from tests.conftest import base_settings

pytestmark = pytest.mark.integration

SECRET = "the merger closes on friday, call ana@example.com"


async def _rows(core: Core, sql: str, **params: object) -> list[tuple[Any, ...]]:
    async with core.engine.connect() as conn:
        return [tuple(r) for r in (await conn.execute(text(sql), params)).all()]


async def _group(core: Core) -> tuple[str, str]:
    ana = await core.directory.create_user(NewUser(handle="ana"))
    ben = await core.directory.create_user(NewUser(handle="ben"))
    group = await core.directory.create_conversation(
        kind=ConversationKind.GROUP, members=[ana, ben]
    )
    return ana, group


async def test_staged_bodies_are_sealed_and_removed_once_stored(
    core: Core, settings: Settings
) -> None:
    ana, group = await _group(core)
    # The starter stages without MASTER_KEYS' help: codec-derived keys, as the worker's.
    starter = BatchService(core.engine, core.cipher, None, staging=staging_cipher(settings))
    items = [
        {"conversation_id": group, "sender_id": ana, "body": f"{SECRET} #{n}"} for n in range(3)
    ]
    await starter.stage_items("sealed", BatchKind.IMPORT, items)

    staged = await _rows(
        core,
        "SELECT payload::text, payload_key, payload_sealed FROM batch_items ORDER BY item_no",
    )
    assert [(p, k) for p, k, _ in staged] == [(None, "codec:1")] * 3
    for _, _, sealed in staged:
        assert isinstance(sealed, bytes) and b"merger" not in sealed and b"ana@" not in sealed
    dump = await _rows(core, "SELECT batch_items::text FROM batch_items")
    assert not any("merger" in str(row) for row in dump)

    worker = BatchService(core.engine, core.cipher, None, staging=core.staging)
    result = await worker.process_chunk("sealed", 1, 4, max_body_bytes=1000, step=10)
    assert (result.stored, result.failed) == (3, 0)
    assert (
        await _rows(core, "SELECT state, payload IS NULL, payload_sealed IS NULL FROM batch_items")
        == [(1, True, True)] * 3
    )
    mids = [str(mid) for (mid,) in await _rows(core, "SELECT message_id FROM batch_items")]
    bodies = sorted([(await core.messages.load(mid)).body for mid in mids])
    assert bodies == sorted(i["body"] for i in items)


async def test_the_starter_stages_with_no_master_keys(
    core: Core, settings: Settings, dev_env: WorkflowEnvironment
) -> None:
    ana, group = await _group(core)
    # Fresh settings (a copy would keep the parsed keyrings): the session's CODEC_KEYS only.
    starter_settings = base_settings(database_url=settings.database_url, master_keys="")
    assert starter_settings.master_keyring == {} and starter_settings.codec_keyring
    async with BatchClient(dev_env.client, starter_settings) as starter:
        items = [{"conversation_id": group, "sender_id": ana, "body": SECRET}]
        assert await starter.batches.stage_items("nomaster", BatchKind.IMPORT, items)
        assert (await starter.report("nomaster")).pending == 1

    worker = BatchService(core.engine, core.cipher, None, staging=core.staging)
    result = await worker.process_chunk("nomaster", 1, 2, max_body_bytes=1000, step=10)
    assert (result.stored, result.failed) == (1, 0)

    # Without CODEC_KEYS either there is no key to seal with: said before anything is staged.
    keyless = base_settings(database_url=settings.database_url, master_keys="", codec_keys="")
    async with BatchClient(dev_env.client, keyless) as starter:
        with pytest.raises(InvalidInput, match="CODEC_KEYS"):
            await starter.start_announcement(ana, "hi", [group])


async def test_a_sealed_item_moved_to_another_batch_or_key_does_not_open(
    core: Core, settings: Settings
) -> None:
    ana, group = await _group(core)
    service = BatchService(core.engine, core.cipher, None, staging=core.staging)
    one = [{"conversation_id": group, "sender_id": ana, "body": "one"}]
    await service.stage_items("a", BatchKind.IMPORT, one)
    await service.stage_items("b", BatchKind.IMPORT, [{**one[0], "body": "two"}])
    async with core.engine.begin() as conn:
        # Batch b's item replaced by a's sealed item: its associated data names batch a.
        await conn.execute(
            text(
                "UPDATE batch_items SET payload_sealed = "
                "(SELECT payload_sealed FROM batch_items WHERE batch_id = 'a') "
                "WHERE batch_id = 'b'"
            )
        )
    await service.process_chunk("b", 1, 2, max_body_bytes=1000, step=10)
    [(state, reason)] = await _rows(
        core, "SELECT state, reason FROM batch_items WHERE batch_id = 'b'"
    )
    assert state == 2 and reason.startswith("DecryptionFailed: staged item 1 of batch b")

    # A worker without the starter's key says which key it lacks.
    master_only = BatchService(core.engine, core.cipher, None)
    await master_only.process_chunk("a", 1, 2, max_body_bytes=1000, step=10)
    [(state, reason)] = await _rows(
        core, "SELECT state, reason FROM batch_items WHERE batch_id = 'a'"
    )
    assert state == 2 and reason.startswith("KeyVersionMissing: staged item sealed with key")


async def test_items_staged_in_clear_before_the_migration_are_stored_then_cleared(
    core: Core,
) -> None:
    ana, group = await _group(core)
    service = BatchService(core.engine, core.cipher, None, staging=core.staging)
    await service.stage_items(
        "old", BatchKind.IMPORT, [{"conversation_id": group, "sender_id": ana, "body": "x"}]
    )
    legacy = {"conversation_id": group, "sender_id": ana, "body": "from before 0010"}
    async with core.engine.begin() as conn:
        await conn.execute(
            text(
                "UPDATE batch_items SET payload = CAST(:p AS jsonb), payload_sealed = NULL,"
                " payload_key = NULL WHERE batch_id = 'old'"
            ),
            {"p": json.dumps(legacy)},
        )
    result = await service.process_chunk("old", 1, 2, max_body_bytes=1000, step=10)
    assert result.stored == 1
    assert await _rows(core, "SELECT payload IS NULL, payload_sealed IS NULL FROM batch_items") == [
        (True, True)
    ]
