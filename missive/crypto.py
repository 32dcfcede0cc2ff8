"""Envelope encryption at rest: a data key per conversation, wrapped by a master key."""

from __future__ import annotations

import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from missive.errors import DecryptionFailed, InvalidInput, KeyVersionMissing

NONCE_BYTES = 12
_TAG_BYTES = 16


@dataclass(frozen=True)
class WrappedKey:
    """A data key encrypted under one master key version."""

    master_key_version: int
    """The master key that wraps it."""
    wrapped: bytes
    """nonce || AES-256-GCM(master, data key)."""


class StagingCipher:
    """Seals staged batch items (``batch_items.payload_sealed``) with AES-256-GCM.

    Its keys are derived (HKDF-SHA256, their own label) from a keyring: CODEC_KEYS
    where the process has them, so the starter can stage a batch without
    MASTER_KEYS; else MASTER_KEYS (see MessageCipher.staging). Each sealed item
    names its key (``codec:1``, ``master:2``) and is bound to its batch and item
    number, so an item copied elsewhere does not open.
    """

    def __init__(self, keys: dict[str, AESGCM], current: str) -> None:
        self._keys = keys
        self.current = current
        """The label of the key new items are sealed with."""

    @classmethod
    def derive(
        cls, keyring: dict[int, bytes], *, source: str, current_version: int | None = None
    ) -> StagingCipher:
        """Staging keys derived from ``keyring`` (``source`` is ``codec`` or ``master``)."""
        if not keyring:
            raise InvalidInput(f"{source} keys: at least one key is required to stage a batch")
        keys = {
            f"{source}:{version}": AESGCM(
                HKDF(
                    algorithm=hashes.SHA256(),
                    length=32,
                    salt=None,
                    info=b"missive:batch-staging:v1",
                ).derive(key)
            )
            for version, key in keyring.items()
        }
        return cls(keys, f"{source}:{current_version or max(keyring)}")

    def with_fallback(self, other: StagingCipher) -> StagingCipher:
        """This cipher, also opening what ``other`` sealed."""
        return StagingCipher({**other._keys, **self._keys}, self.current)

    @staticmethod
    def _aad(batch_id: str, item_no: int) -> bytes:
        return f"missive:batch-item:{batch_id}:{item_no}".encode()

    def seal(self, batch_id: str, item_no: int, plaintext: bytes) -> bytes:
        """``nonce || ciphertext || tag`` of one item under the current key."""
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._keys[self.current].encrypt(
            nonce, plaintext, self._aad(batch_id, item_no)
        )

    def open(self, label: str, batch_id: str, item_no: int, sealed: bytes) -> bytes:
        """The item's plaintext.

        Raises:
            KeyVersionMissing: no key with that label is configured here.
            DecryptionFailed: the item was tampered with or belongs elsewhere.
        """
        key = self._keys.get(label)
        if key is None:
            raise KeyVersionMissing(f"staged item sealed with key {label[:32]!r}, not configured")
        try:
            aad = self._aad(batch_id, item_no)
            return key.decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], aad)
        except (InvalidTag, ValueError):
            raise DecryptionFailed(
                f"staged item {item_no} of batch {batch_id} failed authentication"
            ) from None


class MessageCipher:
    """Wraps data keys and encrypts message bodies with AES-256-GCM.

    The associated data binds each ciphertext to where it belongs, so a body
    copied into another message or conversation does not decrypt.
    """

    def __init__(self, master_keys: dict[int, bytes], *, current_version: int | None = None):
        if not master_keys:
            raise InvalidInput("MASTER_KEYS: at least one master key is required")
        self._masters = {version: AESGCM(key) for version, key in master_keys.items()}
        self.current_version = current_version or max(master_keys)
        if self.current_version not in self._masters:
            raise InvalidInput(f"MASTER_KEY_VERSION {self.current_version} is not in MASTER_KEYS")
        self._unwrapped: dict[tuple[str, int, bytes], AESGCM] = {}
        self.staging = StagingCipher.derive(
            master_keys, source="master", current_version=self.current_version
        )
        """Staging keys derived from the master keys, for a process without CODEC_KEYS."""

    @property
    def master_versions(self) -> list[int]:
        """The configured master key versions."""
        return sorted(self._masters)

    @staticmethod
    def _key_aad(conversation_id: str, key_version: int) -> bytes:
        return f"missive:data-key:{conversation_id}:{key_version}".encode()

    @staticmethod
    def _body_aad(conversation_id: str, message_id: str) -> bytes:
        return f"missive:body:{conversation_id}:{message_id}".encode()

    def new_data_key(self, conversation_id: str, key_version: int) -> WrappedKey:
        """Creates a fresh data key and returns it wrapped by the current master key."""
        nonce = os.urandom(NONCE_BYTES)
        wrapped = self._masters[self.current_version].encrypt(
            nonce, AESGCM.generate_key(bit_length=256), self._key_aad(conversation_id, key_version)
        )
        return WrappedKey(self.current_version, nonce + wrapped)

    def data_key(self, conversation_id: str, key_version: int, wrapped: WrappedKey) -> AESGCM:
        """Unwraps (and caches) a conversation's data key.

        Raises:
            KeyVersionMissing: the master key version is not configured.
            DecryptionFailed: the wrapped key does not authenticate.
        """
        cache_key = (conversation_id, key_version, wrapped.wrapped)
        cached = self._unwrapped.get(cache_key)
        if cached is not None:
            return cached
        master = self._masters.get(wrapped.master_key_version)
        if master is None:
            raise KeyVersionMissing(
                f"master key version {wrapped.master_key_version} is not configured"
            )
        try:
            raw = master.decrypt(
                wrapped.wrapped[:NONCE_BYTES],
                wrapped.wrapped[NONCE_BYTES:],
                self._key_aad(conversation_id, key_version),
            )
        except (InvalidTag, ValueError) as err:
            raise DecryptionFailed(
                f"data key {key_version} of conversation {conversation_id} does not authenticate"
            ) from err
        if len(self._unwrapped) > 10_000:
            self._unwrapped.clear()
        key = self._unwrapped[cache_key] = AESGCM(raw)
        return key

    def rewrap(self, conversation_id: str, key_version: int, wrapped: WrappedKey) -> WrappedKey:
        """The same data key, wrapped by the current master key (master-key rotation).

        Raises:
            KeyVersionMissing: the master key version that wraps it is not configured.
            DecryptionFailed: the wrapped key does not authenticate.
        """
        if wrapped.master_key_version == self.current_version:
            return wrapped
        master = self._masters.get(wrapped.master_key_version)
        if master is None:
            raise KeyVersionMissing(
                f"master key version {wrapped.master_key_version} is not configured (it wraps "
                f"data key {key_version} of conversation {conversation_id})"
            )
        aad = self._key_aad(conversation_id, key_version)
        try:
            raw = master.decrypt(wrapped.wrapped[:NONCE_BYTES], wrapped.wrapped[NONCE_BYTES:], aad)
        except (InvalidTag, ValueError) as err:
            raise DecryptionFailed(
                f"data key {key_version} of conversation {conversation_id} does not authenticate"
            ) from err
        nonce = os.urandom(NONCE_BYTES)
        current = self._masters[self.current_version]
        return WrappedKey(self.current_version, nonce + current.encrypt(nonce, raw, aad))

    def encrypt_body(
        self, key: AESGCM, *, conversation_id: str, message_id: str, body: bytes
    ) -> bytes:
        """Returns nonce || ciphertext || tag for one message body."""
        nonce = os.urandom(NONCE_BYTES)
        return nonce + key.encrypt(nonce, body, self._body_aad(conversation_id, message_id))

    def decrypt_body(
        self, key: AESGCM, *, conversation_id: str, message_id: str, ciphertext: bytes
    ) -> bytes:
        """Decrypts one message body.

        Raises:
            DecryptionFailed: tampered, truncated, or encrypted for another message.
        """
        if len(ciphertext) < NONCE_BYTES + _TAG_BYTES:
            raise DecryptionFailed(f"body of message {message_id} is truncated")
        try:
            return key.decrypt(
                ciphertext[:NONCE_BYTES],
                ciphertext[NONCE_BYTES:],
                self._body_aad(conversation_id, message_id),
            )
        except InvalidTag as err:
            raise DecryptionFailed(
                f"body of message {message_id} failed authentication (tampered or wrong key)"
            ) from err
