"""The archive statement against the schema: every column of messages is archived or
is named as not kept, and an archived message comes back whole."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest
from sqlalchemy import text

from missive.models import ConversationKind
from missive.schemas import PersistMessageInput
from missive.services import retention
from missive.services.directory import NewUser
from missive.services.retention import RetentionService
from runtime.wiring import Core

pytestmark = pytest.mark.integration

_COLUMNS = (
    "SELECT column_name FROM information_schema.columns"
    " WHERE table_schema = current_schema() AND table_name = :table"
)


async def _columns(core: Core, table: str) -> set[str]:
    async with core.engine.connect() as conn:
        return set((await conn.execute(text(_COLUMNS), {"table": table})).scalars())


async def test_every_column_of_messages_is_archived_or_named_as_not_kept(core: Core) -> None:
    own, extra, skipped = (
        retention.ARCHIVED_COLUMNS,
        retention.EXTRA_COLUMNS,
        retention.NOT_ARCHIVED,
    )
    assert len({*own, *extra, *skipped}) == len(own) + len(extra) + len(skipped)
    # A column added to messages fails here until the archive statement keeps it.
    assert await _columns(core, "messages") == {*own, *extra, *skipped}
    assert set(own) <= await _columns(core, "archived_messages")
    returned = re.search(r"RETURNING (.*?)\n\), archived", retention._ARCHIVE, re.S)
    assert returned is not None
    assert [c.strip() for c in returned.group(1).split(",")] == [f"m.{c}" for c in (*own, *extra)]
    for column in extra:
        assert f"'{column}', mv.{column}" in retention._ARCHIVE


async def test_an_archived_message_comes_back_with_every_column(core: Core) -> None:
    ana = await core.directory.create_user(NewUser(handle="ana"))
    ben = await core.directory.create_user(NewUser(handle="ben"))
    group = await core.directory.create_conversation(
        kind=ConversationKind.GROUP, members=[ana, ben]
    )
    await core.messages.persist(
        PersistMessageInput(
            conversation_id=group, sender_id=ana, client_message_id="c1", body="keep me"
        )
    )
    # Every column set, so one the statement drops shows as a difference.
    row = "SELECT to_jsonb(m) - CAST(:skipped AS text[]) FROM messages m WHERE conversation_id = :c"
    skipped = list(retention.NOT_ARCHIVED)
    async with core.engine.begin() as conn:
        await conn.execute(
            text(
                'UPDATE messages SET e2e_header = \'{"key": "k1"}\','
                " edited_at = now() - interval '9 days', deleted_at = now() - interval '8 days',"
                " created_at = now() - interval '10 days'"
            )
        )
        before = (await conn.execute(text(row), {"skipped": skipped, "c": group})).scalar_one()
    assert all(value is not None for value in before.values())

    service = RetentionService(core.engine, default_days=2, restore_window_days=7, chunk_size=10)
    now = datetime.now(UTC)
    assert (await service.archive_expired(now)).messages == 1
    assert (await service.restore(group, now=now)).messages == 1
    async with core.engine.connect() as conn:
        after = (await conn.execute(text(row), {"skipped": skipped, "c": group})).scalar_one()
    assert after == before
