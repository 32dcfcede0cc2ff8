"""``python -m starter``: send, report receipts, read a lifecycle, issue a gateway token.

Settings come from the environment. A refused request exits 2, an unreachable
dependency exits 1, each with one line on stderr (JSON with ``--json``).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import json
import logging
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from missive.config import Settings
from missive.errors import InvalidInput, MessagingError, PermanentError
from missive.schemas import MessageStatus, ReceiptResult, ReceiptStatus
from missive.tokens import issue_token
from missive.validation import require_client_message_id, require_uuid
from starter import batch_cli, directory_cli, ops_cli
from starter import keys as starter_keys
from starter import search as starter_search
from starter import sessions as starter_sessions
from starter.client import (
    DEFAULT_TIMEOUT,
    MissiveClient,
    SendResult,
    lifecycle_workflow_id,
    receipt_input,
    send_input,
    timeout_option,
)

EXIT_OK = 0
EXIT_UNAVAILABLE = 1
"""A dependency (Temporal, a worker) did not answer: trying later may work."""
EXIT_REFUSED = 2
"""The request was refused (bad input, not a member, ...): retrying cannot help."""

MAX_TOKEN_TTL_SECONDS = 10 * 365 * 86_400
"""The longest-lived token ``token --ttl`` issues (ten years)."""

log = logging.getLogger("missive.starter")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m starter``."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print machine-readable JSON")
    common.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT.total_seconds(),
        metavar="SECONDS",
        help="how long to wait for a worker's answer (default %(default)g)",
    )
    parser = argparse.ArgumentParser(
        prog="python -m starter",
        description="Missive's command line: send messages, report receipts, read lifecycles.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    send = commands.add_parser("send", parents=[common], help="send a message, wait for its ack")
    send.add_argument("--conversation", required=True, metavar="C", help="conversation id")
    send.add_argument("--sender", required=True, metavar="U", help="sending user id")
    send.add_argument(
        "--client-id", required=True, metavar="X", help="the sender's id for this message"
    )
    body = send.add_mutually_exclusive_group(required=True)
    body.add_argument("--body", metavar="TEXT", help="the message text")
    body.add_argument("--body-file", metavar="PATH", help="read the text from a file ('-': stdin)")
    send.add_argument(
        "--e2e-header",
        metavar="JSON",
        help="e2e conversations: the key metadata (the body is then the base64 ciphertext)",
    )

    for name, what in (("delivered", "received"), ("read", "read")):
        receipt = commands.add_parser(
            name, parents=[common], help=f"report that a user {what} messages up to a watermark"
        )
        receipt.add_argument("--user", required=True, metavar="U", help="reporting user id")
        receipt.add_argument("--conversation", required=True, metavar="C", help="conversation id")
        mark = receipt.add_mutually_exclusive_group(required=True)
        mark.add_argument("--up-to", type=int, metavar="N", help="every message with seq <= N")
        mark.add_argument("--message", metavar="M", help="every message up to this one")

    status = commands.add_parser("status", parents=[common], help="where a message's lifecycle is")
    status.add_argument("--message", metavar="M", help="the message's server id")
    status.add_argument("--sender", metavar="U", help="the sender (with --client-id)")
    status.add_argument("--client-id", metavar="X", help="the sender's id for the message")

    token = commands.add_parser("token", parents=[common], help="print a gateway token for a user")
    token.add_argument("user_id", metavar="USER_ID")
    token.add_argument(
        "--ttl", type=int, metavar="SECONDS", help="lifetime (default GATEWAY_TOKEN_TTL_SECONDS)"
    )
    revoke = commands.add_parser(
        "revoke-tokens",
        parents=[common],
        help="refuse every gateway token of a user issued until now, close their sockets",
    )
    revoke.add_argument("user_id", metavar="USER_ID")
    starter_keys.add_parser(commands, common)
    starter_search.add_parsers(commands, common)
    batch_cli.add_parsers(commands, common)
    directory_cli.add_parsers(commands, common)
    ops_cli.add_parsers(commands, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs one command; returns the exit code (the caller passes it to sys.exit)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "status" and (
        (args.message is None) == (args.sender is None)
        or (args.sender is None) != (args.client_id is None)
    ):
        parser.error("status takes --message M, or --sender U with --client-id X")
    try:
        settings = Settings()
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(part) for part in first["loc"]).upper() or "settings"
        return _report(InvalidInput(f"{where}: {first['msg']}"), as_json=args.json)
    if settings.log_level.upper() == "DEBUG":
        logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)
    # Errors are caught inside the loop and turned into an exit code, so nothing
    # holding the SDK's runtime is alive when the interpreter exits (sdk-python #300).
    try:
        return asyncio.run(_run(args, settings))
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


async def _run(args: argparse.Namespace, settings: Settings) -> int:
    code = await _run_command(args, settings)
    # The Temporal client sits in reference cycles (and in the caught error's
    # traceback): collect it now, while the SDK's runtime can still drop it
    # cleanly, not during interpreter shutdown, where it can abort the process
    # (sdk-python #300).
    gc.collect()
    return code


async def _run_command(args: argparse.Namespace, settings: Settings) -> int:
    try:
        await COMMANDS[args.command](args, settings)
    except MessagingError as err:
        return _report(err, as_json=args.json)
    except Exception as err:
        log.debug("unexpected error", exc_info=True)
        reason = (str(err).splitlines() or [""])[0][:300]
        line = f"error: unexpected {type(err).__name__}: {reason} (LOG_LEVEL=DEBUG shows more)"
        print(line, file=sys.stderr)
        return EXIT_UNAVAILABLE
    return EXIT_OK


def _report(err: MessagingError, *, as_json: bool) -> int:
    """One line on stderr; the exit code tells refused (2) from unavailable (1)."""
    message = " ".join(str(err).split())
    if as_json:
        print(json.dumps({"error": err.type, "message": message}), file=sys.stderr)
    else:
        print(f"error: {err.type}: {message}", file=sys.stderr)
    return EXIT_REFUSED if isinstance(err, PermanentError) else EXIT_UNAVAILABLE


async def _connect(args: argparse.Namespace, settings: Settings) -> MissiveClient:
    return await MissiveClient.connect(settings, call_timeout=timeout_option(args.timeout))


async def _send(args: argparse.Namespace, settings: Settings) -> None:
    body = args.body if args.body is not None else _read_body(args.body_file)
    fields = {
        "conversation_id": args.conversation,
        "sender_id": args.sender,
        "client_message_id": args.client_id,
        "body": body,
    }
    if args.e2e_header is not None:
        fields["e2e_header"] = _json_object(args.e2e_header, "--e2e-header")
    send_input(settings, **fields)  # a malformed request never waits on a connection
    async with await _connect(args, settings) as missive:
        sent = await missive.send(**fields)
    _print(args, sent, _describe_send(sent))


async def _receipt(args: argparse.Namespace, settings: Settings) -> None:
    status = ReceiptStatus(args.command)
    watermark: dict[str, Any] = {"up_to_seq": args.up_to, "message_id": args.message}
    receipt_input(
        settings, user_id=args.user, conversation_id=args.conversation, status=status, **watermark
    )
    async with await _connect(args, settings) as missive:
        mark = missive.mark_read if status is ReceiptStatus.READ else missive.mark_delivered
        result = await mark(args.user, args.conversation, **watermark)
    _print(args, result, _describe_receipt(status, result))


async def _status(args: argparse.Namespace, settings: Settings) -> None:
    if args.message is not None:
        lifecycle_workflow_id(args.message)
    else:
        require_uuid(args.sender, "sender_id")
        require_client_message_id(args.client_id)
    async with await _connect(args, settings) as missive:
        if args.message is not None:
            state = await missive.status_by_message_id(args.message)
        else:
            state = await missive.status(args.sender, args.client_id)
    _print(args, state, _describe_status(state))


async def _token(args: argparse.Namespace, settings: Settings) -> None:
    ttl = args.ttl if args.ttl is not None else settings.gateway_token_ttl_seconds
    if not 0 < ttl <= MAX_TOKEN_TTL_SECONDS:
        raise InvalidInput(
            f"--ttl must be more than 0 and at most {MAX_TOKEN_TTL_SECONDS} seconds, got {ttl}"
        )
    user_id = require_uuid(args.user_id, "user_id")
    now = time.time()
    token = issue_token(settings.gateway_secret, user_id, ttl_seconds=ttl, now=now)
    expires_at = datetime.fromtimestamp(int(now + ttl), UTC)
    _print(args, {"user_id": user_id, "token": token, "expires_at": expires_at}, token)


async def _revoke_tokens(args: argparse.Namespace, settings: Settings) -> None:
    done = await starter_sessions.revoke_tokens(settings, args.user_id)
    _print(
        args,
        {"user_id": done.user_id, "tokens_valid_after": done.tokens_valid_after},
        f"revoked the tokens of {done.user_id} issued before"
        f" {done.tokens_valid_after.isoformat()}; their sockets are closed",
    )


async def _keys(args: argparse.Namespace, settings: Settings) -> None:
    # Rotations run as long as the data takes: wait for them (Ctrl-C leaves them running).
    async with await _connect(args, settings) as missive:
        result, text = await starter_keys.run(args, missive.temporal)
    _print(args, result, text)


async def _search(args: argparse.Namespace, settings: Settings) -> None:
    if args.command == "search":
        starter_search.query_from_args(args)  # a malformed query never waits on a connection
    async with await _connect(args, settings) as missive:
        result, text = await starter_search.run(args, missive.temporal, settings)
    _print(args, result, text)


def _json_object(raw: str, option: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        raise InvalidInput(f"{option} is not JSON") from None
    if not isinstance(value, dict):
        raise InvalidInput(f"{option} must be a JSON object")
    return value


COMMANDS = {
    "send": _send,
    "delivered": _receipt,
    "read": _receipt,
    "status": _status,
    "token": _token,
    "revoke-tokens": _revoke_tokens,
    "keys": _keys,
    "search": _search,
    "search-check": _search,
    "search-rebuild": _search,
    "batch": batch_cli.run_batch,
    "users": directory_cli.run_users,
    "conversations": directory_cli.run_conversations,
    "retention": batch_cli.run_retention,
    **ops_cli.COMMANDS,
}


def _read_body(path: str) -> str:
    try:
        if path == "-":
            return sys.stdin.read()
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise InvalidInput(f"--body-file {path}: {err}") from None


def _print(args: argparse.Namespace, result: object, text: str) -> None:
    if args.json:
        data = dataclasses.asdict(result) if dataclasses.is_dataclass(result) else result  # type: ignore[arg-type]
        print(json.dumps(data, default=_json_default, indent=2))
    else:
        print(text)


def _json_default(value: object) -> object:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _describe_send(sent: SendResult) -> str:
    when = f" at {sent.created_at.isoformat()}" if sent.created_at else ""
    again = " (duplicate: already sent)" if sent.duplicate else ""
    return (
        f"message {sent.message_id} is seq {sent.seq} in conversation "
        f"{sent.conversation_id}{when}{again}"
    )


def _describe_receipt(status: ReceiptStatus, result: ReceiptResult) -> str:
    return (
        f"{status.value} up to seq {result.up_to_seq}: {result.changed} message(s) changed, "
        f"{result.notified_lifecycles} lifecycle(s) told"
    )


def _describe_status(state: MessageStatus) -> str:
    lines = [
        f"message {state.message_id or '-'} (seq {state.seq if state.seq is not None else '-'}) "
        f"in conversation {state.conversation_id or '-'}: {state.phase.value}",
        f"recipients {state.recipient_count}, delivered {state.delivered_count}, "
        f"read {state.read_count}",
    ]
    if state.error:
        lines.append(f"rejected: {state.error}")
    for recipient, rs in sorted(state.recipients.items()):
        stamps = [
            f"{name} {at.isoformat()}"
            for name, at in (("delivered", rs.delivered_at), ("read", rs.read_at))
            if at is not None
        ]
        lines.append(f"  {recipient}  {rs.status}" + (f"  ({', '.join(stamps)})" if stamps else ""))
    if not state.per_recipient:
        lines.append("  (large conversation: per-recipient state is in the database)")
    return "\n".join(lines)
