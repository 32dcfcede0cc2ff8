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

from missive.notify.log import _inbox, _settle
from missive.services import receipts
from runtime.wiring import Core

pytestmark = pytest.mark.integration

NOW = datetime(2026, 12, 7, tzinfo=UTC)

HISTORY_INDEXES = ("uq_notifications_recipient_channel_key", "ix_notifications_bell_read")
"""Indexes that reach a reader's sent rows (their history, or the bell's order of them),
not only what is left to settle; ix_notifications_open was one until migration 0015
(see the test below)."""


_SEED = text(
    """
    INSERT INTO notifications (id, recipient_id, channel, dedupe_key, status,
        conversation_id, seq, due_at, sent_at, read_at, cleared_at)
    SELECT gen_random_uuid(), u.id, ch, ch || ':' || c || ':' || n, 'sent', c, n, now(),
        now(), CASE WHEN ch = 'in_app' AND n = 1 THEN now() END,
        CASE WHEN ch = 'push' AND n = 1 THEN now() END
      FROM users AS u, unnest(CAST(:cids AS uuid[])) AS c, generate_series(1, 3) AS n,
           unnest(ARRAY['in_app', 'push']) AS ch
    """
)


async def plan(core: Core, statement: TextClause, params: dict[str, Any]) -> str:
    """The statement's plan as JSON text, sequential scans priced out; nothing runs.

    Over a few analyzed rows (five readers, three messages in each of five
    conversations, on both channels), as autovacuum leaves a table in use: on one
    never analyzed the planner prices an index by little more than its predicate.
    """
    async with core.engine.connect() as conn:
        for i in range(5):
            await conn.execute(
                text(
                    "INSERT INTO users (id, handle, display_name)"
                    " VALUES (gen_random_uuid(), :h, :h)"
                ),
                {"h": f"plan-{i}"},
            )
        await conn.execute(_SEED, {"cids": [str(uuid.uuid4()) for _ in range(5)]})
        await conn.execute(text("ANALYZE notifications"))
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
    # Nor ANDed with an index of the reader's sent rows: in a 50-member group after 300
    # messages that read 294 index rows per reader of the batch (migration 0015).
    assert not any(name in found for name in HISTORY_INDEXES), found


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
    assert not any(name in found for name in HISTORY_INDEXES), found


async def test_the_open_index_holds_no_sent_row(core: Core) -> None:
    """Sent rows stay for good (the bell, the history); an index that kept them beside
    the open ones was what the planner ANDed with ``ix_notifications_uncleared``: in a
    50-member group after 300 messages, 294 index rows read per reader of a batch."""
    async with core.engine.connect() as conn:
        definition = (
            await conn.execute(
                text("SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_notifications_open'")
            )
        ).scalar_one()
    assert "pending" in definition and "queued" in definition
    assert "sent" not in definition, definition


@pytest.mark.parametrize("unread_only", [False, True])
async def test_the_bell_reads_unread_rows_and_the_newest_read_ones(
    core: Core, unread_only: bool
) -> None:
    """Sorting every shown in-app row for the newest page was O(history): 97 ms at
    100,000 rows (bench.bell). The unread rows come from their own index, the read
    ones from the bell's, in its order."""
    found = await plan(core, _inbox._BELL[unread_only], {"rid": str(uuid.uuid4()), "limit": 50})
    assert "ix_notifications_unread" in found
    assert ("ix_notifications_bell_read" in found) is not unread_only
    assert "uq_notifications_recipient_channel_key" not in found, found
