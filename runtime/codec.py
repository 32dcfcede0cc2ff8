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
from temporalio.api.common.v1 import Payload
from temporalio.converter import PayloadCodec

ENCODING = b"binary/encrypted"
KEY_ID = "encryption-key-id"
_NONCE = 12


class PayloadDecryptionError(ValueError):
    """A payload could not be decoded: unknown key id or failed authentication."""


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
        key_id = p.metadata.get(KEY_ID, b"").decode()
        key = self._keys.get(key_id)
        if key is None:
            raise PayloadDecryptionError(f"payload encrypted with unknown codec key id {key_id!r}")
        try:
            plain = key.decrypt(p.data[:_NONCE], p.data[_NONCE:], None)
        except (InvalidTag, ValueError) as err:
            raise PayloadDecryptionError(
                f"payload with codec key id {key_id!r} failed authentication"
            ) from err
        decoded = Payload()
        decoded.ParseFromString(plain)
        return decoded

    @property
    def key_ids(self) -> Iterable[str]:
        """The key ids this codec can decode."""
        return self._keys.keys()
