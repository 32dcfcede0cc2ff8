"""Missive's own search attributes: names, typed keys and the attributes a start sets."""

from __future__ import annotations

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.client import Client
from temporalio.common import SearchAttributeKey, SearchAttributePair, TypedSearchAttributes

from missive.config import Settings

CONVERSATION_ID = "MissiveConversationId"
"""Keyword: the conversation a lifecycle or receipt belongs to."""

KIND = "MissiveKind"
"""Keyword: what a workflow is about (see the KIND_* values)."""

KIND_MESSAGE = "message"
"""A message's lifecycle."""
KIND_RECEIPT = "receipt"
"""A delivered / read receipt."""
KIND_BATCH = "batch"
"""A batch import or announcement."""

CONVERSATION_ID_KEY = SearchAttributeKey.for_keyword(CONVERSATION_ID)
KIND_KEY = SearchAttributeKey.for_keyword(KIND)

MISSIVE_SEARCH_ATTRIBUTES: dict[str, IndexedValueType.ValueType] = {
    CONVERSATION_ID: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
    KIND: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
}
"""Registered by ``dev.py``, the test servers and ``worker.py`` (when allowed); on a
cluster: ``temporal operator search-attribute create --name <name> --type Keyword``."""

MISSIVE_SEARCH_ATTRIBUTE_KEYS = [CONVERSATION_ID_KEY, KIND_KEY]
"""The same, as keys for ``WorkflowEnvironment.start_local(search_attributes=...)``."""


async def add_search_attributes(client: Client) -> None:
    """Adds Missive's attributes to the client's namespace without listing first.

    For Temporal's time-skipping test server, which can add but not list them;
    elsewhere use ``runtime.batch_worker.ensure_search_attributes``.

    Raises:
        temporalio.service.RPCError: the server refused (e.g. one exists already).
    """
    await client.operator_service.add_search_attributes(
        AddSearchAttributesRequest(
            search_attributes=MISSIVE_SEARCH_ATTRIBUTES, namespace=client.namespace
        )
    )


def start_attributes(
    settings: Settings, kind: str, *, conversation_id: str | None = None
) -> TypedSearchAttributes | None:
    """The search attributes a workflow start sets, or None when they are switched off.

    Args:
        settings: WORKFLOW_SEARCH_ATTRIBUTES decides whether any are set.
        kind: One of the KIND_* values.
        conversation_id: The conversation, where the workflow has one.
    """
    if not settings.workflow_search_attributes:
        return None
    pairs: list[SearchAttributePair[str]] = [SearchAttributePair(KIND_KEY, kind)]
    if conversation_id is not None:
        pairs.append(SearchAttributePair(CONVERSATION_ID_KEY, conversation_id))
    return TypedSearchAttributes(pairs)
