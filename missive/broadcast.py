"""Real-time events: what they carry and how they reach Socket.IO rooms from any process."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol

from missive.constants import (
    EVENT_CONVERSATION_MEMBER_ADDED,
    EVENT_CONVERSATION_MEMBER_REMOVED,
    EVENT_CONVERSATION_ROLE_CHANGED,
    EVENT_MESSAGE_DELETED,
    EVENT_MESSAGE_EDITED,
    EVENT_MESSAGE_NEW,
    EVENT_MESSAGE_RECEIPT,
    EVENT_MESSAGES_BATCH,
    EVENT_NOTIFICATION_NEW,
    EVENT_NOTIFICATION_UNREAD,
    conversation_room,
    user_room,
)
from missive.pubsub import BatchEmits, Emit, RoomMove
from missive.schemas import (
    DeleteMessageResult,
    EditMessageInput,
    EditMessageResult,
    MembershipAction,
    MembershipResult,
    ReceiptChange,
)
from missive.stored import StoredMessage


class Emitter(Protocol):
    """Anything that emits to Socket.IO rooms: an AsyncServer or a client manager."""

    async def emit(self, event: str, data: Any, *, room: str | None = None) -> Any:
        """Emits one event to a room."""


EMIT_CONCURRENCY = 32
"""Emits in flight at once where they cannot go as one batch."""


async def emit_many(emitter: Emitter, emits: Sequence[Emit]) -> None:
    """Emits every event to its room: as batches where the manager publishes them
    (missive.pubsub.BatchEmits, also behind a Socket.IO server), else one by one,
    EMIT_CONCURRENCY at a time."""
    if not emits:
        return
    target = getattr(emitter, "manager", emitter)  # an AsyncServer publishes through it
    if isinstance(target, BatchEmits):
        await target.emit_many(emits)
        return
    limit = asyncio.Semaphore(EMIT_CONCURRENCY)

    async def one(item: Emit) -> None:
        async with limit:
            await emitter.emit(item.event, item.data, room=item.room)

    await asyncio.gather(*(one(item) for item in emits))


class Broadcaster:
    """Sends Missive's events to rooms.

    Every event carries an ``event_id`` that is the same on every retry, so a
    client that saw it already drops the repeat (see the README's event contract).
    """

    def __init__(self, emitter: Emitter):
        self._emitter = emitter

    async def message_new(self, message: StoredMessage) -> None:
        """Announces a persisted message to its conversation's room."""
        await self._emitter.emit(
            EVENT_MESSAGE_NEW,
            message_new_event(message),
            room=conversation_room(message.conversation_id),
        )

    async def receipts(
        self, *, conversation_id: str, recipient_id: str, changes: list[ReceiptChange]
    ) -> None:
        """Tells each sender that one recipient's receipt moved forward."""
        await self.receipts_of([(conversation_id, recipient_id, changes)])

    async def receipts_of(
        self,
        readers: Sequence[tuple[str, str, Sequence[ReceiptChange]]],
        *,
        detail_max_recipients: int | None = None,
    ) -> int:
        """``receipts`` for many (conversation, recipient, changes) at once: one
        ``emit_many``, so a batch of receipts is a few publishes, not one per reader.

        With ``detail_max_recipients``, a message with more recipients than that gets
        one event for the whole batch instead of one per reader: ``recipient_id``
        null, the status the batch reached, the counts after it (a sender in a
        1,000-member group hears "read by 412", not 412 events).

        Returns:
            How many events were emitted.
        """
        emits: list[Emit] = []
        totals: dict[str, tuple[str, ReceiptChange]] = {}
        for conversation_id, recipient_id, changes in readers:
            for change in changes:
                if detail_max_recipients is None or change.recipient_count <= detail_max_recipients:
                    emits.append(
                        Emit(
                            EVENT_MESSAGE_RECEIPT,
                            receipt_event(conversation_id, recipient_id, change),
                            user_room(change.sender_id),
                        )
                    )
                    continue
                known = totals.get(change.message_id)
                if known is None or _later(change, known[1]):
                    totals[change.message_id] = (conversation_id, change)
        emits.extend(
            Emit(
                EVENT_MESSAGE_RECEIPT,
                receipt_counts_event(conversation_id, change),
                user_room(change.sender_id),
            )
            for conversation_id, change in totals.values()
        )
        await emit_many(self._emitter, emits)
        return len(emits)

    async def message_edited(self, edit: EditMessageInput, result: EditMessageResult) -> None:
        """Announces a message's new text to its conversation's room."""
        await self._emitter.emit(
            EVENT_MESSAGE_EDITED,
            message_edited_event(edit, result),
            room=conversation_room(result.conversation_id),
        )

    async def message_deleted(self, result: DeleteMessageResult) -> None:
        """Announces a deleted message (its tombstone) to its conversation's room."""
        await self._emitter.emit(
            EVENT_MESSAGE_DELETED,
            message_deleted_event(result),
            room=conversation_room(result.conversation_id),
        )

    async def membership(self, result: MembershipResult) -> None:
        """Moves the members' sockets into or out of the conversation's room, in every
        process, and tells the members.

        Added members' sockets enter the room first, so they hear
        ``conversation:member_added`` with everyone else. A removed member hears
        ``conversation:member_removed`` in their own room, then their sockets leave
        the room, then the others hear it: nothing emitted to the room after that
        reaches them (see missive.pubsub.BatchEmits.move_rooms).
        """
        room = conversation_room(result.conversation.conversation_id)
        if result.added:
            await self.move_rooms([RoomMove(user_room(u), enter=(room,)) for u in result.added])
            await self._emitter.emit(
                EVENT_CONVERSATION_MEMBER_ADDED, member_added_event(result), room=room
            )
        for user_id in result.removed:
            event = member_removed_event(result, user_id)
            await self._emitter.emit(
                EVENT_CONVERSATION_MEMBER_REMOVED, event, room=user_room(user_id)
            )
            await self.move_rooms([RoomMove(user_room(user_id), leave=(room,))])
            await self._emitter.emit(EVENT_CONVERSATION_MEMBER_REMOVED, event, room=room)
        if result.action is MembershipAction.SET_ROLE and result.role is not None:
            await self._emitter.emit(
                EVENT_CONVERSATION_ROLE_CHANGED, role_changed_event(result), room=room
            )

    async def move_rooms(self, moves: Sequence[RoomMove]) -> None:
        """Moves sockets between rooms in every process (only here without a pub/sub)."""
        target: Any = getattr(self._emitter, "manager", self._emitter)
        if isinstance(target, BatchEmits):
            await target.move_rooms(moves)
        elif hasattr(target, "get_participants"):  # one process, no pub/sub
            for move in moves:
                for sid, eio_sid in list(target.get_participants("/", move.of)):
                    for room in move.enter:
                        target.basic_enter_room(sid, "/", room, eio_sid=eio_sid)
                    for room in move.leave:
                        target.basic_leave_room(sid, "/", room)


def message_new_event(message: StoredMessage) -> dict[str, Any]:
    """The ``message:new`` payload; an e2e message adds its ``e2e_header`` untouched."""
    event = {
        "event_id": f"{EVENT_MESSAGE_NEW}:{message.message_id}",
        "message_id": message.message_id,
        "conversation_id": message.conversation_id,
        "seq": message.seq,
        "sender_id": message.sender_id,
        "client_message_id": message.client_message_id,
        "body": message.body,
        "created_at": message.created_at.isoformat(),
    }
    if message.e2e_header is not None:
        event["e2e_header"] = message.e2e_header
    return event


def receipt_event(conversation_id: str, recipient_id: str, change: ReceiptChange) -> dict[str, Any]:
    """The ``message:receipt`` payload, sent to the message's sender."""
    return {
        "event_id": f"{EVENT_MESSAGE_RECEIPT}:{change.message_id}:{recipient_id}:{change.status}",
        "message_id": change.message_id,
        "conversation_id": conversation_id,
        "seq": change.seq,
        "recipient_id": recipient_id,
        "status": str(change.status),
        "at": change.at.isoformat(),
        "delivered_count": change.delivered_count,
        "read_count": change.read_count,
        "recipient_count": change.recipient_count,
    }


def receipt_counts_event(conversation_id: str, change: ReceiptChange) -> dict[str, Any]:
    """The ``message:receipt`` of a large conversation: counts only, one per batch.

    Its event_id names the counts, so a repeat of the same state is dropped by the
    client and a newer state is not.
    """
    event = receipt_event(conversation_id, "", change)
    event["recipient_id"] = None
    event["event_id"] = (
        f"{EVENT_MESSAGE_RECEIPT}:{change.message_id}:{change.delivered_count}:{change.read_count}"
    )
    return event


def _later(change: ReceiptChange, than: ReceiptChange) -> bool:
    """Whether ``change`` shows a later state of the same message (counts only grow)."""
    return (change.read_count, change.delivered_count, change.status == "read") > (
        than.read_count,
        than.delivered_count,
        than.status == "read",
    )


def notification_new_event(
    *,
    notification_id: str,
    conversation_id: str,
    message_id: str,
    title: str,
    unread_count: int,
) -> dict[str, Any]:
    """The ``notification:new`` payload, sent to the recipient's user room (no message text)."""
    return {
        "event_id": f"{EVENT_NOTIFICATION_NEW}:{notification_id}",
        "notification_id": notification_id,
        "conversation_id": conversation_id,
        "message_id": message_id,
        "title": title,
        "unread_count": unread_count,
    }


def notification_unread_event(
    *, user_id: str, conversation_id: str, up_to_seq: int, unread_count: int
) -> dict[str, Any]:
    """The ``notification:unread`` payload: the reader's new unread count after a read."""
    return {
        "event_id": f"{EVENT_NOTIFICATION_UNREAD}:{user_id}:{conversation_id}:{up_to_seq}",
        "conversation_id": conversation_id,
        "unread_count": unread_count,
    }


def history_event(message: StoredMessage) -> dict[str, Any]:
    """A message as ``message:sync`` returns it: ``message:new``'s fields and its state
    now (``history_json``), its times written out."""
    event = history_json(
        message_id=message.message_id,
        conversation_id=message.conversation_id,
        seq=message.seq,
        sender_id=message.sender_id,
        client_message_id=message.client_message_id,
        body=message.body,
        created_at=message.created_at,
        edited_at=message.edited_at,
        deleted_at=message.deleted_at,
        e2e_header=message.e2e_header,
    )
    for name in ("created_at", "edited_at", "deleted_at"):
        if event[name] is not None:
            event[name] = event[name].isoformat()
    return event


def history_json(
    *,
    message_id: str,
    conversation_id: str,
    seq: int,
    sender_id: str,
    client_message_id: str,
    body: str | None,
    created_at: datetime,
    edited_at: datetime | None,
    deleted_at: datetime | None,
    e2e_header: object | None,
) -> dict[str, Any]:
    """``history_event`` from a row's fields, for orjson: a page read straight from the
    database.

    ``message:new``'s fields and the message's state now: an edited one carries its
    current text and ``edited_at``; a deleted one is a tombstone: ``body`` null, no
    ``e2e_header``, ``deleted_at`` set. The times stay datetimes (orjson writes them as
    ``isoformat()`` does, in a quarter of the time) and the header may be the row's
    JSON text as an ``orjson.Fragment`` (relayed without parsing it).
    """
    deleted = deleted_at is not None
    event: dict[str, Any] = {
        "event_id": f"{EVENT_MESSAGE_NEW}:{message_id}",
        "message_id": message_id,
        "conversation_id": conversation_id,
        "seq": seq,
        "sender_id": sender_id,
        "client_message_id": client_message_id,
        "body": None if deleted else body,
        "created_at": created_at,
        "edited_at": edited_at,
        "deleted_at": deleted_at,
    }
    if e2e_header is not None and not deleted:
        event["e2e_header"] = e2e_header
    return event


def message_edited_event(edit: EditMessageInput, result: EditMessageResult) -> dict[str, Any]:
    """The ``message:edited`` payload; its event_id names the edit (the same on every retry)."""
    edited_at = result.edited_at.isoformat()
    event: dict[str, Any] = {
        "event_id": f"{EVENT_MESSAGE_EDITED}:{result.message_id}:{edited_at}",
        "message_id": result.message_id,
        "conversation_id": result.conversation_id,
        "seq": result.seq,
        "sender_id": edit.editor_id,
        "body": edit.body,
        "edited_at": edited_at,
    }
    if edit.e2e_header is not None:
        event["e2e_header"] = edit.e2e_header
    return event


def message_deleted_event(result: DeleteMessageResult) -> dict[str, Any]:
    """The ``message:deleted`` payload (a message is deleted once: one event id)."""
    return {
        "event_id": f"{EVENT_MESSAGE_DELETED}:{result.message_id}",
        "message_id": result.message_id,
        "conversation_id": result.conversation_id,
        "seq": result.seq,
        "deleted_at": result.deleted_at.isoformat(),
    }


def conversation_json(result: MembershipResult) -> dict[str, Any]:
    """The conversation a membership change left, as events and acks carry it."""
    c = result.conversation
    return {
        "conversation_id": c.conversation_id,
        "kind": c.kind,
        "title": c.title,
        "encryption_mode": c.encryption_mode,
        "member_count": c.member_count,
        "last_seq": c.last_seq,
    }


def member_added_event(result: MembershipResult) -> dict[str, Any]:
    """``conversation:member_added``: who joined, with the conversation (new members learn
    it from this event); ``seq`` is the conversation's last seq then."""
    cid = result.conversation.conversation_id
    return {
        "event_id": f"{EVENT_CONVERSATION_MEMBER_ADDED}:{cid}:{result.changed_at.isoformat()}",
        "conversation_id": cid,
        "seq": result.conversation.last_seq,
        "user_ids": list(result.added),
        "added_by": result.actor_id,
        "created": result.created,
        "conversation": conversation_json(result),
    }


def member_removed_event(result: MembershipResult, user_id: str) -> dict[str, Any]:
    """``conversation:member_removed``: who is no longer a member, and whether they left."""
    cid = result.conversation.conversation_id
    return {
        "event_id": (
            f"{EVENT_CONVERSATION_MEMBER_REMOVED}:{cid}:{user_id}:{result.changed_at.isoformat()}"
        ),
        "conversation_id": cid,
        "seq": result.conversation.last_seq,
        "user_id": user_id,
        "removed_by": result.actor_id,
        "left": result.action is MembershipAction.LEAVE,
        "member_count": result.conversation.member_count,
    }


def role_changed_event(result: MembershipResult) -> dict[str, Any]:
    """``conversation:role_changed``: a member's new role."""
    cid = result.conversation.conversation_id
    return {
        "event_id": f"{EVENT_CONVERSATION_ROLE_CHANGED}:{cid}:{result.changed_at.isoformat()}",
        "conversation_id": cid,
        "seq": result.conversation.last_seq,
        "user_id": result.member_id,
        "role": result.role,
        "changed_by": result.actor_id,
    }


def batch_emits(
    batch_id: str, messages: Sequence[StoredMessage], *, live_events: int
) -> list[Emit]:
    """A batch chunk's stored messages as events: a ``message:new`` each in a conversation
    that got at most ``live_events`` of them, else one compact ``messages:batch``
    ``{"event_id", "batch_id", "conversation_id", "from_seq", "to_seq", "count"}`` telling
    its clients to sync that range (each live event is a publish: per-message events for
    an import cost half its speed)."""
    by_conv: dict[str, list[StoredMessage]] = {}
    for message in messages:
        by_conv.setdefault(message.conversation_id, []).append(message)
    emits: list[Emit] = []
    for cid, group in by_conv.items():
        room = conversation_room(cid)
        if len(group) <= live_events:
            emits.extend(Emit(EVENT_MESSAGE_NEW, message_new_event(m), room) for m in group)
            continue
        first, last = min(m.seq for m in group), max(m.seq for m in group)
        compact = {
            "event_id": f"{EVENT_MESSAGES_BATCH}:{batch_id}:{cid}:{first}",
            "batch_id": batch_id,
            "conversation_id": cid,
            "from_seq": first,
            "to_seq": last,
            "count": len(group),
        }
        emits.append(Emit(EVENT_MESSAGES_BATCH, compact, room))
    return emits
