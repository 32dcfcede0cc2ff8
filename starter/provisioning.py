"""Provisioning from a back-end service: users, conversations, members, edits and deletes.

MissiveClient's methods for what a chat app's back end sets up and changes; each runs
its workflow (runtime/conversations.py), the ones the gateway runs for clients.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import AbstractAsyncContextManager
from typing import Any

from temporalio.client import Client

from missive.constants import TASK_QUEUE_PUSH
from missive.errors import InvalidInput
from missive.schemas import (
    DeleteMessageInput,
    DeleteMessageResult,
    EditMessageInput,
    EditMessageResult,
    MembershipAction,
    MembershipInput,
    MembershipResult,
    UserProfile,
    UserProfileInput,
)
from missive.validation import require_uuid
from runtime.conversations import (
    apply_user_profile,
    change_membership,
    delete_message,
    edit_message,
)

_PROFILE_FIELDS = {"handle", "display_name", "email", "phone", "timezone", "locale"}


class Provisioning(ABC):
    """Users and conversations, for MissiveClient, which gives the two members below:
    the Temporal client and the timeout around each call (abstract here, so a class
    that forgets one cannot be built)."""

    @property
    @abstractmethod
    def temporal(self) -> Client:
        """The Temporal client (MissiveClient's)."""

    @abstractmethod
    def _answer_within(self, what: str) -> AbstractAsyncContextManager[None]:
        """Bounds one call and turns Temporal's errors into Missive's (MissiveClient's)."""

    async def create_user(
        self,
        handle: str,
        *,
        display_name: str | None = None,
        email: str | None = None,
        phone: str | None = None,
        timezone: str | None = None,
        locale: str | None = None,
        client_user_id: str | None = None,
    ) -> UserProfile:
        """Creates a user; with ``client_user_id`` (your system's id) a retry returns the
        same user instead of a second one.

        Raises:
            InvalidInput: a malformed field, or the handle is taken.
            ProviderUnavailable: Temporal or the workers did not answer in time.
        """
        request = UserProfileInput(
            handle=handle,
            display_name=display_name,
            email=email,
            phone=phone,
            timezone=timezone,
            locale=locale,
            client_user_id=client_user_id,
        )
        async with self._answer_within(f"create user {handle!r}"):
            return await apply_user_profile(self.temporal, request)

    async def update_user(self, user_id: str, **changes: str | None) -> UserProfile:
        """Changes the fields given (handle, display_name, email, phone, timezone, locale);
        an empty email or phone clears it.

        Raises:
            InvalidInput: a malformed or unknown field, or the handle is taken.
            UserNotFound: no such user.
        """
        unknown = sorted(set(changes) - _PROFILE_FIELDS)
        if unknown:
            raise InvalidInput(
                f"unknown user field {', '.join(unknown)}; the fields are"
                f" {', '.join(sorted(_PROFILE_FIELDS))}"
            )
        request = UserProfileInput(user_id=require_uuid(user_id, "user_id"), **changes)
        async with self._answer_within(f"update user {user_id}"):
            return await apply_user_profile(self.temporal, request)

    async def create_conversation(
        self,
        kind: str,
        member_ids: list[str],
        *,
        title: str | None = None,
        encryption_mode: str = "standard",
        creator_id: str | None = None,
        client_conversation_id: str | None = None,
    ) -> MembershipResult:
        """Creates a conversation; the creator (else the first member) owns it.

        A direct conversation of two users is found rather than made twice; a
        group or channel with ``client_conversation_id`` is made once however often
        the call is retried.
        """
        return await self._membership(
            MembershipInput(
                action=MembershipAction.CREATE,
                actor_id=creator_id,
                user_ids=list(member_ids),
                kind=kind,
                title=title,
                encryption_mode=encryption_mode,
                client_conversation_id=client_conversation_id,
            )
        )

    async def add_members(
        self, conversation_id: str, user_ids: list[str], *, actor_id: str | None = None
    ) -> MembershipResult:
        """Adds members (their open sockets join the room); members already are named in
        ``already_members``."""
        return await self._membership(
            MembershipInput(
                action=MembershipAction.ADD,
                actor_id=actor_id,
                conversation_id=conversation_id,
                user_ids=list(user_ids),
            )
        )

    async def remove_member(
        self, conversation_id: str, user_id: str, *, actor_id: str | None = None
    ) -> MembershipResult:
        """Removes a member; returns once their open sockets left the room everywhere."""
        return await self._membership(
            MembershipInput(
                action=MembershipAction.REMOVE,
                actor_id=actor_id,
                conversation_id=conversation_id,
                user_ids=[user_id],
            )
        )

    async def set_role(
        self, conversation_id: str, user_id: str, role: str, *, actor_id: str | None = None
    ) -> MembershipResult:
        """Makes a member owner, admin or member."""
        return await self._membership(
            MembershipInput(
                action=MembershipAction.SET_ROLE,
                actor_id=actor_id,
                conversation_id=conversation_id,
                user_ids=[user_id],
                role=role,
            )
        )

    async def edit_message(
        self,
        conversation_id: str,
        message_id: str,
        editor_id: str,
        body: str,
        *,
        e2e_header: dict[str, Any] | None = None,
    ) -> EditMessageResult:
        """Changes a message's text on behalf of its sender."""
        request = EditMessageInput(
            conversation_id=conversation_id,
            message_id=message_id,
            editor_id=editor_id,
            body=body,
            e2e_header=e2e_header,
        )
        async with self._answer_within(f"edit of message {message_id}"):
            return await edit_message(self.temporal, request)

    async def delete_message(
        self, conversation_id: str, message_id: str, *, actor_id: str | None = None
    ) -> DeleteMessageResult:
        """Deletes a message (its body destroyed); without ``actor_id``, as a service."""
        request = DeleteMessageInput(
            conversation_id=conversation_id,
            message_id=message_id,
            actor_id=actor_id,
            push_task_queue=TASK_QUEUE_PUSH,
        )
        async with self._answer_within(f"delete of message {message_id}"):
            return await delete_message(self.temporal, request)

    async def _membership(self, request: MembershipInput) -> MembershipResult:
        async with self._answer_within(f"membership change {request.action.value}"):
            return await change_membership(self.temporal, request)
