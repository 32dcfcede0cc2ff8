"""Batches of messages: staging apart from chunk processing.

``_staging`` checks import files and COPYs items into ``batch_items``, sealed with
the staging keys, and reports on batches: it never encrypts a message, so the
starter stages without MASTER_KEYS (BatchStaging). ``_chunks`` stores a chunk's
items with bulk statements and announces them (BatchService, the worker's), over
``_parse`` (an item's JSON), ``_direct`` (direct conversations found or created for
items addressed to users) and ``_items`` (batch ids, item states, the connection).
Every public name is re-exported here.
"""

from missive.services.batch._chunks import (
    LIVE_EVENTS_PER_CONVERSATION,
    BatchService,
    StoredMessagesSink,
)
from missive.services.batch._items import ItemState, new_batch_id, require_batch_id
from missive.services.batch._parse import parse_created_at
from missive.services.batch._staging import (
    BatchStaging,
    StagedSource,
    announcement_items,
    scan_import_file,
    user_announcement_items,
)
from missive.services.directory import direct_conversation_id

__all__ = [
    "LIVE_EVENTS_PER_CONVERSATION",
    "BatchService",
    "BatchStaging",
    "ItemState",
    "StagedSource",
    "StoredMessagesSink",
    "announcement_items",
    "direct_conversation_id",
    "new_batch_id",
    "parse_created_at",
    "require_batch_id",
    "scan_import_file",
    "user_announcement_items",
]
