"""Notification row ids: the same UUID5 as ever, computed without uuid's objects."""

from __future__ import annotations

import random
import uuid

import pytest

from missive.notify.log import notification_id
from missive.notify.log._shared import NOTIFICATION_NAMESPACE
from missive.schemas import Channel


def _reference(recipient_id: str, channel: Channel | str, dedupe_key: str) -> str:
    """What notification_id always returned: rows written before must keep matching."""
    name = f"{uuid.UUID(recipient_id)}:{Channel(channel).value}:{dedupe_key}"
    return str(uuid.uuid5(NOTIFICATION_NAMESPACE, name))


def test_ids_match_uuid5_for_every_channel_and_key() -> None:
    rng = random.Random(7)
    for _ in range(500):
        recipient = str(uuid.UUID(int=rng.getrandbits(128)))
        channel = rng.choice(list(Channel))
        key = rng.choice(
            [f"message:{uuid.UUID(int=rng.getrandbits(128))}", "digest:é😀", "", "a:b:c"]
        )
        assert notification_id(recipient, channel, key) == _reference(recipient, channel, key)
        assert notification_id(recipient, channel.value, key) == _reference(recipient, channel, key)


@pytest.mark.parametrize(
    "spelling",
    [
        "5D0C7A52-8F0E-4F4E-9A57-1F4F2B0C6E31",
        "5d0c7a528f0e4f4e9a571f4f2b0c6e31",
        "{5d0c7a52-8f0e-4f4e-9a57-1f4f2b0c6e31}",
        "urn:uuid:5d0c7a52-8f0e-4f4e-9a57-1f4f2b0c6e31",
    ],
)
def test_any_spelling_of_a_recipient_gets_the_canonical_id(spelling: str) -> None:
    canonical = "5d0c7a52-8f0e-4f4e-9a57-1f4f2b0c6e31"
    assert notification_id(spelling, Channel.PUSH, "k") == _reference(canonical, Channel.PUSH, "k")


def test_a_recipient_that_is_not_a_uuid_or_an_unknown_channel_is_refused() -> None:
    with pytest.raises(ValueError):
        notification_id("not-a-uuid", Channel.PUSH, "k")
    with pytest.raises(ValueError):
        notification_id(str(uuid.uuid4()), "carrier-pigeon", "k")
