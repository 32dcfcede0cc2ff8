"""MessageService / ReceiptService / DirectoryService against a real PostgreSQL."""

from __future__ import annotations

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from missive.errors import (
    ConversationNotFound,
    DecryptionFailed,
    DuplicateClientMessageId,
    InvalidInput,
    MessageNotVisible,
    NotAMember,
)
from missive.models import ConversationKind
from missive.pubsub import connect_args
from missive.schemas import PersistMessageInput, ReceiptInput, ReceiptStatus
from missive.services.directory import NewUser
from runtime.wiring import Core

pytestmark = pytest.mark.integration


async def _people(core: Core, n: int) -> list[str]:
    return [await core.directory.create_user(NewUser(handle=f"u{i}")) for i in range(n)]


async def _count(core: Core, sql: str, **params: object) -> int:
    async with core.engine.connect() as conn:
        return int((await conn.execute(text(sql), params)).scalar_one())


async def test_persist_stores_ciphertext_sequence_and_deliveries(core: Core) -> None:
    ana, ben, cy = await _people(core, 3)
    conv = await core.directory.create_conversation(
        kind=ConversationKind.GROUP, members=[ana, ben, cy]
    )
    first = await core.messages.persist(PersistMessageInput(conv, ana, "c-1", "hello secret world"))
    second = await core.messages.persist(PersistMessageInput(conv, ben, "c-1", "second"))

    assert (first.seq, second.seq) == (1, 2)
    assert first.created and first.recipient_count == 2
    assert sorted(first.recipient_ids) == sorted([ben, cy])
    async with core.engine.connect() as conn:
        raw = (
            await conn.execute(
                text("SELECT body_ciphertext FROM messages WHERE id = :id"),
                {"id": first.message_id},
            )
        ).scalar_one()
    assert b"secret" not in raw
    assert (await core.messages.load(first.message_id)).body == "hello secret world"
    assert await _count(core, "SELECT count(*) FROM deliveries WHERE status = 0") == 4


async def test_persist_twice_is_one_message_and_a_changed_body_is_refused(core: Core) -> None:
    ana, ben = await _people(core, 2)
    conv = await core.directory.create_conversation(
        kind=ConversationKind.DIRECT, members=[ana, ben]
    )
    once = await core.messages.persist(PersistMessageInput(conv, ana, "same", "hi"))
    again = await core.messages.persist(PersistMessageInput(conv, ana, "same", "hi"))
    assert again.message_id == once.message_id and again.seq == once.seq and not again.created

    with pytest.raises(DuplicateClientMessageId, match="already used"):
        await core.messages.persist(PersistMessageInput(conv, ana, "same", "something else"))
    assert await _count(core, "SELECT count(*) FROM messages") == 1
    assert (await core.messages.load(once.message_id)).body == "hi"


@pytest.mark.parametrize(
    ("mutate", "error", "match"),
    [
        (lambda c, s: (c, s, "x", ""), InvalidInput, "body is empty"),
        (lambda c, s: (c, s, "x", "a" * 20), InvalidInput, "over the limit"),
        (lambda c, s: ("not-a-uuid", s, "x", "hi"), InvalidInput, "conversation_id"),
        (
            lambda c, s: ("00000000-0000-0000-0000-000000000000", s, "x", "hi"),
            ConversationNotFound,
            "does not exist",
        ),
    ],
)
async def test_bad_sends_are_refused_and_write_nothing(core, mutate, error, match) -> None:
    ana, ben = await _people(core, 2)
    conv = await core.directory.create_conversation(
        kind=ConversationKind.DIRECT, members=[ana, ben]
    )
    cid, sender, cmid, body = mutate(conv, ana)
    with pytest.raises(error, match=match):
        await core.messages.persist(PersistMessageInput(cid, sender, cmid, body, max_body_bytes=10))
    assert await _count(core, "SELECT count(*) FROM messages") == 0
    assert await _count(core, "SELECT last_seq FROM conversations") == 0


async def test_outsider_cannot_send(core: Core) -> None:
    ana, ben, eve = await _people(core, 3)
    conv = await core.directory.create_conversation(
        kind=ConversationKind.DIRECT, members=[ana, ben]
    )
    with pytest.raises(NotAMember, match=eve):
        await core.messages.persist(PersistMessageInput(conv, eve, "x", "hi"))
    assert await _count(core, "SELECT count(*) FROM deliveries") == 0


async def test_tampered_body_fails_clearly(core: Core) -> None:
    ana, ben = await _people(core, 2)
    conv = await core.directory.create_conversation(
        kind=ConversationKind.DIRECT, members=[ana, ben]
    )
    sent = await core.messages.persist(PersistMessageInput(conv, ana, "t", "original"))
    async with core.engine.begin() as conn:
        await conn.execute(
            # Flip every bit of byte 20 (writing 0xff over it changed nothing when it
            # was 0xff already: one run in 256 failed).
            text(
                "UPDATE messages SET body_ciphertext = set_byte(body_ciphertext, 19,"
                " get_byte(body_ciphertext, 19) # 255) WHERE id = :id"
            ),
            {"id": sent.message_id},
        )
    with pytest.raises(DecryptionFailed, match="tampered"):
        await core.messages.load(sent.message_id)


async def test_watermark_read_moves_every_earlier_delivery_forward_only(core: Core) -> None:
    ana, ben, cy = await _people(core, 3)
    conv = await core.directory.create_conversation(
        kind=ConversationKind.GROUP, members=[ana, ben, cy]
    )
    sent = [
        await core.messages.persist(PersistMessageInput(conv, ana, f"m{i}", f"body {i}"))
        for i in range(5)
    ]
    read = await core.receipts.apply(ReceiptInput(ben, conv, ReceiptStatus.READ, up_to_seq=3))
    assert read.changed == 3
    assert [c.seq for c in read.changes] == [3, 2, 1]
    assert all(c.sender_id == ana and c.read_count == 1 for c in read.changes)

    late = await core.receipts.apply(ReceiptInput(ben, conv, ReceiptStatus.DELIVERED, up_to_seq=3))
    assert late.changed == 0
    again = await core.receipts.apply(ReceiptInput(ben, conv, ReceiptStatus.READ, up_to_seq=3))
    assert again.changed == 0

    states = await core.receipts.recipient_states(sent[0].message_id)
    assert states[ben].status == "read" and states[ben].delivered_at is not None
    assert states[cy].status == "sent"
    assert await _count(core, "SELECT read_seq FROM participants WHERE user_id = :u", u=ben) == 3
    assert (
        await _count(
            core, "SELECT count(*) FROM deliveries WHERE recipient_id = :u AND status = 2", u=ben
        )
        == 3
    )
    by_id = await core.receipts.apply(
        ReceiptInput(ben, conv, ReceiptStatus.DELIVERED, message_id=sent[4].message_id)
    )
    assert by_id.changed == 2 and by_id.up_to_seq == 5


async def test_receipts_for_messages_the_user_cannot_see(core: Core) -> None:
    ana, ben, eve = await _people(core, 3)
    conv = await core.directory.create_conversation(
        kind=ConversationKind.DIRECT, members=[ana, ben]
    )
    await core.messages.persist(PersistMessageInput(conv, ana, "m", "hi"))
    with pytest.raises(NotAMember):
        await core.receipts.apply(ReceiptInput(eve, conv, ReceiptStatus.READ, up_to_seq=1))
    with pytest.raises(MessageNotVisible, match="no message 9"):
        await core.receipts.apply(ReceiptInput(ben, conv, ReceiptStatus.READ, up_to_seq=9))
    with pytest.raises(MessageNotVisible):
        await core.receipts.apply(
            ReceiptInput(
                ben, conv, ReceiptStatus.READ, message_id="00000000-0000-0000-0000-000000000001"
            )
        )
    with pytest.raises(InvalidInput, match="exactly one"):
        await core.receipts.apply(ReceiptInput(ben, conv, ReceiptStatus.READ))
    assert await _count(core, "SELECT count(*) FROM deliveries WHERE status > 0") == 0


async def test_thousand_member_group_tells_its_lifecycle_only_milestones(core: Core) -> None:
    """Every member of a 1,000-member group reads: the lifecycle hears of it once."""
    people = await _people(core, 1001)
    sender, readers = people[0], people[1:]
    conv = await core.directory.create_conversation(kind=ConversationKind.CHANNEL, members=people)
    sent = await core.messages.persist(PersistMessageInput(conv, sender, "big", "to everyone"))
    assert sent.recipient_count == 1000 and sent.recipient_ids == []

    told = {"delivered": 0, "read": 0}
    for status in (ReceiptStatus.DELIVERED, ReceiptStatus.READ):
        for reader in readers:
            applied = await core.receipts.apply(ReceiptInput(reader, conv, status, up_to_seq=1))
            assert applied.changed == 1
            told[status] += sum(c.lifecycle_reacts(32) for c in applied.changes)
    assert told == {"delivered": 1, "read": 1}
    assert await _count(core, "SELECT count(*) FROM deliveries WHERE status = 2") == 1000


async def test_the_pool_recovers_once_postgresql_dropped_its_connections(
    core: Core, database_url: str
) -> None:
    """No pre-ping (it costs two round trips a checkout): a connection that died fails
    its first statement, which activities retry, and the pool starts afresh."""
    uid = await core.directory.create_user(NewUser(handle="ana"))
    assert await core.directory.user_exists(uid)  # the pool holds a connection now
    admin = await asyncpg.connect(**connect_args(database_url))
    try:
        killed = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    finally:
        await admin.close()
    assert killed >= 1

    with pytest.raises(DBAPIError):
        await core.directory.user_exists(uid)
    # SQLAlchemy saw the disconnect and dropped the pool's connections: the next call works.
    assert await core.directory.user_exists(uid)
