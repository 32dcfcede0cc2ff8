"""Encryption keys: master and data key rotation, and the key usage report."""

# Annotations are evaluated, not postponed: see missive/schemas/__init__.py.

from dataclasses import dataclass, field

from missive.validation import bounds

KEY_VERSION = bounds(1, 2**31 - 1)
"""Field metadata of a key version (an integer column)."""
CHUNK_SIZE = bounds(1, 10_000)
"""Field metadata of rows per transaction (the key service's own limit)."""


@dataclass(frozen=True)
class MasterKeyRotationInput:
    """Input of MasterKeyRotationWorkflow: re-wrap every data key under one master key."""

    master_key_version: int | None = field(default=None, metadata=KEY_VERSION)
    """The master key version to re-wrap under; the workers' MASTER_KEY_VERSION must
    be it (a worker configured otherwise refuses). None: whatever the workers use."""
    chunk_size: int = field(default=500, metadata=CHUNK_SIZE)
    """Data keys re-wrapped per transaction (one bulk UPDATE)."""
    chunks_per_activity: int = field(default=20, metadata=bounds(1))
    """Chunks one activity run does, heartbeating after each, before reporting back."""
    rewrapped: int = 0
    """Data keys re-wrapped by earlier runs (carried over continue-as-new)."""


@dataclass(frozen=True)
class RewrapDataKeysInput:
    """Input of the rewrap_data_keys activity."""

    master_key_version: int | None = None
    """See MasterKeyRotationInput."""
    chunk_size: int = 500
    """Data keys per transaction."""
    max_chunks: int = 20
    """Chunks before returning."""


@dataclass(frozen=True)
class RewrapDataKeysResult:
    """What one run of rewrap_data_keys did."""

    master_key_version: int
    """The master key version every re-wrapped key now uses."""
    rewrapped: int
    """Data keys re-wrapped in this run."""
    remaining: int
    """Data keys still wrapped by another master version."""


@dataclass(frozen=True)
class MasterKeyRotationResult:
    """Result of MasterKeyRotationWorkflow."""

    master_key_version: int
    """Every data key is now wrapped by this master key version."""
    rewrapped: int
    """Data keys re-wrapped in all."""


@dataclass(frozen=True)
class DataKeyRotationInput:
    """Input of DataKeyRotationWorkflow: a new data key for one conversation."""

    conversation_id: str
    """The conversation (UUID)."""
    chunk_size: int = field(default=500, metadata=CHUNK_SIZE)
    """Messages re-encrypted per transaction (one bulk UPDATE)."""
    chunks_per_activity: int = field(default=20, metadata=bounds(1))
    """Chunks one activity run does, heartbeating after each, before reporting back."""
    settle_seconds: float = field(default=20.0, metadata=bounds(0, 3_600))
    """Wait before the final sweep, so a send that read the old key version before
    the switch (it commits within DB_WRITE_TIMEOUT) is re-encrypted too."""
    to_version: int | None = field(default=None, metadata=KEY_VERSION)
    """The new data key version, once chosen (carried over continue-as-new)."""
    reencrypted: int = 0
    """Messages re-encrypted by earlier runs (carried over continue-as-new)."""
    swept: bool = False
    """Whether the settle wait is behind (carried over continue-as-new)."""


@dataclass(frozen=True)
class ConversationKeyInput:
    """Input of the data_key_state and create_data_key activities."""

    conversation_id: str
    """The conversation (UUID)."""
    version: int | None = None
    """create_data_key: the version to create and switch the conversation to."""


@dataclass(frozen=True)
class ConversationKeyState:
    """A conversation's current data key version."""

    conversation_id: str
    """The conversation."""
    key_version: int
    """The version new messages are encrypted with."""


@dataclass(frozen=True)
class ReencryptMessagesInput:
    """Input of the reencrypt_messages activity."""

    conversation_id: str
    """The conversation."""
    to_version: int
    """Every message under an older data key version moves to this one."""
    chunk_size: int = 500
    """Messages per transaction."""
    max_chunks: int = 20
    """Chunks before returning."""


@dataclass(frozen=True)
class ReencryptMessagesResult:
    """What one run of reencrypt_messages did."""

    reencrypted: int
    """Messages re-encrypted in this run."""
    remaining: int
    """Messages of the conversation still under an older data key version."""


@dataclass(frozen=True)
class DataKeyRotationResult:
    """Result of DataKeyRotationWorkflow."""

    conversation_id: str
    """The conversation."""
    key_version: int
    """Its data key version now; every message uses it."""
    reencrypted: int
    """Messages re-encrypted in all."""


@dataclass
class KeyRotationProgress:
    """Result of the ``progress`` query of both rotation workflows."""

    phase: str = "starting"
    """starting, creating_key, reencrypting, settling, rewrapping or done."""
    key_version: int | None = None
    """The target master or data key version, once known."""
    done: int = 0
    """Keys re-wrapped or messages re-encrypted so far."""
    remaining: int | None = None
    """Left to do, as of the last chunk; None before the first."""


@dataclass(frozen=True)
class KeyReportInput:
    """Input of KeyReportWorkflow and of the key_usage_report activity."""


@dataclass(frozen=True)
class MasterKeyUsage:
    """How many data keys one master key version wraps."""

    version: int
    """The master key version."""
    data_keys: int
    """Data keys wrapped by it."""


@dataclass(frozen=True)
class DataKeyUsage:
    """How much one data key version (across conversations) is in use."""

    version: int
    """The data key version."""
    conversations: int
    """Conversations whose current version this is."""
    messages: int
    """Messages encrypted with it."""


@dataclass(frozen=True)
class KeyUsageReport:
    """Which key versions are still in use, so old ones can be retired safely."""

    current_master_key_version: int
    """The master key version new data keys are wrapped by."""
    configured_master_key_versions: list[int] = field(default_factory=list)
    """MASTER_KEYS of the worker that made the report."""
    master_keys: list[MasterKeyUsage] = field(default_factory=list)
    """Master key versions that wrap at least one data key."""
    removable_master_key_versions: list[int] = field(default_factory=list)
    """Configured, not current, and wrapping nothing: safe to drop from MASTER_KEYS."""
    missing_master_key_versions: list[int] = field(default_factory=list)
    """In use but not configured: those data keys cannot be unwrapped."""
    data_keys: list[DataKeyUsage] = field(default_factory=list)
    """Data key versions with their conversations and messages."""
    conversations_with_old_messages: int = 0
    """Conversations with messages under an older data key than their current one
    (a data-key rotation is running or was not run to completion)."""
