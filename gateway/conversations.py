"""Conversation events: catch-up and history, the conversation list, edits, deletes, and
membership (create, add, remove, leave, roles).

Reads (``message:sync``, ``conversation:list``) come straight from PostgreSQL in
this process: no workflow. Changes run their workflow (runtime/conversations.py),
started eagerly so its local activities run here, and are acked when it completed:
a membership change's ack comes after the sockets moved rooms.
"""

from __future__ import annotations

from collections.abc import Awaitable
from datetime import timedelta
from typing import Any, TypeVar

import orjson

from gateway.acks import Ack, Handler, optional_object, require_object
from gateway.context import Context
from missive.broadcast import conversation_json
from missive.constants import (
    EVENT_CONVERSATION_ADD_MEMBERS,
    EVENT_CONVERSATION_CREATE,
    EVENT_CONVERSATION_LEAVE,
    EVENT_CONVERSATION_LIST,
    EVENT_CONVERSATION_REMOVE_MEMBER,
    EVENT_CONVERSATION_SET_ROLE,
    EVENT_MESSAGE_DELETE,
    EVENT_MESSAGE_EDIT,
    EVENT_MESSAGE_SYNC,
    TASK_QUEUE_PUSH,
)
from missive.e2e import require_e2e_header
from missive.errors import InvalidInput
from missive.notify.options import send_notify_options
from missive.schemas import (
    DeleteMessageInput,
    EditMessageInput,
    MembershipAction,
    MembershipInput,
    MembershipResult,
)
from missive.services.history import (
    SYNC_DEFAULT_LIMIT,
    ConversationState,
    SyncPage,
    SyncRequest,
)
from missive.services.membership import MAX_MEMBERS_PER_CHANGE
from missive.validation import require_body, require_uuid
from runtime.conversations import change_membership, delete_message, edit_message

T = TypeVar("T")

SYNC_MAX_CONVERSATIONS = 100
"""Most conversations one ``message:sync`` with ``conversations`` pages."""


class ConversationEvents:
    """What a client reads of its conversations and how it changes them."""

    def __init__(self, gateway: Context) -> None:
        self._gateway = gateway
        self._settings = gateway.settings
        options = send_notify_options(gateway.settings)
        self._push_queue = options.push_task_queue if options else TASK_QUEUE_PUSH

    def handlers(self) -> dict[str, Handler]:
        """The events this class answers, by name."""
        # A socket's changes apply in the order it sent them (Admission.in_order).
        in_order = self._gateway.admission.in_order
        return {
            EVENT_MESSAGE_SYNC: self.sync,
            EVENT_CONVERSATION_LIST: self.list,
            EVENT_MESSAGE_EDIT: in_order(self.edit),
            EVENT_MESSAGE_DELETE: in_order(self.delete),
            EVENT_CONVERSATION_CREATE: in_order(self.create),
            EVENT_CONVERSATION_ADD_MEMBERS: in_order(self.add_members),
            EVENT_CONVERSATION_REMOVE_MEMBER: in_order(self.remove_member),
            EVENT_CONVERSATION_LEAVE: in_order(self.leave),
            EVENT_CONVERSATION_SET_ROLE: in_order(self.set_role),
        }

    # -- reads ---------------------------------------------------------------

    async def sync(self, sid: str, data: object) -> Ack:
        """``message:sync``: a page of the conversation's messages, in seq order, gap-free.

        With ``conversations`` (a list of such requests, at most SYNC_MAX_CONVERSATIONS),
        one page of each in one event, as Matrix's /sync gives every room at once: a
        client back from offline catches up on all its conversations in one round trip.
        A conversation the user may not read answers its own error; the others their
        pages.
        """
        user_id = await self._gateway.user_of(sid)
        payload = require_object(data)
        if "conversations" not in payload:
            return {"ok": True, **await self._page(user_id, payload)}
        requests = payload["conversations"]
        if not isinstance(requests, list) or not requests:
            raise InvalidInput("conversations must be a non-empty list of sync requests")
        if len(requests) > SYNC_MAX_CONVERSATIONS:
            raise InvalidInput(
                f"conversations names {len(requests)} syncs; at most {SYNC_MAX_CONVERSATIONS}"
            )
        checked = [require_object(r) for r in requests]
        asked = [
            SyncRequest(
                conversation_id=require_uuid(
                    r.get("conversation_id"), "conversations[].conversation_id"
                ),
                after_seq=_optional_int(r, "after_seq"),
                before_seq=_optional_int(r, "before_seq"),
                limit=_limit(r),
            )
            for r in checked
        ]
        answers = await self._gateway.services().core.history.sync_many(user_id, asked)
        return {
            "ok": True,
            "conversations": [
                _page_json(request.conversation_id, answer)
                if isinstance(answer, SyncPage)
                else {
                    "conversation_id": request.conversation_id,
                    "error": {"type": answer.type, "message": str(answer)},
                }
                for request, answer in zip(asked, answers, strict=True)
            ],
        }

    async def _page(self, user_id: str, payload: dict[str, Any]) -> dict[str, Any]:
        conversation_id = require_uuid(payload.get("conversation_id"), "conversation_id")
        page = await self._gateway.services().core.history.sync(
            user_id,
            conversation_id,
            after_seq=_optional_int(payload, "after_seq"),
            before_seq=_optional_int(payload, "before_seq"),
            limit=_limit(payload),
        )
        return _page_json(conversation_id, page)

    async def list(self, sid: str, data: object) -> Ack:
        """``conversation:list``: the user's conversations and where the user stands."""
        user_id = await self._gateway.user_of(sid)
        optional_object(data)
        states = await self._gateway.services().core.history.conversations(user_id)
        return {"ok": True, "conversations": [_state_json(s) for s in states]}

    # -- edits and deletes -----------------------------------------------------

    async def edit(self, sid: str, data: object) -> Ack:
        """``message:edit``: the sender's new text, acked once stored and announced."""
        user_id = await self._gateway.user_of(sid)
        payload = require_object(data)
        body = payload.get("body")
        require_body(body, max_bytes=self._settings.max_body_bytes)
        assert isinstance(body, str)  # require_body checked it
        raw_header = payload.get("e2e_header")
        edit = EditMessageInput(
            conversation_id=require_uuid(payload.get("conversation_id"), "conversation_id"),
            message_id=require_uuid(payload.get("message_id"), "message_id"),
            editor_id=user_id,
            body=body,
            e2e_header=require_e2e_header(raw_header) if raw_header is not None else None,
        )
        result = await self._write(
            sid, user_id, edit_message(self._client(), edit, eager=True, rpc_timeout=self._rpc())
        )
        return {
            "ok": True,
            "message_id": result.message_id,
            "seq": result.seq,
            "edited_at": result.edited_at.isoformat(),
            "changed": result.changed,
        }

    async def delete(self, sid: str, data: object) -> Ack:
        """``message:delete``: by the sender or an owner or admin; deleting again answers
        the same ``deleted_at``."""
        user_id = await self._gateway.user_of(sid)
        payload = require_object(data)
        request = DeleteMessageInput(
            conversation_id=require_uuid(payload.get("conversation_id"), "conversation_id"),
            message_id=require_uuid(payload.get("message_id"), "message_id"),
            actor_id=user_id,
            push_task_queue=self._push_queue,
        )
        result = await self._write(
            sid,
            user_id,
            delete_message(self._client(), request, eager=True, rpc_timeout=self._rpc()),
        )
        return {
            "ok": True,
            "message_id": result.message_id,
            "seq": result.seq,
            "deleted_at": result.deleted_at.isoformat(),
            "changed": result.changed,
        }

    # -- membership ------------------------------------------------------------

    async def create(self, sid: str, data: object) -> Ack:
        """``conversation:create``: a direct chat, group or channel; the creator owns it."""
        user_id = await self._gateway.user_of(sid)
        payload = require_object(data)
        members = _user_ids(payload, "member_ids")
        request = MembershipInput(
            action=MembershipAction.CREATE,
            actor_id=user_id,
            user_ids=members,
            kind=_string(payload, "kind", required=True),
            title=_string(payload, "title"),
            encryption_mode=_string(payload, "encryption_mode") or "standard",
            client_conversation_id=_string(payload, "client_conversation_id"),
        )
        result = await self._membership(sid, user_id, request)
        return {**_membership_json(result), "created": result.created}

    async def add_members(self, sid: str, data: object) -> Ack:
        """``conversation:add_members``: the users join; their open sockets enter the room."""
        user_id = await self._gateway.user_of(sid)
        payload = require_object(data)
        request = MembershipInput(
            action=MembershipAction.ADD,
            actor_id=user_id,
            conversation_id=require_uuid(payload.get("conversation_id"), "conversation_id"),
            user_ids=_user_ids(payload, "user_ids"),
        )
        return _membership_json(await self._membership(sid, user_id, request))

    async def remove_member(self, sid: str, data: object) -> Ack:
        """``conversation:remove_member``: acked after the member's sockets left the room."""
        user_id = await self._gateway.user_of(sid)
        payload = require_object(data)
        request = MembershipInput(
            action=MembershipAction.REMOVE,
            actor_id=user_id,
            conversation_id=require_uuid(payload.get("conversation_id"), "conversation_id"),
            user_ids=[require_uuid(payload.get("user_id"), "user_id")],
        )
        return _membership_json(await self._membership(sid, user_id, request))

    async def leave(self, sid: str, data: object) -> Ack:
        """``conversation:leave``: the socket's user leaves."""
        user_id = await self._gateway.user_of(sid)
        payload = require_object(data)
        request = MembershipInput(
            action=MembershipAction.LEAVE,
            actor_id=user_id,
            conversation_id=require_uuid(payload.get("conversation_id"), "conversation_id"),
        )
        return _membership_json(await self._membership(sid, user_id, request))

    async def set_role(self, sid: str, data: object) -> Ack:
        """``conversation:set_role``: an owner makes a member owner, admin or member."""
        user_id = await self._gateway.user_of(sid)
        payload = require_object(data)
        request = MembershipInput(
            action=MembershipAction.SET_ROLE,
            actor_id=user_id,
            conversation_id=require_uuid(payload.get("conversation_id"), "conversation_id"),
            user_ids=[require_uuid(payload.get("user_id"), "user_id")],
            role=_string(payload, "role", required=True),
        )
        return _membership_json(await self._membership(sid, user_id, request))

    async def _membership(
        self, sid: str, user_id: str, request: MembershipInput
    ) -> MembershipResult:
        call = change_membership(self._client(), request, eager=True, rpc_timeout=self._rpc())
        return await self._write(sid, user_id, call)

    async def _write(self, sid: str, user_id: str, call: Awaitable[T]) -> T:
        """A change: admitted as a send is (in-flight caps, the user's send limit)."""
        admission = self._gateway.admission
        try:
            async with admission.admit(sid, user_id):
                return await admission.temporal_call(call)
        finally:
            if hasattr(call, "close"):  # never started (refused at admission)
                call.close()

    def _client(self) -> Any:
        return self._gateway.services().client

    def _rpc(self) -> timedelta:
        return timedelta(seconds=self._settings.gateway_ack_timeout_seconds)


def _page_json(conversation_id: str, page: SyncPage) -> dict[str, Any]:
    """The page for the ack. Its messages go encoded already (``orjson.Fragment``):
    python-socketio walks every value of an ack looking for bytes before encoding it,
    which for a thousand messages cost more than reading them; a fragment is one value."""
    return {
        "conversation_id": conversation_id,
        "messages": orjson.Fragment(orjson.dumps(page.messages)),
        "has_more": page.has_more,
        "last_seq": page.last_seq,
    }


def _optional_int(payload: dict[str, Any], name: str, default: int | None = None) -> int | None:
    value = payload.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"{name} must be an integer, got {value!r}"[:200])
    return value


def _limit(payload: dict[str, Any]) -> int:
    limit = _optional_int(payload, "limit")
    return SYNC_DEFAULT_LIMIT if limit is None else limit


def _string(payload: dict[str, Any], name: str, *, required: bool = False) -> str | None:
    value = payload.get(name)
    if value is None:
        if required:
            raise InvalidInput(f"{name} is required")
        return None
    if not isinstance(value, str):
        raise InvalidInput(f"{name} must be a string, got {type(value).__name__}")
    return value


def _user_ids(payload: dict[str, Any], name: str) -> list[str]:
    value = payload.get(name)
    if not isinstance(value, list):
        raise InvalidInput(f"{name} must be a list of user ids")
    if len(value) > MAX_MEMBERS_PER_CHANGE:
        raise InvalidInput(f"{name} names {len(value)} users; at most {MAX_MEMBERS_PER_CHANGE}")
    return [require_uuid(item, f"{name}[]") for item in value]


def _membership_json(result: MembershipResult) -> Ack:
    return {
        "ok": True,
        "conversation_id": result.conversation.conversation_id,
        "changed": result.changed,
        "added": result.added,
        "already_members": result.already_members,
        "removed": result.removed,
        "role": result.role,
        "conversation": conversation_json(result),
    }


def _state_json(state: ConversationState) -> dict[str, Any]:
    return {
        "conversation_id": state.conversation_id,
        "kind": state.kind,
        "title": state.title,
        "encryption_mode": state.encryption_mode,
        "role": state.role,
        "member_count": state.member_count,
        "last_seq": state.last_seq,
        "delivered_seq": state.delivered_seq,
        "read_seq": state.read_seq,
        "unread_count": state.unread_count,
        "muted": state.muted,
        "last_message_at": state.last_message_at.isoformat() if state.last_message_at else None,
    }
