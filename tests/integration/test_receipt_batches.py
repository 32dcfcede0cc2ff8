"""Receipts in batches: ReceiptService.apply_many and the ReceiptBatcher, on PostgreSQL."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import text
from temporalio.testing import WorkflowEnvironment

from missive.broadcast import Broadcaster
from missive.constants import EVENT_MESSAGE_RECEIPT, user_room
from missive.db import create_engine
from missive.errors import ConversationNotFound, MessageNotVisible, NotAMember, ProviderUnavailable
from missive.metrics import Metrics
from missive.schemas import PersistMessageInput, ReceiptStatus
from missive.services.receipts import ReceiptApplied, Watermark
from runtime.receipt_batcher import ReceiptBatcher
from runtime.wiring import Core
from tests.integration.test_gateway import _conversation, _people

pytestmark = pytest.mark.integration

READ, DELIVERED = ReceiptStatus.READ, ReceiptStatus.DELIVERED


@dataclass
class Room:
    """Records what a broadcaster emits, as a Socket.IO server would receive it."""

    emits: list[tuple[str, dict[str, Any], str | None]] = field(default_factory=list)

    async def emit(self, event: str, data: Any, *, room: str | None = None) -> None:
        self.emits.append((event, data, room))


async def _send(core: Core, conversation: str, sender: str, n: int) -> list[str]:
    ids = []
    for _ in range(n):
        stored = await core.messages.persist(
            PersistMessageInput(conversation, sender, uuid.uuid4().hex, "hello")
        )
        ids.append(stored.message_id)
    return ids


async def _statuses(core: Core, conversation: str, reader: str) -> list[int]:
    async with core.engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT status FROM deliveries WHERE conversation_id = :c AND recipient_id = :r"
                " ORDER BY seq"
            ),
            {"c": conversation, "r": reader},
        )
        return [int(s) for s in rows.scalars()]


async def _watermarks(core: Core, conversation: str, reader: str) -> tuple[int, int]:
    async with core.engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT delivered_seq, read_seq FROM participants"
                    " WHERE conversation_id = :c AND user_id = :r"
                ),
                {"c": conversation, "r": reader},
            )
        ).one()
    return int(row.delivered_seq), int(row.read_seq)


async def test_a_burst_of_one_readers_receipts_is_one_coalesced_watermark(core: Core) -> None:
    ana, ben = await _people(core, 2)
    conversation = await _conversation(core, ana, ben)
    await _send(core, conversation, ana, 100)
    seqs = list(range(1, 101))
    random.Random(7).shuffle(seqs)  # commutative: the order they arrive in does not matter

    batch = await core.receipts.apply_many(
        [Watermark(ben, conversation, READ, up_to_seq=s) for s in seqs],
        lifecycle_window_seconds=3600,
    )

    assert len(batch.readers) == 1  # one row in the statement, however many receipts
    reader = batch.readers[0]
    assert (reader.delivered_seq, reader.read_seq, reader.changed) == (100, 100, 100)
    assert [o.up_to_seq for o in batch.outcomes] == seqs  # type: ignore[union-attr]
    # Each receipt reports the rows it covers that moved in this write.
    assert [o.changed for o in batch.outcomes] == seqs  # type: ignore[union-attr]
    assert [c.seq for c in reader.changes] == list(range(100, 0, -1))  # newest first
    assert all(c.read_count == c.recipient_count == 1 for c in reader.changes)
    assert await _statuses(core, conversation, ben) == [2] * 100
    assert await _watermarks(core, conversation, ben) == (100, 100)

    # Applying it again changes nothing: a watermark only moves forward.
    again = await core.receipts.apply_many(
        [Watermark(ben, conversation, READ, up_to_seq=100)], lifecycle_window_seconds=3600
    )
    assert again.readers[0].changed == 0 and again.outcomes == [ReceiptApplied(100, 0)]


async def test_a_batch_mixing_readers_conversations_statuses_and_bad_receipts(core: Core) -> None:
    ana, ben, cy, dan = await _people(core, 4)
    one = await _conversation(core, ana, ben, cy)
    two = await _conversation(core, ana, ben, dan)
    one_ids = await _send(core, one, ana, 3)
    two_ids = await _send(core, two, ana, 2)

    receipts = [
        Watermark(ben, one, DELIVERED, up_to_seq=3),
        Watermark(ben, one, READ, up_to_seq=2),
        Watermark(cy, one, READ, up_to_seq=1),
        Watermark(cy, one, DELIVERED, message_id=one_ids[2]),
        Watermark(dan, two, READ, up_to_seq=2),
        Watermark(ben, two, DELIVERED, up_to_seq=1),
        # The bad ones get their own error; the others apply.
        Watermark(dan, one, READ, up_to_seq=1),
        Watermark(ben, one, READ, up_to_seq=99),
        Watermark(ben, str(uuid.uuid4()), READ, up_to_seq=1),
        Watermark(ben, one, READ, message_id=two_ids[0]),
    ]
    batch = await core.receipts.apply_many(receipts, lifecycle_window_seconds=3600)

    ok = [o for o in batch.outcomes[:6] if isinstance(o, ReceiptApplied)]
    assert [o.up_to_seq for o in ok] == [3, 2, 1, 3, 2, 1]
    errors = batch.outcomes[6:]
    assert isinstance(errors[0], NotAMember) and dan in str(errors[0])
    assert isinstance(errors[1], MessageNotVisible) and "no message 99 (its last is 3)" in str(
        errors[1]
    )
    assert isinstance(errors[2], ConversationNotFound)
    assert isinstance(errors[3], MessageNotVisible) and two_ids[0] in str(errors[3])

    assert len(batch.readers) == 4  # (ben, one), (cy, one), (dan, two), (ben, two)
    assert await _statuses(core, one, ben) == [2, 2, 1]
    assert await _statuses(core, one, cy) == [2, 1, 1]
    assert await _statuses(core, two, dan) == [2, 2]
    assert await _statuses(core, two, ben) == [1, 0]
    assert await _watermarks(core, one, ben) == (3, 2)
    assert await _watermarks(core, one, cy) == (3, 1)
    assert await _watermarks(core, two, ben) == (1, 0)
    # Counts after the whole batch: message 1 of `one` is read by both.
    first = next(c for r in batch.readers for c in r.changes if c.message_id == one_ids[0])
    assert (first.recipient_count, first.delivered_count, first.read_count) == (2, 2, 2)

    # A late "delivered" after "read" changes nothing, and nothing goes backward.
    late = await core.receipts.apply_many(
        [Watermark(ben, one, DELIVERED, up_to_seq=1)], lifecycle_window_seconds=3600
    )
    assert late.outcomes == [ReceiptApplied(1, 0)]
    assert await _statuses(core, one, ben) == [2, 2, 1]
    assert await _watermarks(core, one, ben) == (3, 2)


@pytest.fixture
async def batcher_parts(
    core: Core, dev_env: WorkflowEnvironment
) -> AsyncIterator[tuple[Room, Metrics, dict[str, Any]]]:
    room, metrics = Room(), Metrics(CollectorRegistry())
    parts = {
        "receipts": core.receipts,
        "broadcaster": Broadcaster(room),
        "client": dev_env.client,
        "notify_activities": None,
        "notify": None,
        "lifecycle_window_seconds": 3600,
        "detail_max_recipients": 32,
        "max_batch": 2000,
        "max_queued": 10_000,
        "signal_window_seconds": 0.05,
        "metrics": metrics,
    }
    yield room, metrics, parts


def _sample(metrics: Metrics, name: str) -> float:
    return metrics.registry.get_sample_value(name) or 0.0


async def test_the_batcher_writes_a_burst_of_100_receipts_once_and_acks_each(
    core: Core, batcher_parts: tuple[Room, Metrics, dict[str, Any]]
) -> None:
    room, metrics, parts = batcher_parts
    ana, ben = await _people(core, 2)
    conversation = await _conversation(core, ana, ben)
    ids = await _send(core, conversation, ana, 100)
    batcher = ReceiptBatcher(window_seconds=0.2, **parts)
    batcher.start()
    try:
        acks = await asyncio.gather(
            *(
                batcher.submit(
                    Watermark(ben, conversation, DELIVERED if s % 2 else READ, up_to_seq=s)
                )
                for s in range(1, 101)
            )
        )
    finally:
        await batcher.close()

    assert _sample(metrics, "missive_receipt_batches_total") == 1
    assert _sample(metrics, "missive_receipts_batched_total") == 100
    assert [a.up_to_seq for a in acks] == list(range(1, 101))
    assert await _statuses(core, conversation, ben) == [2] * 100  # read up to 100 wins
    # One message:receipt per message moved, to its sender, each saying "read".
    receipts = [data for event, data, _ in room.emits if event == EVENT_MESSAGE_RECEIPT]
    assert sorted(r["message_id"] for r in receipts) == sorted(ids)
    assert {r["status"] for r in receipts} == {"read"}
    assert {to for _, _, to in room.emits} == {user_room(ana)}


class _SlowFirstWrite:
    """The receipt service, its first batch write taking ``delay`` seconds longer."""

    def __init__(self, receipts: Any, delay: float) -> None:
        self._receipts, self._delay, self.writes = receipts, delay, 0

    async def apply_many(self, *args: Any, **kwargs: Any) -> Any:
        self.writes += 1
        if self.writes == 1:
            await asyncio.sleep(self._delay)
        return await self._receipts.apply_many(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._receipts, name)


async def test_receipts_that_came_during_a_write_wait_one_window_from_their_arrival(
    core: Core, batcher_parts: tuple[Room, Metrics, dict[str, Any]]
) -> None:
    _, metrics, parts = batcher_parts
    ana, ben, cy = await _people(core, 3)
    conversation = await _conversation(core, ana, ben, cy)
    await _send(core, conversation, ana, 2)
    slow = _SlowFirstWrite(core.receipts, delay=0.6)
    batcher = ReceiptBatcher(window_seconds=0.3, **{**parts, "receipts": slow})
    batcher.start()
    loop = asyncio.get_running_loop()
    try:
        started = loop.time()
        first = asyncio.ensure_future(batcher.submit(Watermark(ben, conversation, READ, 1)))
        await asyncio.sleep(0.35)  # the first batch is being written (0.3 s + 0.6 s)
        await batcher.submit(Watermark(cy, conversation, READ, 2))
        answered = loop.time() - started
        assert (await first).up_to_seq == 1
    finally:
        await batcher.close()
    # Written when the first write ended (0.9 s), its own window long over: not a
    # window after that write (1.2 s). Group commit still: one write at a time.
    assert 0.9 <= answered < 1.1
    assert slow.writes == 2
    assert _sample(metrics, "missive_receipt_batches_total") == 2


async def test_a_reader_removed_before_the_flush_is_refused_and_the_rest_apply(
    core: Core, batcher_parts: tuple[Room, Metrics, dict[str, Any]]
) -> None:
    _, _, parts = batcher_parts
    ana, ben, cy = await _people(core, 3)
    conversation = await _conversation(core, ana, ben, cy)
    await _send(core, conversation, ana, 2)
    batcher = ReceiptBatcher(window_seconds=0.3, **parts)
    batcher.start()
    try:
        bens = asyncio.ensure_future(
            batcher.submit(Watermark(ben, conversation, READ, up_to_seq=2))
        )
        cys = asyncio.ensure_future(batcher.submit(Watermark(cy, conversation, READ, up_to_seq=2)))
        await asyncio.sleep(0.05)  # both are queued, the batch not yet written
        await core.directory.remove_participant(conversation, cy)
        assert await bens == ReceiptApplied(2, 2)
        with pytest.raises(NotAMember):
            await cys
    finally:
        await batcher.close()
    assert await _statuses(core, conversation, ben) == [2, 2]
    assert await _statuses(core, conversation, cy) == [0, 0]  # removed: nothing moved


async def test_a_full_receipt_queue_answers_unavailable_at_once(
    core: Core, batcher_parts: tuple[Room, Metrics, dict[str, Any]]
) -> None:
    _, _, parts = batcher_parts
    ana, ben = await _people(core, 2)
    conversation = await _conversation(core, ana, ben)
    await _send(core, conversation, ana, 1)
    batcher = ReceiptBatcher(window_seconds=0.3, **{**parts, "max_queued": 3})
    batcher.start()
    try:
        queued = [
            asyncio.ensure_future(batcher.submit(Watermark(ben, conversation, READ, up_to_seq=1)))
            for _ in range(3)
        ]
        await asyncio.sleep(0)
        with pytest.raises(ProviderUnavailable) as refused:
            await batcher.submit(Watermark(ben, conversation, READ, up_to_seq=1))
        assert refused.value.retry_after is not None
        assert [a.up_to_seq for a in await asyncio.gather(*queued)] == [1, 1, 1]
    finally:
        await batcher.close()


async def test_a_large_conversations_sender_hears_counts_once_per_batch(
    core: Core, batcher_parts: tuple[Room, Metrics, dict[str, Any]]
) -> None:
    room, _, parts = batcher_parts
    ana, *readers = await _people(core, 5)
    conversation = await _conversation(core, ana, *readers)
    [message] = await _send(core, conversation, ana, 1)
    # Four recipients is "large" here: above the detail limit, counts only.
    batcher = ReceiptBatcher(window_seconds=0.2, **{**parts, "detail_max_recipients": 2})
    batcher.start()
    try:
        await asyncio.gather(
            batcher.submit(Watermark(readers[0], conversation, READ, up_to_seq=1)),
            batcher.submit(Watermark(readers[1], conversation, READ, up_to_seq=1)),
            batcher.submit(Watermark(readers[2], conversation, DELIVERED, up_to_seq=1)),
        )
        await asyncio.sleep(0.2)  # the events go out after the acks
    finally:
        await batcher.close()
    [event] = [data for name, data, _ in room.emits if name == EVENT_MESSAGE_RECEIPT]
    assert event["message_id"] == message and event["recipient_id"] is None
    assert (event["recipient_count"], event["delivered_count"], event["read_count"]) == (4, 3, 2)
    assert event["event_id"] == f"message:receipt:{message}:3:2"


async def test_a_batch_after_the_database_dropped_every_connection_is_stored_and_acked(
    core: Core, batcher_parts: tuple[Room, Metrics, dict[str, Any]]
) -> None:
    """The batch runs on the driver, where SQLAlchemy never sees a dead connection:
    after a restart (here every backend of the pool terminated) its first statement
    fails, the batch is retried on fresh connections, and the receipt is acked ok and
    stored, not answered unavailable."""
    _, _, parts = batcher_parts
    ana, ben = await _people(core, 2)
    conversation = await _conversation(core, ana, ben)
    await _send(core, conversation, ana, 3)
    batcher = ReceiptBatcher(window_seconds=0.01, **parts)
    batcher.start()
    try:
        first = await batcher.submit(Watermark(ben, conversation, DELIVERED, up_to_seq=1))
        assert first.changed == 1
        killer = create_engine(core.engine.url.render_as_string(hide_password=False))
        try:
            async with killer.connect() as conn:
                dropped = (
                    await conn.execute(
                        text(
                            "SELECT count(pg_terminate_backend(pid, 5000)) FROM pg_stat_activity"
                            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                        )
                    )
                ).scalar_one()
        finally:
            await killer.dispose()
        assert dropped >= 1  # the batch's pooled connection among them
        again = await batcher.submit(Watermark(ben, conversation, READ, up_to_seq=3))
        assert (again.up_to_seq, again.changed) == (3, 3)
    finally:
        await batcher.close()
    assert await _statuses(core, conversation, ben) == [2, 2, 2]
    assert await _watermarks(core, conversation, ben) == (3, 3)
