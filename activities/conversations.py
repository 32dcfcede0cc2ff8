"""Conversation activities: membership, edits, deletes, withdrawn notifications, users.

Each one is idempotent: a rerun of a change already made writes nothing and
reports ``changed`` False; the announcements' event ids come from the stored
change, so a rerun repeats the same event and clients drop the repeat.
"""

from __future__ import annotations

from temporalio import activity

from activities.errors import translate_errors
from missive.broadcast import Broadcaster, Emitter, emit_many
from missive.constants import EVENT_NOTIFICATION_UNREAD, user_room
from missive.notify.log import NotificationLog
from missive.pubsub import Emit
from missive.schemas import (
    DeleteMessageInput,
    DeleteMessageResult,
    EditMessageInput,
    EditMessageResult,
    EditNotice,
    MembershipInput,
    MembershipNotice,
    MembershipResult,
    UserProfile,
    UserProfileInput,
    WithdrawInput,
    WithdrawResult,
)
from missive.services.edits import EditService
from missive.services.membership import MembershipService
from missive.services.users import UserService


class ConversationActivities:
    """The I/O of membership changes, edits, deletes and user provisioning.

    Run as local activities of their workflows: a change and its announcement
    cost one workflow task, as a send does.
    """

    def __init__(
        self,
        membership: MembershipService,
        edits: EditService,
        users: UserService,
        notifications: NotificationLog,
        emitter: Emitter,
    ):
        self._membership = membership
        self._edits = edits
        self._users = users
        self._notifications = notifications
        self._emitter = emitter
        self._broadcaster = Broadcaster(emitter)

    @activity.defn
    @translate_errors
    async def apply_membership(self, input: MembershipInput) -> MembershipResult:
        """Applies a membership change by the rules (missive.services.membership)."""
        return await self._membership.apply(input)

    @activity.defn
    @translate_errors
    async def announce_membership(self, input: MembershipNotice) -> None:
        """Moves the members' sockets between rooms in every gateway and tells them."""
        await self._broadcaster.membership(input.result)

    @activity.defn
    @translate_errors
    async def edit_message(self, input: EditMessageInput) -> EditMessageResult:
        """Stores the message's new text (re-encrypted); the same text is a no-op."""
        return await self._edits.edit(input)

    @activity.defn
    @translate_errors
    async def announce_edit(self, input: EditNotice) -> None:
        """Sends ``message:edited`` to the conversation's room."""
        await self._broadcaster.message_edited(input.edit, input.result)

    @activity.defn
    @translate_errors
    async def delete_message(self, input: DeleteMessageInput) -> DeleteMessageResult:
        """Destroys the message's body and leaves its tombstone."""
        return await self._edits.delete(input)

    @activity.defn
    @translate_errors
    async def announce_delete(self, input: DeleteMessageResult) -> None:
        """Sends ``message:deleted`` to the conversation's room."""
        await self._broadcaster.message_deleted(input)

    @activity.defn
    @translate_errors
    async def withdraw_notifications(self, input: WithdrawInput) -> WithdrawResult:
        """Cancels what is still to be sent; for a deleted message also takes its in-app
        notifications out of the bell (``notification:unread`` with the new counts)."""
        now = input.now or activity.info().current_attempt_scheduled_time
        done = await self._notifications.withdraw(input, now=now)
        await emit_many(
            self._emitter,
            [
                Emit(
                    EVENT_NOTIFICATION_UNREAD,
                    {
                        "event_id": f"{EVENT_NOTIFICATION_UNREAD}:{user}:withdrawn:"
                        f"{input.message_id}",
                        "conversation_id": input.conversation_id,
                        "message_id": input.message_id,
                        "unread_count": count,
                    },
                    user_room(user),
                )
                for user, count in sorted(done.unread_counts.items())
            ],
        )
        return WithdrawResult(
            cancelled=done.cancelled,
            withdrawn=done.withdrawn,
            clear_push_ids=done.clear_push_ids,
        )

    @activity.defn
    @translate_errors
    async def apply_user_profile(self, input: UserProfileInput) -> UserProfile:
        """Creates or updates a user."""
        return await self._users.apply(input)
