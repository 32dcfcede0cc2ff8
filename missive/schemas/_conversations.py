"""Conversations and users: membership changes, edits and deletes, user profiles."""

# Annotations are evaluated, not postponed: see missive/schemas/__init__.py.

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any


class MembershipAction(StrEnum):
    """What a MembershipWorkflow changes."""

    CREATE = "create"
    """A new conversation with its first members (the actor becomes its owner)."""
    ADD = "add"
    """Members join a conversation."""
    REMOVE = "remove"
    """One member is removed by another."""
    LEAVE = "leave"
    """The actor leaves."""
    SET_ROLE = "set_role"
    """One member's role changes (owner, admin, member)."""


@dataclass(frozen=True)
class MembershipInput:
    """Input of MembershipWorkflow and of its apply_membership activity.

    Who may do what is the service's rule (see the README's users and
    conversations contract); ``actor_id`` None is a back-end service acting
    with an owner's rights.
    """

    action: MembershipAction
    """What to change."""
    actor_id: str | None = None
    """The user asking (a gateway socket's user), or None for a back-end service."""
    conversation_id: str | None = None
    """The conversation (every action but create)."""
    user_ids: list[str] = field(default_factory=list)
    """create: the other members; add: who joins; remove / set_role: the one member."""
    role: str | None = None
    """set_role: owner, admin or member."""
    kind: str | None = None
    """create: direct, group or channel."""
    title: str | None = None
    """create: the conversation's title (groups and channels)."""
    encryption_mode: str = "standard"
    """create: standard (stored encrypted by Missive) or e2e (clients encrypt)."""
    client_conversation_id: str | None = None
    """create: the client's own id for the new conversation; a retry with the same one
    returns the same conversation instead of making a second."""


@dataclass(frozen=True)
class ConversationSummary:
    """A conversation as its members see it."""

    conversation_id: str
    """The conversation."""
    kind: str
    """direct, group or channel."""
    title: str | None
    """Its title, if any."""
    encryption_mode: str
    """standard or e2e."""
    member_count: int
    """Members now."""
    last_seq: int
    """The seq of its latest message (0: none yet)."""


@dataclass(frozen=True)
class MembershipResult:
    """What a membership change did; a rerun of the same change reports ``changed`` False."""

    action: MembershipAction
    """The change asked for."""
    conversation: ConversationSummary
    """The conversation after the change."""
    changed: bool
    """Whether anything was written (False: it was already so)."""
    changed_at: datetime
    """When it was written (the events' ids derive from it)."""
    actor_id: str | None = None
    """Who asked."""
    added: list[str] = field(default_factory=list)
    """Users who joined (create: every member)."""
    already_members: list[str] = field(default_factory=list)
    """add: users who were members already (nothing written for them)."""
    removed: list[str] = field(default_factory=list)
    """remove / leave: the user who is no longer a member."""
    role: str | None = None
    """set_role: the member's role now."""
    member_id: str | None = None
    """set_role: the member whose role it is."""
    created: bool = False
    """create: a new conversation (False: a retry, or the direct chat that existed)."""


@dataclass(frozen=True)
class MembershipNotice:
    """Input of the announce_membership activity: move the rooms, tell the members."""

    result: MembershipResult
    """The change as applied."""


@dataclass(frozen=True)
class WithdrawInput:
    """Input of the withdraw_notifications activity: one of the two is given."""

    message_id: str | None = None
    """A deleted message: every recipient's notifications of it."""
    user_id: str | None = None
    """A removed member: their notifications of ``conversation_id``."""
    conversation_id: str | None = None
    """With ``user_id``."""
    now: datetime | None = None
    """Workflow time: the rows' updated_at (a rerun writes the same)."""


@dataclass(frozen=True)
class WithdrawResult:
    """Notifications withdrawn: pending ones cancelled, in-app ones marked withdrawn."""

    cancelled: int = 0
    """Pending notifications that will not be sent."""
    withdrawn: int = 0
    """In-app notifications taken back (the bell's unread counts updated)."""
    clear_push_ids: list[str] = field(default_factory=list)
    """Pushes already shown on devices, to clear (ClearPushesWorkflow)."""


@dataclass(frozen=True)
class EditMessageInput:
    """Input of EditMessageWorkflow and of its edit_message activity."""

    conversation_id: str
    """The message's conversation."""
    message_id: str
    """The message."""
    editor_id: str
    """Who edits: only the sender may."""
    body: str
    """The new text (e2e conversations: the client's new ciphertext, base64)."""
    e2e_header: dict[str, Any] | None = None
    """e2e conversations: the new ciphertext's key metadata (required there)."""


@dataclass(frozen=True)
class EditMessageResult:
    """An edit as stored; a rerun with the same text reports ``changed`` False."""

    message_id: str
    """The message."""
    conversation_id: str
    """Its conversation."""
    seq: int
    """Its seq (unchanged by edits)."""
    edited_at: datetime
    """When the current text was stored."""
    changed: bool = True
    """False: the message already had this text."""


@dataclass(frozen=True)
class EditNotice:
    """Input of the announce_edit activity: the edit and what storing it gave."""

    edit: EditMessageInput
    """The edit as asked."""
    result: EditMessageResult
    """The edit as stored."""


@dataclass(frozen=True)
class DeleteMessageInput:
    """Input of DeleteMessageWorkflow and of its delete_message activity."""

    conversation_id: str
    """The message's conversation."""
    message_id: str
    """The message."""
    actor_id: str | None = None
    """The sender, or an owner or admin of the conversation; None: a back-end service."""
    push_task_queue: str = "missive-notify-push"
    """The push provider's task queue, where shown pushes of the message are cleared."""


@dataclass(frozen=True)
class DeleteMessageResult:
    """A delete as stored; deleting again answers the same ``deleted_at``."""

    message_id: str
    """The message."""
    conversation_id: str
    """Its conversation."""
    seq: int
    """Its seq (a tombstone keeps it: the history stays gap-free)."""
    deleted_at: datetime
    """When it was deleted."""
    changed: bool = True
    """False: it was deleted before."""


@dataclass(frozen=True)
class UserProfileInput:
    """Input of UserProfileWorkflow: create a user (no ``user_id``) or update one.

    On update, a field left None keeps its value; an empty ``email`` or ``phone``
    clears it.
    """

    user_id: str | None = None
    """The user to update; None creates one."""
    handle: str | None = None
    """Unique handle, 1-64 characters (required to create)."""
    display_name: str | None = None
    """Shown name (defaults to the handle)."""
    email: str | None = None
    """Address for email notifications."""
    phone: str | None = None
    """E.164 number for SMS notifications."""
    timezone: str | None = None
    """IANA timezone name (default UTC)."""
    locale: str | None = None
    """Language tag (default en)."""
    client_user_id: str | None = None
    """create: the caller's own id for the user; a retry with it returns the same user."""


@dataclass(frozen=True)
class UserProfile:
    """A user as stored."""

    user_id: str
    """The user's id."""
    handle: str
    """Unique handle."""
    display_name: str
    """Shown name."""
    email: str | None
    """Email address, if any."""
    phone: str | None
    """Phone number, if any."""
    timezone: str
    """IANA timezone."""
    locale: str
    """Language tag."""
    created: bool = False
    """Whether this call created the user."""
