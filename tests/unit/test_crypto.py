"""Envelope encryption and the payload codec, without servers."""

from __future__ import annotations

import os
import re
import uuid

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload

from missive.config import parse_keyring
from missive.crypto import NONCE_BYTES, MessageCipher, StagingCipher
from missive.errors import DecryptionFailed, InvalidInput, KeyVersionMissing
from runtime.codec import EncryptionCodec, PayloadDecryptionError

pytestmark = pytest.mark.unit


def _ids() -> tuple[str, str]:
    return str(uuid.uuid4()), str(uuid.uuid4())


def test_body_round_trips_and_is_bound_to_its_message() -> None:
    cipher = MessageCipher({1: os.urandom(32)})
    conv, msg = _ids()
    key = cipher.data_key(conv, 1, cipher.new_data_key(conv, 1))
    sealed = cipher.encrypt_body(key, conversation_id=conv, message_id=msg, body=b"hi there")
    assert b"hi there" not in sealed
    assert cipher.decrypt_body(key, conversation_id=conv, message_id=msg, ciphertext=sealed) == (
        b"hi there"
    )
    with pytest.raises(DecryptionFailed, match="tampered"):
        cipher.decrypt_body(
            key, conversation_id=conv, message_id=str(uuid.uuid4()), ciphertext=sealed
        )
    flipped = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(DecryptionFailed):
        cipher.decrypt_body(key, conversation_id=conv, message_id=msg, ciphertext=flipped)
    with pytest.raises(DecryptionFailed, match="truncated"):
        cipher.decrypt_body(key, conversation_id=conv, message_id=msg, ciphertext=sealed[:10])


def test_data_keys_unwrap_under_an_older_master_and_name_a_missing_one() -> None:
    old, new = os.urandom(32), os.urandom(32)
    conv, _ = _ids()
    wrapped = MessageCipher({1: old}).new_data_key(conv, 1)
    both = MessageCipher({1: old, 2: new})
    assert both.current_version == 2
    both.data_key(conv, 1, wrapped)
    with pytest.raises(KeyVersionMissing, match="master key version 1"):
        MessageCipher({2: new}).data_key(conv, 1, wrapped)
    with pytest.raises(DecryptionFailed):
        both.data_key(str(uuid.uuid4()), 1, wrapped)


def test_keyring_errors_name_the_setting() -> None:
    with pytest.raises(InvalidInput, match="MASTER_KEYS: key version 1 must be 32 bytes"):
        parse_keyring("1:AAAA", name="MASTER_KEYS")
    with pytest.raises(InvalidInput, match="not '<version>:<base64 key>'"):
        parse_keyring("nonsense", name="MASTER_KEYS")
    with pytest.raises(InvalidInput, match="at least one master key"):
        MessageCipher({})


async def test_codec_round_trips_hides_data_and_rotates() -> None:
    k1, k2 = os.urandom(32), os.urandom(32)
    payload = Payload(metadata={"encoding": b"json/plain"}, data=b'{"body": "secret words"}')
    old = EncryptionCodec({1: k1})
    [encoded] = await old.encode([payload])
    assert b"secret" not in encoded.data and encoded.metadata["encryption-key-id"] == b"1"
    rotated = EncryptionCodec({1: k1, 2: k2})
    assert await rotated.decode([encoded]) == [payload]
    [newer] = await rotated.encode([payload])
    assert newer.metadata["encryption-key-id"] == b"2"
    with pytest.raises(PayloadDecryptionError, match="unknown codec key id '2'"):
        await old.decode([newer])


def exactly(message: str) -> str:
    """A ``match`` pattern for exactly this message."""
    return f"^{re.escape(message)}$"


def test_the_current_master_is_the_highest_unless_named() -> None:
    keys = {1: os.urandom(32), 3: os.urandom(32), 2: os.urandom(32)}
    assert MessageCipher(keys).current_version == 3
    assert MessageCipher(keys, current_version=2).current_version == 2
    assert MessageCipher(keys).master_versions == [1, 2, 3]
    with pytest.raises(InvalidInput, match=exactly("MASTER_KEY_VERSION 4 is not in MASTER_KEYS")):
        MessageCipher(keys, current_version=4)


def test_a_data_key_is_bound_to_its_conversation_and_version() -> None:
    cipher = MessageCipher({1: os.urandom(32)})
    conv, _ = _ids()
    wrapped = cipher.new_data_key(conv, 1)
    assert wrapped.master_key_version == 1
    assert len(wrapped.wrapped) == NONCE_BYTES + 32 + 16  # nonce, key, tag
    with pytest.raises(
        DecryptionFailed, match=exactly(f"data key 2 of conversation {conv} does not authenticate")
    ):
        cipher.data_key(conv, 2, wrapped)


def test_an_unwrapped_key_is_cached_and_a_fresh_cipher_opens_the_same_bodies() -> None:
    master = os.urandom(32)
    cipher = MessageCipher({1: master})
    conv, msg = _ids()
    wrapped = cipher.new_data_key(conv, 1)
    key = cipher.data_key(conv, 1, wrapped)
    assert cipher.data_key(conv, 1, wrapped) is key
    sealed = cipher.encrypt_body(key, conversation_id=conv, message_id=msg, body=b"x")
    again = MessageCipher({1: master})
    other_key = again.data_key(conv, 1, wrapped)
    assert again.decrypt_body(other_key, conversation_id=conv, message_id=msg, ciphertext=sealed)
    # Two encryptions of one body differ (a fresh nonce each time).
    assert sealed != cipher.encrypt_body(key, conversation_id=conv, message_id=msg, body=b"x")


def test_a_body_is_bound_to_its_conversation_too() -> None:
    cipher = MessageCipher({1: os.urandom(32)})
    conv, msg = _ids()
    key = cipher.data_key(conv, 1, cipher.new_data_key(conv, 1))
    sealed = cipher.encrypt_body(key, conversation_id=conv, message_id=msg, body=b"hi")
    with pytest.raises(
        DecryptionFailed,
        match=exactly(f"body of message {msg} failed authentication (tampered or wrong key)"),
    ):
        cipher.decrypt_body(
            key, conversation_id=str(uuid.uuid4()), message_id=msg, ciphertext=sealed
        )


def test_the_shortest_body_that_can_open_is_nonce_and_tag() -> None:
    cipher = MessageCipher({1: os.urandom(32)})
    conv, msg = _ids()
    key = cipher.data_key(conv, 1, cipher.new_data_key(conv, 1))
    empty = cipher.encrypt_body(key, conversation_id=conv, message_id=msg, body=b"")
    assert len(empty) == NONCE_BYTES + 16
    assert cipher.decrypt_body(key, conversation_id=conv, message_id=msg, ciphertext=empty) == b""
    with pytest.raises(DecryptionFailed, match=exactly(f"body of message {msg} is truncated")):
        cipher.decrypt_body(key, conversation_id=conv, message_id=msg, ciphertext=empty[:-1])


def test_rewrap_moves_a_data_key_to_the_current_master() -> None:
    old, new = os.urandom(32), os.urandom(32)
    conv, msg = _ids()
    before = MessageCipher({1: old})
    wrapped = before.new_data_key(conv, 1)
    sealed = before.encrypt_body(
        before.data_key(conv, 1, wrapped), conversation_id=conv, message_id=msg, body=b"kept"
    )
    both = MessageCipher({1: old, 2: new})
    rewrapped = both.rewrap(conv, 1, wrapped)
    assert rewrapped.master_key_version == 2
    assert both.rewrap(conv, 1, rewrapped) is rewrapped  # already current: untouched
    # The new master alone opens it, and the data key (so every body) is the same.
    after = MessageCipher({2: new})
    key = after.data_key(conv, 1, rewrapped)
    assert after.decrypt_body(key, conversation_id=conv, message_id=msg, ciphertext=sealed) == (
        b"kept"
    )


def test_rewrap_names_what_it_cannot_open() -> None:
    conv, _ = _ids()
    wrapped = MessageCipher({1: os.urandom(32)}).new_data_key(conv, 7)
    with pytest.raises(
        KeyVersionMissing,
        match=exactly(
            f"master key version 1 is not configured (it wraps data key 7 of conversation {conv})"
        ),
    ):
        MessageCipher({2: os.urandom(32)}).rewrap(conv, 7, wrapped)
    impostor = MessageCipher({1: os.urandom(32), 2: os.urandom(32)})
    with pytest.raises(
        DecryptionFailed, match=exactly(f"data key 7 of conversation {conv} does not authenticate")
    ):
        impostor.rewrap(conv, 7, wrapped)


# --- staging ---


def test_a_staged_item_opens_with_its_label_batch_and_number() -> None:
    staging = StagingCipher.derive({1: os.urandom(32)}, source="codec")
    assert staging.current == "codec:1"
    sealed = staging.seal("b1", 3, b"item")
    assert b"item" not in sealed
    assert staging.open("codec:1", "b1", 3, sealed) == b"item"
    for batch, item in (("b2", 3), ("b1", 4)):
        with pytest.raises(
            DecryptionFailed,
            match=exactly(f"staged item {item} of batch {batch} failed authentication"),
        ):
            staging.open("codec:1", batch, item, sealed)
    with pytest.raises(DecryptionFailed):
        staging.open("codec:1", "b1", 3, sealed[:5])


def test_staging_keys_are_derived_not_the_keys_themselves() -> None:
    raw = os.urandom(32)
    staging = StagingCipher.derive({1: raw}, source="codec")
    sealed = staging.seal("b1", 0, b"item")
    # The raw key does not open it: a leaked staging key is not a codec or master key.
    with pytest.raises(InvalidTag):
        AESGCM(raw).decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], b"missive:batch-item:b1:0")
    # The same keyring derives the same key in another process.
    assert StagingCipher.derive({1: raw}, source="codec").open("codec:1", "b1", 0, sealed) == (
        b"item"
    )


def test_an_unknown_staging_label_is_named_and_cut_short() -> None:
    staging = StagingCipher.derive({1: os.urandom(32)}, source="codec")
    with pytest.raises(
        KeyVersionMissing, match=exactly("staged item sealed with key 'master:1', not configured")
    ):
        staging.open("master:1", "b1", 0, b"x" * 40)
    with pytest.raises(KeyVersionMissing) as info:
        staging.open("x" * 100, "b1", 0, b"x" * 40)
    assert str(info.value) == f"staged item sealed with key {'x' * 32!r}, not configured"


def test_staging_needs_a_key_and_picks_the_current_one() -> None:
    with pytest.raises(
        InvalidInput, match=exactly("codec keys: at least one key is required to stage a batch")
    ):
        StagingCipher.derive({}, source="codec")
    keys = {1: os.urandom(32), 2: os.urandom(32)}
    assert StagingCipher.derive(keys, source="master").current == "master:2"
    assert StagingCipher.derive(keys, source="master", current_version=1).current == "master:1"


def test_a_fallback_opens_the_other_ciphers_items_and_seals_with_its_own() -> None:
    codec = StagingCipher.derive({1: os.urandom(32)}, source="codec")
    master = MessageCipher({5: os.urandom(32)}).staging
    assert master.current == "master:5"
    old_item = master.seal("b1", 0, b"from before")
    both = codec.with_fallback(master)
    assert both.current == "codec:1"
    assert both.open("master:5", "b1", 0, old_item) == b"from before"
    assert both.open("codec:1", "b1", 1, both.seal("b1", 1, b"new")) == b"new"
    with pytest.raises(KeyVersionMissing):
        codec.open("master:5", "b1", 0, old_item)  # the original is unchanged
