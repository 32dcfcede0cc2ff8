"""Users' notification preferences, as stored and as the gateway reads and sets them.

Not workflow or activity types: the notification activities read them from the
database (missive/notify/preferences.py), so they never enter a history.
"""

# Annotations are evaluated, not postponed: see missive/schemas/__init__.py.

from dataclasses import dataclass


@dataclass(frozen=True)
class NotificationPreferences:
    """A user's notification preferences (what applies where a conversation says nothing)."""

    in_app: bool = True
    """In-app notifications (the bell)."""
    push: bool = True
    """Push to the user's devices."""
    email: bool = True
    """Email digests."""
    sms: bool = False
    """SMS digests: off unless the user opts in."""
    mentions_only: bool = False
    """Only messages that mention the user notify."""
    quiet_start: str | None = None
    """Start of quiet hours, ``HH:MM`` in the user's timezone (None: no quiet hours)."""
    quiet_end: str | None = None
    """End of quiet hours, ``HH:MM`` (may be earlier than the start: overnight)."""
    quiet_mentions: bool = False
    """Mentions break through quiet hours."""


@dataclass(frozen=True)
class ConversationPreferences:
    """One user's overrides for one conversation; None inherits the user's choice."""

    muted: bool = False
    """No notification at all from this conversation."""
    mentions_only: bool | None = None
    """Only mentions notify in this conversation."""
    in_app: bool | None = None
    """Override of NotificationPreferences.in_app."""
    push: bool | None = None
    """Override of NotificationPreferences.push."""
    email: bool | None = None
    """Override of NotificationPreferences.email."""
    sms: bool | None = None
    """Override of NotificationPreferences.sms."""
