"""Workflow and activity inputs and results: frozen dataclasses, JSON on the wire.

New fields get defaults; a field a running workflow may hold is never renamed or
removed. These types are the contract for services in other languages too
(see the README).

One private module per domain: messages, receipts, notifications (and, under
both, the options a send carries: ``_notify_options``), batches, retention, keys
and search. Three hold types that never enter a history: ``_preferences`` (users'
notification preferences), ``_search_queries`` (a user's search and its hits) and
``_reports`` (batch reports and restores, read by the starter). Import every type
from here: the JSON converter records no module paths, so where a type lives is
not part of any history.

The modules evaluate their annotations when each class is made (no ``from
__future__ import annotations``), so a type refers only to types above it or
imported: the workflow sandbox passes ``missive.schemas`` through but not its
private modules, and the converters could not resolve string annotations there.
"""

from __future__ import annotations

from missive.schemas._batches import (
    BatchChunkInput,
    BatchChunkResult,
    BatchInput,
    BatchKind,
    BatchProgress,
    BatchResult,
    BatchState,
    BatchStatus,
)
from missive.schemas._keys import (
    ConversationKeyInput,
    ConversationKeyState,
    DataKeyRotationInput,
    DataKeyRotationResult,
    DataKeyUsage,
    KeyReportInput,
    KeyRotationProgress,
    KeyUsageReport,
    MasterKeyRotationInput,
    MasterKeyRotationResult,
    MasterKeyUsage,
    ReencryptMessagesInput,
    ReencryptMessagesResult,
    RewrapDataKeysInput,
    RewrapDataKeysResult,
)
from missive.schemas._messages import (
    Acceptance,
    AcceptInput,
    BroadcastMessageInput,
    LifecyclePhase,
    MessageAccepted,
    MessageLifecycleResult,
    MessageStatus,
    PersistMessageInput,
    PersistMessageResult,
    RecipientState,
    SendMessageInput,
)
from missive.schemas._notifications import (
    Channel,
    ClearPushesInput,
    DigestItem,
    DigestItems,
    DispatchDueInput,
    DispatchDueResult,
    FallBackInput,
    FallBackResult,
    NotificationDigestInput,
    NotificationDigestResult,
    NotificationStatus,
    NotifyMessageInput,
    NotifyMessageResult,
    PlanNotificationsInput,
    PlanNotificationsResult,
    PrepareDigestInput,
    PrepareDigestResult,
    QueueDigestsInput,
    QueueDigestsResult,
    SendNotificationsInput,
    SendNotificationsResult,
    SettleNotificationsInput,
    SettleNotificationsResult,
)
from missive.schemas._notify_options import (
    NotifyOptions,
)
from missive.schemas._preferences import (
    ConversationPreferences,
    NotificationPreferences,
)
from missive.schemas._receipts import (
    ApplyReceiptResult,
    ReceiptChange,
    ReceiptInput,
    ReceiptResult,
    ReceiptsChanged,
    ReceiptStatus,
    RecipientReceipt,
)
from missive.schemas._reports import (
    BatchFailure,
    BatchReport,
    RestoreResult,
)
from missive.schemas._retention import (
    RetentionInput,
    RetentionResult,
    RetentionStepInput,
    RetentionStepResult,
)
from missive.schemas._search import (
    ConversationGap,
    IndexerRunResult,
    RebuildBeginInput,
    RebuildBegun,
    RebuildFillInput,
    RebuildFillResult,
    RebuildFinishInput,
    RebuildFinishResult,
    RebuildInput,
    RebuildProgress,
    SearchCheckInput,
    SearchCheckResult,
    SearchIndexerInput,
    SearchIndexerStatus,
    SearchKeyGrant,
    SearchKeyInput,
)
from missive.schemas._search_queries import (
    SearchHit,
    SearchQuery,
    SearchResult,
)

__all__ = [
    "AcceptInput",
    "Acceptance",
    "ApplyReceiptResult",
    "BatchChunkInput",
    "BatchChunkResult",
    "BatchFailure",
    "BatchInput",
    "BatchKind",
    "BatchProgress",
    "BatchReport",
    "BatchResult",
    "BatchState",
    "BatchStatus",
    "BroadcastMessageInput",
    "Channel",
    "ClearPushesInput",
    "ConversationGap",
    "ConversationKeyInput",
    "ConversationKeyState",
    "ConversationPreferences",
    "DataKeyRotationInput",
    "DataKeyRotationResult",
    "DataKeyUsage",
    "DigestItem",
    "DigestItems",
    "DispatchDueInput",
    "DispatchDueResult",
    "FallBackInput",
    "FallBackResult",
    "IndexerRunResult",
    "KeyReportInput",
    "KeyRotationProgress",
    "KeyUsageReport",
    "LifecyclePhase",
    "MasterKeyRotationInput",
    "MasterKeyRotationResult",
    "MasterKeyUsage",
    "MessageAccepted",
    "MessageLifecycleResult",
    "MessageStatus",
    "NotificationDigestInput",
    "NotificationDigestResult",
    "NotificationPreferences",
    "NotificationStatus",
    "NotifyMessageInput",
    "NotifyMessageResult",
    "NotifyOptions",
    "PersistMessageInput",
    "PersistMessageResult",
    "PlanNotificationsInput",
    "PlanNotificationsResult",
    "PrepareDigestInput",
    "PrepareDigestResult",
    "QueueDigestsInput",
    "QueueDigestsResult",
    "RebuildBeginInput",
    "RebuildBegun",
    "RebuildFillInput",
    "RebuildFillResult",
    "RebuildFinishInput",
    "RebuildFinishResult",
    "RebuildInput",
    "RebuildProgress",
    "ReceiptChange",
    "ReceiptInput",
    "ReceiptResult",
    "ReceiptStatus",
    "ReceiptsChanged",
    "RecipientReceipt",
    "RecipientState",
    "ReencryptMessagesInput",
    "ReencryptMessagesResult",
    "RestoreResult",
    "RetentionInput",
    "RetentionResult",
    "RetentionStepInput",
    "RetentionStepResult",
    "RewrapDataKeysInput",
    "RewrapDataKeysResult",
    "SearchCheckInput",
    "SearchCheckResult",
    "SearchHit",
    "SearchIndexerInput",
    "SearchIndexerStatus",
    "SearchKeyGrant",
    "SearchKeyInput",
    "SearchQuery",
    "SearchResult",
    "SendMessageInput",
    "SendNotificationsInput",
    "SendNotificationsResult",
    "SettleNotificationsInput",
    "SettleNotificationsResult",
]
