"""``python -m starter users ...`` and ``python -m starter conversations ...``: provisioning.

A back-end service creates and updates users, and creates conversations and
changes their members, through the same workflows the gateway runs for clients.
Each command prints what is stored now (``--json`` for the whole result).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Awaitable, Callable
from typing import Any

from missive.config import Settings
from missive.errors import InvalidInput
from missive.schemas import MembershipResult, UserProfile
from starter.client import MissiveClient, timeout_option

_PROFILE = ("display_name", "email", "phone", "timezone", "locale")


def add_parsers(commands: Any, common: argparse.ArgumentParser) -> None:
    """Adds ``users`` and ``conversations`` to the starter's subcommands."""
    users = commands.add_parser("users", help="create and update users")
    user_commands = users.add_subparsers(dest="users_command", required=True, metavar="ACTION")
    create = user_commands.add_parser("create", parents=[common], help="create a user")
    create.add_argument("--handle", required=True, help="unique handle (1-64 characters)")
    create.add_argument(
        "--client-id", metavar="X", help="your system's id for the user (a retry makes one user)"
    )
    update = user_commands.add_parser("update", parents=[common], help="change a user's fields")
    update.add_argument("user_id", metavar="USER_ID")
    update.add_argument("--handle", help="a new unique handle")
    for p in (create, update):
        p.add_argument("--display-name", metavar="NAME", help="the shown name")
        p.add_argument("--email", help="email address ('' clears it)")
        p.add_argument("--phone", help="E.164 phone number ('' clears it)")
        p.add_argument("--timezone", metavar="TZ", help="IANA timezone, like Europe/Paris")
        p.add_argument("--locale", help="language tag, like en or pt-BR")

    conversations = commands.add_parser(
        "conversations", help="create conversations, manage members"
    )
    sub = conversations.add_subparsers(
        dest="conversations_command", required=True, metavar="ACTION"
    )
    new = sub.add_parser("create", parents=[common], help="create a direct chat, group or channel")
    new.add_argument("--kind", required=True, choices=("direct", "group", "channel"))
    new.add_argument("--member", action="append", required=True, metavar="U", help="a member")
    new.add_argument("--title", help="groups and channels: the title")
    new.add_argument("--e2e", action="store_true", help="end-to-end encrypted by the clients")
    new.add_argument("--creator", metavar="U", help="the owner (default: the first --member)")
    new.add_argument(
        "--client-id", metavar="X", help="your id for it: a retry makes one conversation"
    )
    add = sub.add_parser("add", parents=[common], help="add members")
    add.add_argument("conversation_id", metavar="CONVERSATION_ID")
    add.add_argument("--user", action="append", required=True, metavar="U", help="a user to add")
    remove = sub.add_parser("remove", parents=[common], help="remove a member")
    remove.add_argument("conversation_id", metavar="CONVERSATION_ID")
    remove.add_argument("--user", required=True, metavar="U", help="the member to remove")
    role = sub.add_parser("role", parents=[common], help="make a member owner, admin or member")
    role.add_argument("conversation_id", metavar="CONVERSATION_ID")
    role.add_argument("--user", required=True, metavar="U", help="the member")
    role.add_argument("--role", required=True, choices=("owner", "admin", "member"))


async def run_users(args: argparse.Namespace, settings: Settings) -> None:
    """``users create`` / ``users update``."""
    fields = {name: getattr(args, name) for name in _PROFILE if getattr(args, name) is not None}
    async with await _connect(args, settings) as missive:
        if args.users_command == "create":
            user = await missive.create_user(args.handle, client_user_id=args.client_id, **fields)
        else:
            if args.handle is not None:
                fields["handle"] = args.handle
            if not fields:
                raise InvalidInput("users update: give at least one field to change")
            user = await missive.update_user(args.user_id, **fields)
    _print(args, user, _describe_user(user))


async def run_conversations(args: argparse.Namespace, settings: Settings) -> None:
    """``conversations create / add / remove / role``."""
    async with await _connect(args, settings) as missive:
        calls: dict[str, Callable[[], Awaitable[MembershipResult]]] = {
            "create": lambda: missive.create_conversation(
                args.kind,
                args.member,
                title=args.title,
                encryption_mode="e2e" if args.e2e else "standard",
                creator_id=args.creator,
                client_conversation_id=args.client_id,
            ),
            "add": lambda: missive.add_members(args.conversation_id, args.user),
            "remove": lambda: missive.remove_member(args.conversation_id, args.user),
            "role": lambda: missive.set_role(args.conversation_id, args.user, args.role),
        }
        result = await calls[args.conversations_command]()
    _print(args, result, _describe_change(result))


async def _connect(args: argparse.Namespace, settings: Settings) -> MissiveClient:
    return await MissiveClient.connect(settings, call_timeout=timeout_option(args.timeout))


def _print(args: argparse.Namespace, result: UserProfile | MembershipResult, text: str) -> None:
    if args.json:
        print(json.dumps(dataclasses.asdict(result), default=str, indent=2))
    else:
        print(text)


def _describe_user(user: UserProfile) -> str:
    verb = "created" if user.created else "stored"
    return (
        f"user {user.user_id} {verb}: @{user.handle} ({user.display_name}),"
        f" email {user.email or '-'}, phone {user.phone or '-'}, {user.timezone}, {user.locale}"
    )


def _describe_change(result: MembershipResult) -> str:
    c = result.conversation
    what = "changed" if result.changed else "unchanged (already so)"
    parts = [f"conversation {c.conversation_id} ({c.kind}, {c.member_count} members): {what}"]
    if result.added:
        parts.append(f"added {', '.join(result.added)}")
    if result.already_members:
        parts.append(f"already members: {', '.join(result.already_members)}")
    if result.removed:
        parts.append(f"removed {', '.join(result.removed)}")
    if result.role:
        parts.append(f"role {result.role}")
    return "; ".join(parts)
