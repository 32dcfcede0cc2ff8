"""BatchEmits expands batches on arrival, whichever manager it sits on (Redis hands bytes)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from socketio.async_pubsub_manager import AsyncPubSubManager

from missive.pubsub import BATCH_METHOD, BatchEmits


class _Source(AsyncPubSubManager):
    """A manager whose channel yields a fixed list of raw messages."""

    def __init__(self, messages: list[Any]) -> None:
        super().__init__(channel="test", write_only=True)
        self.raw = messages

    async def _listen(self) -> AsyncIterator[Any]:
        for message in self.raw:
            yield message


class _Batching(BatchEmits, _Source):
    pass


def _emit(event_id: str, host: str) -> dict[str, Any]:
    return {"method": "emit", "event": "news", "data": [{"event_id": event_id}], "host_id": host}


async def test_batches_are_expanded_and_other_messages_pass_through() -> None:
    manager = _Batching([])
    own, other = manager.host_id, "another-host"
    plain = json.dumps(_emit("plain", other))
    manager.raw = [
        json.dumps(
            {"method": BATCH_METHOD, "host_id": other, "messages": [_emit("a", other)]}
        ).encode(),  # as Redis hands it: bytes
        plain,
        json.dumps(
            {"method": BATCH_METHOD, "host_id": other, "messages": [_emit("b", other)]}
        ),  # as PostgreSQL hands it: text
        # This process's own batch was delivered here when it was emitted.
        json.dumps({"method": BATCH_METHOD, "host_id": own, "messages": [_emit("c", own)]}),
        '{"method": "' + BATCH_METHOD + '", "host_id": ',  # cut short: dropped, logged
    ]

    received = [message async for message in manager._listen()]

    assert received == [_emit("a", other), plain, _emit("b", other)]


async def test_batches_are_known_whatever_separators_the_encoder_used() -> None:
    manager = _Batching([])
    own, other = manager.host_id, "another-host"
    compact = (",", ":")
    manager.raw = [
        json.dumps(
            {"method": BATCH_METHOD, "host_id": other, "messages": [_emit("a", other)]},
            separators=compact,
        ),
        json.dumps(
            {"method": BATCH_METHOD, "host_id": own, "messages": [_emit("b", own)]},
            separators=compact,
        ),
        '{ "method" : "' + BATCH_METHOD + '" , "host_id" : "' + other + '", "messages": []}',
    ]

    received = [message async for message in manager._listen()]

    assert received == [_emit("a", other)]
