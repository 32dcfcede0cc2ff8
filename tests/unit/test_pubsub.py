"""BatchEmits' room moves and batches across processes, without a server or a channel."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from engineio import json as engineio_json
from socketio.async_pubsub_manager import AsyncPubSubManager

from missive.pubsub import BATCH_EMITS, BATCH_METHOD, ROOMS_METHOD, BatchEmits, Emit, RoomMove

pytestmark = pytest.mark.unit

BEN = "user:b1"
OLD, NEW = "conversation:old", "conversation:new"


class Channel(AsyncPubSubManager):
    """A pub/sub channel that yields ``incoming`` and keeps what is published."""

    def __init__(self) -> None:
        super().__init__(channel="test", write_only=True)
        self.incoming: list[Any] = []
        self.published: list[str] = []

    async def _publish(self, data: Any) -> None:
        self.published.append(self.json.dumps(data))

    async def _listen(self) -> AsyncIterator[Any]:
        for message in self.incoming:
            yield message


class Process(BatchEmits, Channel):
    """One process's manager over the channel, as the gateway and the workers build it."""

    def sockets(self, room: str) -> list[str]:
        return sorted(sid for sid, _ in self.get_participants("/", room))


async def received(process: Process) -> list[Any]:
    return [message async for message in process._listen()]


def with_ben(process: Process, *rooms: str) -> Process:
    for sid, eio in (("ben-phone", "e1"), ("ben-laptop", "e2")):
        for room in (BEN, *rooms):
            process.basic_enter_room(sid, "/", room, eio_sid=eio)
    return process


# --- move_rooms ---


async def test_a_move_happens_here_at_once_and_is_published_for_the_others() -> None:
    here = with_ben(Process(), OLD)
    await here.move_rooms([RoomMove(BEN, enter=(NEW,), leave=(OLD,))])
    assert here.sockets(NEW) == ["ben-laptop", "ben-phone"]
    assert here.sockets(OLD) == []
    assert [json.loads(m) for m in here.published] == [
        {"method": ROOMS_METHOD, "host_id": here.host_id, "moves": [[BEN, [NEW], [OLD]]]}
    ]


async def test_a_published_move_moves_another_process_sockets_and_is_not_passed_on() -> None:
    here, there = Process(), with_ben(Process(), OLD)
    await here.move_rooms([RoomMove(BEN, enter=(NEW,), leave=(OLD,))])
    there.incoming = [*here.published, here.published[0].encode()]  # text, then as bytes
    assert await received(there) == []
    assert there.sockets(NEW) == ["ben-laptop", "ben-phone"]
    assert there.sockets(OLD) == []


async def test_a_process_ignores_its_own_move_when_it_comes_back() -> None:
    here = with_ben(Process())
    await here.move_rooms([RoomMove(BEN, enter=(NEW,))])
    here.basic_leave_room("ben-phone", "/", NEW)  # a later leave, here
    here.incoming = list(here.published)
    assert await received(here) == []
    assert here.sockets(NEW) == ["ben-laptop"]  # the old move was not replayed


async def test_a_move_of_a_room_with_no_sockets_here_changes_nothing() -> None:
    there = with_ben(Process(), OLD)
    there.incoming = [
        json.dumps({"method": ROOMS_METHOD, "host_id": "h", "moves": [["user:cy", [NEW], [OLD]]]})
    ]
    assert await received(there) == []
    assert there.sockets(NEW) == [] and there.sockets(OLD) == ["ben-laptop", "ben-phone"]


async def test_many_moves_in_one_message_apply_in_order() -> None:
    there = with_ben(Process())
    there.incoming = [
        json.dumps(
            {
                "method": ROOMS_METHOD,
                "host_id": "h",
                "moves": [[BEN, [NEW], []], [BEN, [], [NEW]], [BEN, [OLD], []]],
            }
        )
    ]
    await received(there)
    assert there.sockets(NEW) == [] and there.sockets(OLD) == ["ben-laptop", "ben-phone"]


@pytest.mark.parametrize(
    "message",
    [
        '{"method": "' + ROOMS_METHOD + '", "host_id": ',  # cut short
        '{"method": "' + ROOMS_METHOD + '", "host_id": "h"}',  # no moves
        '{"method": "' + ROOMS_METHOD + '", "host_id": "h", "moves": [["a", "b"]]}',
        '{"method": "' + ROOMS_METHOD + '", "host_id": "h", "moves": 5}',
    ],
    ids=["truncated", "no-moves", "short-move", "not-a-list"],
)
async def test_a_malformed_move_is_logged_and_dropped_and_the_channel_goes_on(
    message: str, caplog: pytest.LogCaptureFixture
) -> None:
    there = with_ben(Process())
    after = json.dumps({"method": "emit", "event": "news", "data": [1], "host_id": "h"})
    there.incoming = [message, after]
    with caplog.at_level(logging.WARNING, logger="socketio"):
        assert await received(there) == [after]
    assert "Ignoring a malformed room move" in caplog.text
    assert there.sockets(NEW) == []


async def test_a_move_lands_between_the_emits_it_was_published_between() -> None:
    # One channel, in order: an emit published after a leave never reaches the leaver.
    there = with_ben(Process(), OLD)
    before = json.dumps({"method": "emit", "event": "a", "data": [1], "room": OLD})
    move = json.dumps({"method": ROOMS_METHOD, "host_id": "h", "moves": [[BEN, [], [OLD]]]})
    after = json.dumps({"method": "emit", "event": "b", "data": [2], "room": OLD})
    there.incoming = [before, move, after]
    seen: list[tuple[Any, list[str]]] = []
    async for message in there._listen():
        seen.append((json.loads(message)["event"], there.sockets(OLD)))
    assert seen == [("a", ["ben-laptop", "ben-phone"]), ("b", [])]


# --- emit_many, end to end through the channel ---


@pytest.mark.parametrize("codec", [json, engineio_json], ids=["json", "engineio-json"])
async def test_a_published_batch_is_expanded_by_another_process(codec: Any) -> None:
    # Arrival is recognised by the start of the text: it must be what the publisher wrote,
    # with the JSON module the manager has (a Socket.IO server gives it engineio's).
    here, there = Process(), Process()
    here.json = there.json = codec
    emits = [Emit("message:new", {"n": i}, f"conversation:{i}") for i in range(3)]
    await here.emit_many(emits)
    [batch] = here.published
    assert json.loads(batch)["method"] == BATCH_METHOD
    there.incoming = [batch]
    assert [(m["event"], m["data"], m["room"]) for m in await received(there)] == [
        ("message:new", [{"n": 0}], "conversation:0"),
        ("message:new", [{"n": 1}], "conversation:1"),
        ("message:new", [{"n": 2}], "conversation:2"),
    ]
    here.incoming = [batch]
    assert await received(here) == []  # delivered here when emitted


async def test_emits_are_published_in_batches_of_at_most_so_many() -> None:
    here = Process()
    await here.emit_many([Emit("e", i, "r") for i in range(BATCH_EMITS * 2 + 1)])
    sizes = [len(json.loads(m)["messages"]) for m in here.published]
    assert sizes == [BATCH_EMITS, BATCH_EMITS, 1]


async def test_no_emits_publish_nothing() -> None:
    here = Process()
    await here.emit_many([])
    assert here.published == []
