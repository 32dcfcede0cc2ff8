"""Who is in a conversation, and who may change that: create, add, remove, leave, roles.

One transaction per change, with the conversation's row locked, so two changes of
one conversation (two admins removing the last two owners, say) are taken one
after the other and the rules hold for the second too.

The rules (the README's users and conversations contract):

* **create**: the actor becomes the owner (a back-end service's conversation is
  owned by its first member); a direct conversation has the actor and exactly one
  other user and is found rather than made twice.
* **add**: any member of a group, an owner or admin of a channel; never a direct one.
* **remove**: an owner or admin, but only an owner removes an owner.
* **leave**: any member, except the last owner while others remain.
* **set_role**: owners only; the last owner keeps the role.
"""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_sessionmaker

from missive.constants import conversation_id_for
from missive.crypto import MessageCipher
from missive.errors import ConversationNotFound, InvalidInput, NotAllowed, NotAMember, UserNotFound
from missive.models import ConversationKind, EncryptionMode, ParticipantRole
from missive.schemas import (
    ConversationSummary,
    MembershipAction,
    MembershipInput,
    MembershipResult,
)
from missive.services.directory import direct_conversation_id
from missive.validation import require_uuid

MAX_MEMBERS_PER_CHANGE = 1000
"""Most users one create or add names."""

MAX_TITLE_CHARS = 200
"""Longest conversation title (the column's width)."""

_MANAGERS = (ParticipantRole.OWNER.value, ParticipantRole.ADMIN.value)

_LOCK = text(
    """
    SELECT c.kind::text AS kind, c.title, c.encryption_mode::text AS encryption_mode,
           c.last_seq, now() AS now
    FROM conversations c WHERE c.id = :cid FOR UPDATE
    """
)

_ROLES = text(
    "SELECT user_id::text AS user_id, role::text AS role FROM participants"
    " WHERE conversation_id = :cid"
)

_USERS = text("SELECT id::text FROM users WHERE id = ANY(CAST(:ids AS uuid[]))")

_ADD = text(
    """
    INSERT INTO participants (conversation_id, user_id, role, delivered_seq, read_seq)
    SELECT :cid, u.id, CAST(u.role AS participant_role), c.last_seq, c.last_seq
    FROM unnest(CAST(:ids AS uuid[]), CAST(:roles AS text[])) AS u(id, role),
         conversations c
    WHERE c.id = :cid
    ON CONFLICT DO NOTHING
    """
)

_FIND_DIRECT = text(
    """
    SELECT c.id::text FROM conversations c
    JOIN participants a ON a.conversation_id = c.id AND a.user_id = :a
    JOIN participants b ON b.conversation_id = c.id AND b.user_id = :b
    WHERE c.kind = 'direct' AND c.encryption_mode = CAST(:mode AS encryption_mode)
      AND (SELECT count(*) FROM participants o WHERE o.conversation_id = c.id) = 2
    ORDER BY c.created_at, c.id
    LIMIT 1
    """
)


@dataclass(frozen=True)
class _Conversation:
    kind: str
    title: str | None
    encryption_mode: str
    last_seq: int
    roles: dict[str, str]
    """Member -> role, as the change leaves them."""
    now: datetime
    """The transaction's time: when the change is made."""


class MembershipService:
    """Applies membership changes by the rules above; each is idempotent."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], cipher: MessageCipher):
        self._sessions = sessions
        self._cipher = cipher

    async def apply(self, req: MembershipInput) -> MembershipResult:
        """Applies one change; a rerun of a change already made reports ``changed`` False.

        Raises:
            InvalidInput: a malformed id, kind, role or title, too many users.
            ConversationNotFound: no such conversation.
            UserNotFound: a user to add does not exist (nothing is written).
            NotAMember: the actor (or the member to change) is not in the conversation.
            NotAllowed: the actor's role does not permit it, or it would leave no owner.
        """
        actor = require_uuid(req.actor_id, "actor_id") if req.actor_id is not None else None
        users = [require_uuid(u, "user_ids[]") for u in req.user_ids]
        users = list(dict.fromkeys(users))
        if len(users) > MAX_MEMBERS_PER_CHANGE:
            raise InvalidInput(
                f"user_ids names {len(users)} users; at most {MAX_MEMBERS_PER_CHANGE}"
            )
        if req.action is MembershipAction.CREATE:
            return await self._create(req, actor, users)
        if req.conversation_id is None:
            raise InvalidInput(f"conversation_id is required to {req.action.value}")
        cid = require_uuid(req.conversation_id, "conversation_id")
        async with self._sessions() as session, session.begin():
            conn = await session.connection()
            conv = await _locked(conn, cid)
            if actor is not None and actor not in conv.roles:
                raise NotAMember(f"user {actor} is not a member of conversation {cid}")
            if (
                conv.kind == ConversationKind.DIRECT.value
                and req.action is not MembershipAction.SET_ROLE
            ):
                raise NotAllowed(
                    "a direct conversation's members do not change: create a group instead"
                )
            if req.action is MembershipAction.ADD:
                return await self._add(conn, req, cid, conv, actor, users)
            if req.action is MembershipAction.LEAVE:
                if actor is None:
                    raise InvalidInput("leave needs actor_id (a service removes with remove)")
                return await self._remove(conn, req, cid, conv, actor, actor)
            target = _one(users, req.action)
            if req.action is MembershipAction.REMOVE:
                return await self._remove(conn, req, cid, conv, actor, target)
            return await self._set_role(conn, req, cid, conv, actor, target)

    async def _create(
        self, req: MembershipInput, actor: str | None, users: list[str]
    ) -> MembershipResult:
        kind = _choice(ConversationKind, req.kind, "kind")
        mode = _choice(EncryptionMode, req.encryption_mode, "encryption_mode")
        title = req.title
        if title is not None and (not isinstance(title, str) or len(title) > MAX_TITLE_CHARS):
            raise InvalidInput(f"title must be a string of at most {MAX_TITLE_CHARS} characters")
        members = list(dict.fromkeys(([actor] if actor else []) + users))
        if not members:
            raise InvalidInput("user_ids: a conversation needs at least one member")
        owner = members[0]
        if kind is ConversationKind.DIRECT:
            if len(members) != 2:
                raise InvalidInput(
                    "a direct conversation has exactly two members: the creator and one other"
                    f" user (got {len(members)})"
                )
            cid = (
                direct_conversation_id(*members)
                if mode is EncryptionMode.STANDARD
                else str(uuid.uuid5(uuid.UUID(direct_conversation_id(*members)), mode.value))
            )
        elif req.client_conversation_id is not None:
            if not isinstance(req.client_conversation_id, str) or not (
                1 <= len(req.client_conversation_id) <= 128
            ):
                raise InvalidInput("client_conversation_id must be a string of 1-128 characters")
            cid = conversation_id_for(actor or "service", req.client_conversation_id)
        else:
            cid = str(uuid.uuid4())
        async with self._sessions() as session, session.begin():
            conn = await session.connection()
            await _require_users(conn, members)
            if kind is ConversationKind.DIRECT:
                found = (
                    await conn.execute(
                        _FIND_DIRECT, {"a": members[0], "b": members[1], "mode": mode.value}
                    )
                ).scalar()
                if found is not None:
                    cid = found
            wrapped = self._cipher.new_data_key(cid, 1)
            inserted = (
                await conn.execute(
                    text(
                        "INSERT INTO conversations (id, kind, title, encryption_mode, key_version)"
                        " VALUES (:cid, CAST(:kind AS conversation_kind), :title,"
                        " CAST(:mode AS encryption_mode), 1)"
                        " ON CONFLICT (id) DO NOTHING RETURNING id"
                    ),
                    {"cid": cid, "kind": kind.value, "title": title, "mode": mode.value},
                )
            ).scalar()
            if inserted is None:  # a retry, or the pair's direct conversation exists
                conv = await _locked(conn, cid)
                return _result(req, cid, conv, actor, changed=False, at=conv.now)
            await conn.execute(
                text(
                    "INSERT INTO conversation_keys (conversation_id, version, master_key_version,"
                    " wrapped_key) VALUES (:cid, 1, :master, :wrapped)"
                ),
                {"cid": cid, "master": wrapped.master_key_version, "wrapped": wrapped.wrapped},
            )
            roles = [
                ParticipantRole.OWNER.value
                if m == owner and kind is not ConversationKind.DIRECT
                else ParticipantRole.MEMBER.value
                for m in members
            ]
            await conn.execute(_ADD, {"cid": cid, "ids": members, "roles": roles})
            conv = await _locked(conn, cid)
            return _result(
                req,
                cid,
                conv,
                actor,
                changed=True,
                at=conv.now,
                added=members,
                created=True,
            )

    async def _add(
        self,
        conn: AsyncConnection,
        req: MembershipInput,
        cid: str,
        conv: _Conversation,
        actor: str | None,
        users: list[str],
    ) -> MembershipResult:
        if not users:
            raise InvalidInput("user_ids: name at least one user to add")
        if actor is not None and conv.kind == ConversationKind.CHANNEL.value:
            if conv.roles[actor] not in _MANAGERS:
                raise NotAllowed(f"only an owner or admin adds members to channel {cid}")
        await _require_users(conn, users)
        new = [u for u in users if u not in conv.roles]
        already = [u for u in users if u in conv.roles]
        if new:
            roles = [ParticipantRole.MEMBER.value] * len(new)
            await conn.execute(_ADD, {"cid": cid, "ids": new, "roles": roles})
            conv = dataclasses.replace(conv, roles={**conv.roles, **dict.fromkeys(new, roles[0])})
        return _result(
            req,
            cid,
            conv,
            actor,
            changed=bool(new),
            at=conv.now,
            added=new,
            already=already,
        )

    async def _remove(
        self,
        conn: AsyncConnection,
        req: MembershipInput,
        cid: str,
        conv: _Conversation,
        actor: str | None,
        target: str,
    ) -> MembershipResult:
        role = conv.roles.get(target)
        if role is None:  # removed before (a retry) or never a member
            return _result(req, cid, conv, actor, changed=False, at=conv.now)
        if actor is not None and actor != target:
            mine = conv.roles[actor]
            if mine not in _MANAGERS:
                raise NotAllowed(f"only an owner or admin removes members of conversation {cid}")
            if role == ParticipantRole.OWNER.value and mine != ParticipantRole.OWNER.value:
                raise NotAllowed(f"only an owner removes an owner of conversation {cid}")
        if len(conv.roles) > 1:  # the last member may leave: nobody is left to own it
            _keep_an_owner(conv, cid, target)
        await conn.execute(
            text("DELETE FROM participants WHERE conversation_id = :cid AND user_id = :uid"),
            {"cid": cid, "uid": target},
        )
        conv = dataclasses.replace(conv, roles={u: r for u, r in conv.roles.items() if u != target})
        return _result(req, cid, conv, actor, changed=True, at=conv.now, removed=[target])

    async def _set_role(
        self,
        conn: AsyncConnection,
        req: MembershipInput,
        cid: str,
        conv: _Conversation,
        actor: str | None,
        target: str,
    ) -> MembershipResult:
        role = _choice(ParticipantRole, req.role, "role")
        if conv.kind == ConversationKind.DIRECT.value:
            raise NotAllowed("a direct conversation has no roles")
        if actor is not None and conv.roles[actor] != ParticipantRole.OWNER.value:
            raise NotAllowed(f"only an owner changes roles in conversation {cid}")
        current = conv.roles.get(target)
        if current is None:
            raise NotAMember(f"user {target} is not a member of conversation {cid}")
        if current == role.value:
            return _result(
                req,
                cid,
                conv,
                actor,
                changed=False,
                at=conv.now,
                role=role.value,
                member_id=target,
            )
        _keep_an_owner(conv, cid, target)
        await conn.execute(
            text(
                "UPDATE participants SET role = CAST(:role AS participant_role)"
                " WHERE conversation_id = :cid AND user_id = :uid"
            ),
            {"cid": cid, "uid": target, "role": role.value},
        )
        return _result(
            req,
            cid,
            conv,
            actor,
            changed=True,
            at=conv.now,
            role=role.value,
            member_id=target,
        )


async def _locked(conn: AsyncConnection, cid: str) -> _Conversation:
    row = (await conn.execute(_LOCK, {"cid": cid})).one_or_none()
    if row is None:
        raise ConversationNotFound(f"conversation {cid} does not exist")
    roles = {r.user_id: r.role for r in await conn.execute(_ROLES, {"cid": cid})}
    return _Conversation(row.kind, row.title, row.encryption_mode, row.last_seq, roles, row.now)


def _keep_an_owner(conv: _Conversation, cid: str, target: str) -> None:
    """Refuses a change that would take the owner role from the last one who has it."""
    owners = [u for u, r in conv.roles.items() if r == ParticipantRole.OWNER.value]
    if owners == [target]:
        raise NotAllowed(
            f"user {target} is the last owner of conversation {cid}: make another member"
            " owner first (set_role)"
        )


async def _require_users(conn: AsyncConnection, users: list[str]) -> None:
    found = set((await conn.execute(_USERS, {"ids": users})).scalars())
    missing = [u for u in users if u not in found]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise UserNotFound(f"user {missing[0]} does not exist{more}")


def _one(users: list[str], action: MembershipAction) -> str:
    if len(users) != 1:
        raise InvalidInput(
            f"{action.value} takes exactly one user id in user_ids, got {len(users)}"
        )
    return users[0]


E = TypeVar("E", ConversationKind, EncryptionMode, ParticipantRole)


def _choice(enum: type[E], value: object, name: str) -> E:
    try:
        return enum(str(value))
    except ValueError:
        allowed = ", ".join(m.value for m in enum)
        raise InvalidInput(f"{name} must be one of {allowed}, got {value!r}") from None


def _result(
    req: MembershipInput,
    cid: str,
    conv: _Conversation,
    actor: str | None,
    *,
    changed: bool,
    at: datetime,
    added: list[str] | None = None,
    already: list[str] | None = None,
    removed: list[str] | None = None,
    role: str | None = None,
    member_id: str | None = None,
    created: bool = False,
) -> MembershipResult:
    return MembershipResult(
        action=req.action,
        conversation=ConversationSummary(
            conversation_id=cid,
            kind=conv.kind,
            title=conv.title,
            encryption_mode=conv.encryption_mode,
            member_count=len(conv.roles),
            last_seq=conv.last_seq,
        ),
        changed=changed,
        changed_at=at,
        actor_id=actor,
        added=added or [],
        already_members=already or [],
        removed=removed or [],
        role=role,
        member_id=member_id,
        created=created,
    )
