"""Real-time events: each payload and its event id, and the order a membership change emits in."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
import socketio

from missive.broadcast import (
    Broadcaster,
    history_event,
    history_json,
    member_added_event,
    member_removed_event,
    message_deleted_event,
    message_edited_event,
    message_new_event,
    receipt_counts_event,
    receipt_event,
    role_changed_event,
)
from missive.pubsub import RoomMove
from missive.schemas import (
    ConversationSummary,
    DeleteMessageResult,
    EditMessageInput,
    EditMessageResult,
    MembershipAction,
    MembershipResult,
    ReceiptChange,
    ReceiptStatus,
)
from missive.stored import StoredMessage

pytestmark = pytest.mark.unit

CID = "c0000000-0000-4000-8000-000000000001"
MID = "m0000000-0000-4000-8000-000000000001"
ANA = "a0000000-0000-4000-8000-000000000001"
BEN = "b0000000-0000-4000-8000-000000000001"
CY = "d0000000-0000-4000-8000-000000000001"
AT = datetime(2026, 1, 10, 12, 0, tzinfo=UTC)
HEADER = {"alg": "x25519-aes256gcm", "key_id": "k-1"}
ROOM = f"conversation:{CID}"

MESSAGE = StoredMessage(
    message_id=MID,
    conversation_id=CID,
    seq=7,
    sender_id=ANA,
    client_message_id="c-7",
    body="hello",
    created_at=AT,
    edited_at=None,
    deleted_at=None,
)
SUMMARY = ConversationSummary(
    conversation_id=CID,
    kind="group",
    title="ops",
    encryption_mode="standard",
    member_count=3,
    last_seq=41,
)


def membership(action: MembershipAction, **fields: Any) -> MembershipResult:
    return MembershipResult(
        action=action, conversation=SUMMARY, changed=True, changed_at=AT, actor_id=ANA, **fields
    )


def change(**fields: Any) -> ReceiptChange:
    values: dict[str, Any] = {
        "message_id": MID,
        "sender_id": ANA,
        "client_message_id": "c-7",
        "seq": 7,
        "status": ReceiptStatus.READ,
        "at": AT,
        "recipient_count": 2,
        "delivered_count": 2,
        "read_count": 1,
        **fields,
    }
    return ReceiptChange(**values)


# --- message events ---


def test_message_new() -> None:
    assert message_new_event(MESSAGE) == {
        "event_id": f"message:new:{MID}",
        "message_id": MID,
        "conversation_id": CID,
        "seq": 7,
        "sender_id": ANA,
        "client_message_id": "c-7",
        "body": "hello",
        "created_at": "2026-01-10T12:00:00+00:00",
    }
    e2e = message_new_event(replace(MESSAGE, e2e_header=HEADER))
    assert e2e["e2e_header"] == HEADER


def test_history_of_a_plain_message_adds_null_edit_and_delete_times() -> None:
    assert history_event(MESSAGE) == {
        **message_new_event(MESSAGE),
        "edited_at": None,
        "deleted_at": None,
    }


def test_history_of_an_edited_message_has_its_current_text_and_edit_time() -> None:
    edited = replace(MESSAGE, body="hello again", edited_at=AT + timedelta(minutes=1))
    event = history_event(edited)
    assert (event["body"], event["edited_at"], event["deleted_at"]) == (
        "hello again",
        "2026-01-10T12:01:00+00:00",
        None,
    )
    # The event id is the message's: a client that has it replaces it, not adds it.
    assert event["event_id"] == f"message:new:{MID}"


def test_history_of_a_deleted_message_is_a_tombstone() -> None:
    deleted = replace(
        MESSAGE,
        e2e_header=HEADER,
        edited_at=AT + timedelta(minutes=1),
        deleted_at=AT + timedelta(minutes=2),
    )
    event = history_event(deleted)
    assert event["body"] is None
    assert "e2e_header" not in event
    assert event["deleted_at"] == "2026-01-10T12:02:00+00:00"
    assert event["edited_at"] == "2026-01-10T12:01:00+00:00"
    assert (event["seq"], event["sender_id"]) == (7, ANA)  # the history stays gap-free


def test_history_of_a_live_e2e_message_keeps_its_header() -> None:
    assert history_event(replace(MESSAGE, e2e_header=HEADER))["e2e_header"] == HEADER


def test_message_edited_names_the_edit_by_its_time() -> None:
    edit = EditMessageInput(conversation_id=CID, message_id=MID, editor_id=ANA, body="fixed")
    result = EditMessageResult(message_id=MID, conversation_id=CID, seq=7, edited_at=AT)
    assert message_edited_event(edit, result) == {
        "event_id": f"message:edited:{MID}:2026-01-10T12:00:00+00:00",
        "message_id": MID,
        "conversation_id": CID,
        "seq": 7,
        "sender_id": ANA,
        "body": "fixed",
        "edited_at": "2026-01-10T12:00:00+00:00",
    }
    later = replace(result, edited_at=AT + timedelta(seconds=1))
    assert (
        message_edited_event(edit, later)["event_id"]
        != message_edited_event(edit, result)["event_id"]
    )
    # A retry of the same edit (changed False) announces the same event.
    assert message_edited_event(edit, replace(result, changed=False)) == message_edited_event(
        edit, result
    )
    e2e = message_edited_event(replace(edit, e2e_header=HEADER), result)
    assert e2e["e2e_header"] == HEADER


def test_message_deleted_has_one_event_id_per_message() -> None:
    result = DeleteMessageResult(message_id=MID, conversation_id=CID, seq=7, deleted_at=AT)
    assert message_deleted_event(result) == {
        "event_id": f"message:deleted:{MID}",
        "message_id": MID,
        "conversation_id": CID,
        "seq": 7,
        "deleted_at": "2026-01-10T12:00:00+00:00",
    }
    again = replace(result, deleted_at=AT + timedelta(hours=1), changed=False)
    assert message_deleted_event(again)["event_id"] == f"message:deleted:{MID}"


# --- receipts ---


def test_a_receipt_names_message_reader_and_status() -> None:
    assert receipt_event(CID, BEN, change()) == {
        "event_id": f"message:receipt:{MID}:{BEN}:read",
        "message_id": MID,
        "conversation_id": CID,
        "seq": 7,
        "recipient_id": BEN,
        "status": "read",
        "at": "2026-01-10T12:00:00+00:00",
        "delivered_count": 2,
        "read_count": 1,
        "recipient_count": 2,
    }
    delivered = receipt_event(CID, BEN, change(status=ReceiptStatus.DELIVERED))
    assert delivered["event_id"] == f"message:receipt:{MID}:{BEN}:delivered"


def test_receipt_counts_are_named_by_the_counts_without_a_reader() -> None:
    event = receipt_counts_event(
        CID, change(recipient_count=900, delivered_count=600, read_count=412)
    )
    assert event == {
        "event_id": f"message:receipt:{MID}:600:412",
        "message_id": MID,
        "conversation_id": CID,
        "seq": 7,
        "recipient_id": None,
        "status": "read",
        "at": "2026-01-10T12:00:00+00:00",
        "delivered_count": 600,
        "read_count": 412,
        "recipient_count": 900,
    }
    newer = receipt_counts_event(CID, change(delivered_count=600, read_count=413))
    assert newer["event_id"] != event["event_id"]


# --- membership ---


def test_member_added() -> None:
    result = membership(MembershipAction.ADD, added=[BEN, CY], already_members=[ANA])
    assert member_added_event(result) == {
        "event_id": f"conversation:member_added:{CID}:2026-01-10T12:00:00+00:00",
        "conversation_id": CID,
        "seq": 41,
        "user_ids": [BEN, CY],
        "added_by": ANA,
        "created": False,
        "conversation": {
            "conversation_id": CID,
            "kind": "group",
            "title": "ops",
            "encryption_mode": "standard",
            "member_count": 3,
            "last_seq": 41,
        },
    }
    created = member_added_event(membership(MembershipAction.CREATE, added=[ANA], created=True))
    assert created["created"] is True


def test_member_removed_says_whether_they_left() -> None:
    removed = member_removed_event(membership(MembershipAction.REMOVE, removed=[BEN]), BEN)
    assert removed == {
        "event_id": f"conversation:member_removed:{CID}:{BEN}:2026-01-10T12:00:00+00:00",
        "conversation_id": CID,
        "seq": 41,
        "user_id": BEN,
        "removed_by": ANA,
        "left": False,
        "member_count": 3,
    }
    left = member_removed_event(membership(MembershipAction.LEAVE, removed=[ANA]), ANA)
    assert left["left"] is True and left["removed_by"] == ANA


def test_role_changed() -> None:
    result = membership(MembershipAction.SET_ROLE, role="admin", member_id=BEN)
    assert role_changed_event(result) == {
        "event_id": f"conversation:role_changed:{CID}:2026-01-10T12:00:00+00:00",
        "conversation_id": CID,
        "seq": 41,
        "user_id": BEN,
        "role": "admin",
        "changed_by": ANA,
    }


def test_a_back_end_actor_is_null() -> None:
    result = replace(membership(MembershipAction.ADD, added=[BEN]), actor_id=None)
    assert member_added_event(result)["added_by"] is None


# --- the Broadcaster, over a recording emitter ---


class Recorder:
    """An emitter that records every emit and room move, in order."""

    def __init__(self) -> None:
        self.log: list[tuple[Any, ...]] = []
        self.manager = self

    async def emit(self, event: str, data: Any, *, room: str | None = None) -> None:
        self.log.append(("emit", event, room, data))


class OneProcess(socketio.AsyncManager):
    """A real single-process manager (no pub/sub) that also records emits."""

    def __init__(self) -> None:
        super().__init__()
        self.log: list[tuple[Any, ...]] = []

    async def emit(self, event: str, data: Any, *, room: str | None = None, **_: Any) -> None:
        members = sorted(sid for sid, _eio in self.get_participants("/", room))
        self.log.append((event, room, members))


async def test_an_added_member_is_in_the_room_before_the_room_hears_of_it() -> None:
    manager = OneProcess()
    manager.basic_enter_room("ben-phone", "/", f"user:{BEN}", eio_sid="e1")
    manager.basic_enter_room("ana-laptop", "/", ROOM, eio_sid="e2")
    await Broadcaster(manager).membership(membership(MembershipAction.ADD, added=[BEN]))
    assert manager.log == [("conversation:member_added", ROOM, ["ana-laptop", "ben-phone"])]


async def test_a_removed_member_hears_it_alone_then_leaves_before_the_room_hears_it() -> None:
    manager = OneProcess()
    manager.basic_enter_room("ben-phone", "/", f"user:{BEN}", eio_sid="e1")
    manager.basic_enter_room("ben-phone", "/", ROOM, eio_sid="e1")
    manager.basic_enter_room("ana-laptop", "/", ROOM, eio_sid="e2")
    await Broadcaster(manager).membership(membership(MembershipAction.REMOVE, removed=[BEN]))
    assert manager.log == [
        ("conversation:member_removed", f"user:{BEN}", ["ben-phone"]),
        ("conversation:member_removed", ROOM, ["ana-laptop"]),
    ]


async def test_a_role_change_is_announced_only_with_a_role() -> None:
    recorder = Recorder()
    broadcaster = Broadcaster(recorder)
    await broadcaster.membership(membership(MembershipAction.SET_ROLE, role="owner", member_id=BEN))
    await broadcaster.membership(membership(MembershipAction.SET_ROLE, role=None, member_id=BEN))
    assert [(e[1], e[2]) for e in recorder.log] == [("conversation:role_changed", ROOM)]


async def test_message_events_go_to_the_conversation_room() -> None:
    recorder = Recorder()
    broadcaster = Broadcaster(recorder)
    edit = EditMessageInput(conversation_id=CID, message_id=MID, editor_id=ANA, body="x")
    edited = EditMessageResult(message_id=MID, conversation_id=CID, seq=7, edited_at=AT)
    deleted = DeleteMessageResult(message_id=MID, conversation_id=CID, seq=7, deleted_at=AT)
    await broadcaster.message_new(MESSAGE)
    await broadcaster.message_edited(edit, edited)
    await broadcaster.message_deleted(deleted)
    assert [(e[1], e[2]) for e in recorder.log] == [
        ("message:new", ROOM),
        ("message:edited", ROOM),
        ("message:deleted", ROOM),
    ]


async def test_receipts_go_to_each_sender_and_large_messages_get_one_count_event() -> None:
    recorder = Recorder()
    small = change(message_id="small", sender_id=ANA, recipient_count=2)
    big = {"message_id": "big", "sender_id": CY, "recipient_count": 50}
    readers = [
        (CID, BEN, [small, change(**big, delivered_count=10, read_count=3)]),
        (CID, "reader-2", [change(**big, delivered_count=12, read_count=5)]),
        (CID, "reader-3", [change(**big, delivered_count=11, read_count=4)]),  # arrived late
    ]
    emitted = await Broadcaster(recorder).receipts_of(readers, detail_max_recipients=2)
    assert emitted == 2
    [(_, event_a, room_a, detail), (_, event_b, room_b, counts)] = recorder.log
    assert (event_a, room_a, detail["recipient_id"]) == ("message:receipt", f"user:{ANA}", BEN)
    assert (event_b, room_b) == ("message:receipt", f"user:{CY}")
    # The latest state of the batch, not the last one listed.
    assert (counts["delivered_count"], counts["read_count"], counts["recipient_id"]) == (
        12,
        5,
        None,
    )


async def test_without_a_detail_limit_every_reader_is_told() -> None:
    recorder = Recorder()
    readers = [(CID, f"reader-{i}", [change(recipient_count=5_000)]) for i in range(3)]
    assert await Broadcaster(recorder).receipts_of(readers) == 3
    assert [e[3]["recipient_id"] for e in recorder.log] == ["reader-0", "reader-1", "reader-2"]


async def test_no_receipts_no_emits() -> None:
    recorder = Recorder()
    assert await Broadcaster(recorder).receipts_of([]) == 0
    assert recorder.log == []


async def test_room_moves_without_a_pubsub_move_this_process_sockets() -> None:
    manager = OneProcess()
    manager.basic_enter_room("s1", "/", f"user:{BEN}", eio_sid="e1")
    manager.basic_enter_room("s1", "/", "conversation:old", eio_sid="e1")
    await Broadcaster(manager).move_rooms(
        [RoomMove(f"user:{BEN}", enter=("conversation:new",), leave=("conversation:old",))]
    )
    assert [sid for sid, _ in manager.get_participants("/", "conversation:new")] == ["s1"]
    assert list(manager.get_participants("/", "conversation:old")) == []


def test_a_history_page_encodes_exactly_as_the_event_does() -> None:
    """The page path hands orjson datetimes and the header's stored JSON text; what it
    writes must be what ``history_event`` (isoformat) gives, in every state."""
    states = [
        MESSAGE,
        replace(MESSAGE, created_at=AT.replace(microsecond=123456)),
        replace(MESSAGE, e2e_header=HEADER, edited_at=AT + timedelta(seconds=1, microseconds=5)),
        replace(MESSAGE, e2e_header=HEADER, deleted_at=AT + timedelta(minutes=2)),
    ]
    for message in states:
        header = message.e2e_header
        fields = {
            name: getattr(message, name)
            for name in (
                "message_id", "conversation_id", "seq", "sender_id", "client_message_id",
                "body", "created_at", "edited_at", "deleted_at",
            )
        }  # fmt: skip
        raw = history_json(
            **fields,
            e2e_header=orjson.Fragment(json.dumps(header)) if header is not None else None,
        )
        assert orjson.loads(orjson.dumps(raw)) == history_event(message)
