"""A user's search and its hits.

Not workflow or activity types: the gateway and the starter query Typesense
directly with a scoped key (missive/search/), so they never enter a history.
"""

# Annotations are evaluated, not postponed: see missive/schemas/__init__.py.

from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True)
class SearchQuery:
    """What a user searches for; filters are values, never filter strings."""

    text: str
    """The words to find (typo-tolerant); 1-512 characters."""
    conversation_id: str | None = None
    """Only this conversation (the user must take part in it)."""
    sender_id: str | None = None
    """Only messages from this user."""
    since: datetime | None = None
    """Only messages created at or after this time (timezone-aware)."""
    until: datetime | None = None
    """Only messages created at or before this time (timezone-aware)."""
    page: int = 1
    """1-based page."""
    per_page: int = 20
    """Hits per page, 1-100."""


@dataclass(frozen=True)
class SearchHit:
    """One message found."""

    message_id: str
    """The message."""
    conversation_id: str
    """Its conversation."""
    sender_id: str
    """Its sender."""
    seq: int
    """Its sequence number."""
    created_at: datetime
    """When it was sent."""
    text: str
    """Its text."""
    snippet: str
    """The matching part, matched words wrapped in ``<mark>``."""
    edited_at: datetime | None = None
    """When it was last edited, if it was."""


@dataclass(frozen=True)
class SearchResult:
    """A page of hits, best first."""

    found: int
    """Hits in all pages."""
    page: int
    """This page (1-based)."""
    per_page: int
    """Page size asked for."""
    hits: list[SearchHit] = field(default_factory=list)
    """This page's hits (empty past the last page)."""
