"""A receipt batch's statements read the rows they may change, not the reader's history.

A statement that can reach its table only through a full scan still gives the right
answer, just slower with every message stored, so no result shows it; its plan does.
With sequential scans priced out, each statement must name the partial index that
holds only what it may still change: pending deliveries, unread in-app rows, shown
pushes not yet cleared.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import TextClause, text

from missive.notify.log import _settle
from missive.services import receipts
from runtime.wiring import Core

pytestmark = pytest.mark.integration

NOW = datetime(2026, 12, 7, tzinfo=UTC)


async def plan(core: Core, statement: TextClause, params: dict[str, Any]) -> str:
    """The statement's plan as JSON text, sequential scans priced out; nothing runs."""
    async with core.engine.connect() as conn:
        await conn.execute(text("SET LOCAL enable_seqscan = off"))
        found = (
            await conn.execute(text(f"EXPLAIN (FORMAT JSON) {statement.text}"), params)
        ).scalar_one()
        await conn.rollback()
    return json.dumps(found)


def batch() -> dict[str, Any]:
    users = [str(uuid.uuid4()) for _ in range(3)]
    return {
        "uids": users,
        "cids": [str(uuid.uuid4())] * 3,
        "dseqs": [5, 9, 2],
        "rseqs": [5, 0, 2],
        "now": NOW,
    }


async def test_the_receipt_write_finds_pending_deliveries_through_their_index(core: Core) -> None:
    found = await plan(core, receipts._APPLY, batch())
    assert "ix_deliveries_pending" in found


async def test_settling_a_batch_reads_only_unread_and_uncleared_rows(core: Core) -> None:
    params = {**batch(), "read_reason": "read", "delivered_reason": "delivered"}
    found = await plan(core, _settle._SETTLE_MANY[False], params)
    assert "ix_notifications_unread" in found and "ix_notifications_uncleared" in found


async def test_settling_one_receipt_reads_only_unread_and_uncleared_rows(core: Core) -> None:
    params = {
        "uid": str(uuid.uuid4()),
        "cid": str(uuid.uuid4()),
        "seq": 7,
        "now": NOW,
        "read": True,
        "reason": "read",
    }
    found = await plan(core, _settle._SETTLE[False], params)
    assert "ix_notifications_unread" in found and "ix_notifications_uncleared" in found
