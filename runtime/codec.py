"""A payload codec that encrypts every Temporal payload with AES-256-GCM.

Each encoded payload names its key id in metadata, so several keys can be live
at once while keys rotate: new payloads use the current key, old ones decode
with whichever key they name.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from google.protobuf.message import DecodeError
from temporalio.api.common.v1 import Payload
from temporalio.converter import PayloadCodec
from temporalio.exceptions import ApplicationError

ENCODING = b"binary/encrypted"
KEY_ID = "encryption-key-id"
_NONCE = 12
_SHOWN_KEY_ID = 16
"""Most characters of a requested key id an error quotes (real ids are versions)."""


class PayloadDecryptionError(ApplicationError, ValueError):
    """A payload could not be decoded: unknown key id or failed authentication.

    A non-retryable ``InvalidInput`` ApplicationError: a worker that cannot
    decode a workflow's input fails the workflow at once instead of retrying its
    first task forever (the codec server answers it with a 422). Add a codec key
    to every process before any process encodes with it (CODEC_KEY_VERSION).
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, type="InvalidInput", non_retryable=True)


def shown_key_id(key_id: bytes) -> str:
    """A requested key id as an error may quote it: bounded, printable."""
    text = key_id.decode("utf-8", "replace")
    if len(text) <= _SHOWN_KEY_ID:
        return repr(text)
    return f"{text[:_SHOWN_KEY_ID]!r}... ({len(key_id)} bytes)"


class EncryptionCodec(PayloadCodec):
    """AES-256-GCM over the serialized payload; the key id travels in metadata."""

    def __init__(self, keys: dict[int, bytes], *, current_version: int | None = None):
        if not keys:
            raise ValueError("CODEC_KEYS: at least one key is required")
        self._keys = {str(v): AESGCM(k) for v, k in keys.items()}
        self._current = str(current_version or max(keys))
        if self._current not in self._keys:
            raise ValueError(f"CODEC_KEY_VERSION {self._current} is not in CODEC_KEYS")

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        """Encrypts each payload with the current key."""
        key = self._keys[self._current]
        out = []
        for p in payloads:
            nonce = os.urandom(_NONCE)
            out.append(
                Payload(
                    metadata={"encoding": ENCODING, KEY_ID: self._current.encode()},
                    data=nonce + key.encrypt(nonce, p.SerializeToString(), None),
                )
            )
        return out

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        """Decrypts payloads this codec encoded; passes others through unchanged."""
        return [self._decode_one(p) for p in payloads]

    def _decode_one(self, p: Payload) -> Payload:
        if p.metadata.get("encoding") != ENCODING:
            return p
        raw_id = p.metadata.get(KEY_ID, b"")
        key = self._keys.get(raw_id.decode("utf-8", "replace"))
        if key is None:
            raise PayloadDecryptionError(
                f"payload encrypted with unknown codec key id {shown_key_id(raw_id)}"
            )
        try:
            plain = key.decrypt(p.data[:_NONCE], p.data[_NONCE:], None)
        except (InvalidTag, ValueError) as err:
            raise PayloadDecryptionError(
                f"payload with codec key id {shown_key_id(raw_id)} failed authentication"
            ) from err
        decoded = Payload()
        try:
            decoded.ParseFromString(plain)
        except DecodeError as err:
            raise PayloadDecryptionError(
                f"payload with codec key id {shown_key_id(raw_id)} is not a payload once decrypted"
            ) from err
        return decoded

    @property
    def key_ids(self) -> Iterable[str]:
        """The key ids this codec can decode."""
        return self._keys.keys()
