"""Notification events: preferences, the in-app bell, and push devices."""

from __future__ import annotations

from dataclasses import asdict, fields, replace
from typing import Any, TypeVar

from gateway.acks import Ack, Handler, optional_object, require_object
from gateway.context import Context
from missive.constants import (
    EVENT_DEVICE_REGISTER,
    EVENT_DEVICE_UNREGISTER,
    EVENT_NOTIFICATION_LIST,
    EVENT_NOTIFICATION_PREFERENCES,
)
from missive.errors import InvalidInput
from missive.notify.log import NotificationRow
from missive.notify.preferences import (
    require_platform,
    require_push_token,
    require_timezone,
    validate_conversation_preferences,
    validate_user_preferences,
)
from missive.schemas import ConversationPreferences, NotificationPreferences
from missive.validation import require_uuid

NOTIFICATION_LIST_DEFAULT = 50
"""In-app notifications ``notification:list`` returns when no limit is given."""

NOTIFICATION_LIST_MAX = 100
"""Most in-app notifications one ``notification:list`` returns."""

Preferences = TypeVar("Preferences", NotificationPreferences, ConversationPreferences)


class NotificationEvents:
    """A user's notification settings, their in-app notifications and their devices."""

    def __init__(self, gateway: Context) -> None:
        self._gateway = gateway

    def handlers(self) -> dict[str, Handler]:
        """The events this class answers, by name."""
        return {
            EVENT_NOTIFICATION_PREFERENCES: self.preferences,
            EVENT_NOTIFICATION_LIST: self.notifications,
            EVENT_DEVICE_REGISTER: self.register_device,
            EVENT_DEVICE_UNREGISTER: self.unregister_device,
        }

    async def preferences(self, sid: str, data: object) -> Ack:
        """``notification:preferences``: reads or changes preferences; acks those now stored.

        Without ``conversation_id`` the user's own, with it their overrides for that
        conversation; ``set`` changes only the fields it names, ``timezone`` the user's
        timezone. Everything is checked before anything is stored.
        """
        user_id = await self._gateway.user_of(sid)
        payload = optional_object(data)
        unknown = sorted(set(payload) - {"conversation_id", "set", "timezone"})
        if unknown:
            raise InvalidInput(
                f"unknown field {', '.join(unknown)}: give conversation_id, set or timezone"
            )
        changes = payload.get("set", {})
        if not isinstance(changes, dict):
            raise InvalidInput("set must be an object of preference fields and their values")
        preferences = self._gateway.services().core.preferences
        if payload.get("conversation_id") is not None:
            if "timezone" in payload:
                raise InvalidInput("timezone is the user's, not a conversation's: omit one")
            conversation_id = require_uuid(payload["conversation_id"], "conversation_id")
            overrides = await preferences.get_conversation(user_id, conversation_id)
            if changes:
                overrides = _changed(overrides, changes)
                validate_conversation_preferences(overrides)
                await preferences.set_conversation(user_id, conversation_id, overrides)
            return {
                "ok": True,
                "conversation_id": conversation_id,
                "preferences": asdict(overrides),
            }
        timezone = require_timezone(payload["timezone"]) if "timezone" in payload else None
        current = await preferences.get_user(user_id)
        if changes:
            current = _changed(current, changes)
            validate_user_preferences(current)
        if timezone is not None:
            await preferences.set_timezone(user_id, timezone)
        if changes:
            await preferences.set_user(user_id, current)
        ack: Ack = {"ok": True, "preferences": asdict(current)}
        if timezone is not None:
            ack["timezone"] = timezone
        return ack

    async def notifications(self, sid: str, data: object) -> Ack:
        """``notification:list``: the user's in-app notifications (newest first), unread count."""
        user_id = await self._gateway.user_of(sid)
        payload = optional_object(data)
        limit = payload.get("limit", NOTIFICATION_LIST_DEFAULT)
        if isinstance(limit, bool) or not isinstance(limit, int):
            raise InvalidInput(f"limit must be an integer, got {limit!r}")
        if not 1 <= limit <= NOTIFICATION_LIST_MAX:
            raise InvalidInput(f"limit must be between 1 and {NOTIFICATION_LIST_MAX}, got {limit}")
        unread_only = payload.get("unread_only", False)
        if not isinstance(unread_only, bool):
            raise InvalidInput(f"unread_only must be true or false, got {unread_only!r}")
        log = self._gateway.services().core.notifications
        rows = await log.in_app(user_id, limit=limit, unread_only=unread_only)
        unread = await log.unread_count(user_id)
        return {
            "ok": True,
            "unread_count": unread,
            "notifications": [_notification_json(row) for row in rows],
        }

    async def register_device(self, sid: str, data: object) -> Ack:
        """``device:register``: adds a push token (again: refreshed; another user's: moved here)."""
        user_id = await self._gateway.user_of(sid)
        payload = require_object(data)
        platform = require_platform(payload.get("platform"))
        token = require_push_token(payload.get("token"))
        preferences = self._gateway.services().core.preferences
        device_id = await preferences.register_device(user_id, platform.value, token)
        return {"ok": True, "device_id": device_id}

    async def unregister_device(self, sid: str, data: object) -> Ack:
        """``device:unregister``: forgets one of the user's push tokens (no more pushes to it)."""
        user_id = await self._gateway.user_of(sid)
        payload = require_object(data)
        token = require_push_token(payload.get("token"))
        preferences = self._gateway.services().core.preferences
        return {"ok": True, "removed": await preferences.remove_device(token, user_id=user_id)}


def _changed(current: Preferences, changes: dict[str, Any]) -> Preferences:
    """``current`` with the fields ``changes`` names replaced (types are checked later)."""
    known = [f.name for f in fields(current)]
    unknown = sorted(set(changes) - set(known))
    if unknown:
        raise InvalidInput(
            f"unknown preference {', '.join(unknown)}; the fields are {', '.join(known)}"
        )
    return replace(current, **changes)


def _notification_json(row: NotificationRow) -> dict[str, Any]:
    return {
        "notification_id": row.id,
        "conversation_id": row.conversation_id,
        "message_id": row.message_id,
        "status": row.status.value,
        "created_at": row.created_at.isoformat(),
        "read_at": row.read_at.isoformat() if row.read_at is not None else None,
    }
