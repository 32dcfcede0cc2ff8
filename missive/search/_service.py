"""SearchService: the search jobs over one index, as one object the processes build."""

from __future__ import annotations

from missive.search._indexer import Indexer
from missive.search._queries import UserSearch
from missive.search._rebuild import IndexRebuild


class SearchService(Indexer, IndexRebuild, UserSearch):
    """Indexes messages into Typesense and answers users' searches.

    The index is an alias (``typesense_collection``) over versioned collections.
    PostgreSQL says what is pending (``messages.indexed_at IS NULL`` and
    ``search_deletions``), so delivery never waits for search and a Typesense
    outage only delays indexing.

    Each job is a module of this package over the shared ``SearchIndex``: the
    indexer (with the check it reconciles by), the rebuild, and user searches.
    """
