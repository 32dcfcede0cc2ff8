"""Envelope encryption and the payload codec, without servers."""

from __future__ import annotations

import os
import uuid

import pytest
from temporalio.api.common.v1 import Payload

from missive.config import parse_keyring
from missive.crypto import MessageCipher
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
