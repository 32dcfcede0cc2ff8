"""Message search over Typesense: index, indexer batches, rebuilds, checks, user queries.

One private module per job: ``_client`` (Typesense's REST API), ``_documents`` (the
collection's schema and documents), ``_keys`` (parent and scoped keys), ``_index`` (the
alias and what every job shares), ``_indexer``, ``_rebuild``, ``_check``, ``_queries``
(user searches) and ``_service`` (SearchService over them all). Every public name is
re-exported here, so ``from missive.search import X`` keeps working. The gateway's
``message:search`` parsing and result JSON live in gateway/search.py.
"""

from missive.errors import SearchRejected
from missive.search._client import TypesenseClient
from missive.search._documents import collection_schema, search_document
from missive.search._index import WAKE_INDEXER, wake_indexer_on_commit
from missive.search._indexer import IDLE_POLL_SECONDS, TOMBSTONE_KEEP
from missive.search._keys import parent_key_value, scoped_search_key
from missive.search._queries import (
    MAX_PAGE,
    MAX_PER_PAGE,
    MAX_QUERY_CHARS,
    parse_time,
    query_with_key,
    search_params,
)
from missive.search._service import SearchService

__all__ = [
    "IDLE_POLL_SECONDS",
    "MAX_PAGE",
    "MAX_PER_PAGE",
    "MAX_QUERY_CHARS",
    "TOMBSTONE_KEEP",
    "WAKE_INDEXER",
    "SearchRejected",
    "SearchService",
    "TypesenseClient",
    "collection_schema",
    "parent_key_value",
    "parse_time",
    "query_with_key",
    "scoped_search_key",
    "search_document",
    "search_params",
    "wake_indexer_on_commit",
]
