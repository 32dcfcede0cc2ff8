"""``python -m starter batch ...`` and ``python -m starter retention ...``: the commands."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from missive.config import Settings
from missive.errors import InvalidInput
from missive.schemas import BatchProgress, BatchStatus
from runtime.messaging import domain_error
from starter.batch import BatchClient, BatchOptions, as_dict, progress_line

FOLLOW_INTERVAL_SECONDS = 1.0
"""How often ``--follow`` asks the batch for its progress."""

_ENDED = (BatchStatus.COMPLETED, BatchStatus.FAILED, BatchStatus.CANCELLED)


def add_parsers(commands: Any, common: argparse.ArgumentParser) -> None:
    """Adds ``batch`` and ``retention`` to the starter's subcommands."""
    batch = commands.add_parser("batch", help="large imports and announcements, run as batches")
    sub = batch.add_subparsers(dest="batch_command", required=True, metavar="ACTION")

    def run_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--batch-id", metavar="ID", help="name the batch (default: random)")
        p.add_argument("--chunk-size", type=int, metavar="N", help="items per chunk")
        p.add_argument("--concurrency", type=int, metavar="N", help="chunks running at once")
        p.add_argument(
            "--failure-threshold",
            type=float,
            metavar="F",
            help="share of items (0-1) that may fail before the batch fails",
        )
        p.add_argument("--follow", action="store_true", help="draw a progress bar until it ends")

    start = sub.add_parser("start", parents=[common], help="import a JSON-lines file of messages")
    start.add_argument("--file", required=True, metavar="PATH", help="the JSON-lines file")
    run_options(start)

    announce = sub.add_parser(
        "announce",
        parents=[common],
        help="send one message to many conversations, or to many users directly",
    )
    announce.add_argument("--sender", required=True, metavar="U", help="sending user id")
    announce.add_argument("--body", required=True, metavar="TEXT", help="the message text")
    targets = announce.add_mutually_exclusive_group(required=True)
    targets.add_argument(
        "--conversations-file",
        metavar="PATH",
        help="conversation ids, one per line ('-': stdin)",
    )
    targets.add_argument(
        "--users-file",
        metavar="PATH",
        help="user ids, one per line ('-': stdin): each gets the message in their direct "
        "conversation with the sender (created if there is none)",
    )
    run_options(announce)

    progress = sub.add_parser("progress", parents=[common], help="a batch's progress")
    progress.add_argument("batch_id", metavar="BATCH_ID")
    progress.add_argument("--follow", action="store_true", help="draw a progress bar until it ends")
    for name, what in (
        ("pause", "stop starting chunks (running ones finish)"),
        ("resume", "start chunks again"),
        ("cancel", "end the batch once its running chunks finish"),
    ):
        action = sub.add_parser(name, parents=[common], help=what)
        action.add_argument("batch_id", metavar="BATCH_ID")
    report = sub.add_parser("report", parents=[common], help="counts and failed items")
    report.add_argument("batch_id", metavar="BATCH_ID")
    report.add_argument("--limit", type=int, metavar="N", help="failed items to list")

    retention = commands.add_parser(
        "retention", help="message retention: schedule, restore, policy"
    )
    rsub = retention.add_subparsers(dest="retention_command", required=True, metavar="ACTION")
    schedule = rsub.add_parser(
        "schedule", parents=[common], help="the missive-retention Temporal Schedule"
    )
    schedule.add_argument("action", choices=["create", "describe", "pause", "unpause", "trigger"])
    restore = rsub.add_parser(
        "restore", parents=[common], help="bring a conversation's archived messages back"
    )
    restore.add_argument("--conversation", required=True, metavar="C", help="conversation id")
    restore.add_argument(
        "--hold", action="store_true", help="also put it on legal hold (kept from now on)"
    )
    policy = rsub.add_parser("set", parents=[common], help="a conversation's retention and hold")
    policy.add_argument("--conversation", required=True, metavar="C", help="conversation id")
    days = policy.add_mutually_exclusive_group()
    days.add_argument("--days", type=int, metavar="N", help="keep messages N days")
    days.add_argument(
        "--default-days", action="store_true", help="use RETENTION_DEFAULT_DAYS again"
    )
    hold = policy.add_mutually_exclusive_group()
    hold.add_argument("--hold", action="store_true", default=None, help="put on legal hold")
    hold.add_argument("--release", action="store_true", help="take off legal hold")


async def run_batch(args: argparse.Namespace, settings: Settings) -> None:
    """Runs one ``batch`` action."""
    async with await BatchClient.connect(settings) as client:
        action = args.batch_command
        if action in ("start", "announce"):
            options = BatchOptions(
                chunk_size=args.chunk_size,
                max_concurrent_chunks=args.concurrency,
                failure_threshold=args.failure_threshold,
            )
            if action == "start":
                started = await client.start_import(
                    Path(args.file), batch_id=args.batch_id, options=options
                )
            elif args.users_file is not None:
                started = await client.start_user_announcement(
                    args.sender,
                    args.body,
                    _read_ids(args.users_file, "--users-file"),
                    batch_id=args.batch_id,
                    options=options,
                )
            else:
                started = await client.start_announcement(
                    args.sender,
                    args.body,
                    _read_ids(args.conversations_file, "--conversations-file"),
                    batch_id=args.batch_id,
                    options=options,
                )
            again = "" if started.staged else " (already staged: joined it)"
            _out(
                args,
                started,
                f"batch {started.batch_id}: {started.total} items{again}; "
                f"workflow {started.workflow_id}",
            )
            if args.follow:
                await _follow(client, started.batch_id, args)
        elif action == "progress":
            if args.follow:
                await _follow(client, args.batch_id, args)
            else:
                state = await client.progress(args.batch_id)
                _out(args, state, progress_line(state))
        elif action in ("pause", "resume", "cancel"):
            await getattr(client, action)(args.batch_id)
            state = await client.progress(args.batch_id)
            _out(args, state, progress_line(state))
        elif action == "report":
            if args.limit is not None and args.limit <= 0:
                raise InvalidInput(f"--limit must be positive, got {args.limit}")
            report = await client.report(args.batch_id, limit=args.limit)
            lines = [
                f"batch {report.batch_id} ({report.kind}): {report.total} items, "
                f"{report.stored} stored, {report.failed} failed, {report.pending} pending"
            ]
            lines += [f"  line {f.line_no} (item {f.item_no}): {f.reason}" for f in report.failures]
            if report.failed > len(report.failures):
                lines.append(f"  ... and {report.failed - len(report.failures)} more")
            _out(args, report, "\n".join(lines))


async def _follow(client: BatchClient, batch_id: str, args: argparse.Namespace) -> None:
    """Draws a progress bar from the batch's query until it ends."""
    state = await client.progress(batch_id)
    if args.json:
        while state.status not in _ENDED:
            print(json.dumps(as_dict(state), default=_json_default), flush=True)
            await asyncio.sleep(FOLLOW_INTERVAL_SECONDS)
            state = await client.progress(batch_id)
        print(json.dumps(as_dict(state), default=_json_default), flush=True)
    else:
        console = Console(stderr=False)
        columns = (
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=console, transient=False) as bar:
            task = bar.add_task(
                f"batch {batch_id}", total=state.total, completed=state.processed, detail=""
            )
            while True:
                bar.update(task, completed=state.processed, detail=_detail(state))
                if state.status in _ENDED:
                    break
                await asyncio.sleep(FOLLOW_INTERVAL_SECONDS)
                state = await client.progress(batch_id)
        print(progress_line(state))
    if state.status is BatchStatus.FAILED:
        raise domain_error("BatchFailed", state.error or f"batch {batch_id} failed")


def _detail(state: BatchProgress) -> str:
    paused = " PAUSED" if state.status is BatchStatus.PAUSED else ""
    return f"{state.failed} failed, {state.rate_per_second:.0f}/s{paused}"


async def run_retention(args: argparse.Namespace, settings: Settings) -> None:
    """Runs one ``retention`` action."""
    async with await BatchClient.connect(settings) as client:
        action = args.retention_command
        if action == "schedule":
            await _schedule(client, args)
        elif action == "restore":
            restored = await client.restore(args.conversation, hold=args.hold)
            hold = " (on legal hold)" if restored.legal_hold else ""
            _out(
                args,
                restored,
                f"restored {restored.messages} message(s) and {restored.deliveries} "
                f"delivery row(s) of conversation {restored.conversation_id}{hold}",
            )
        elif action == "set":
            legal_hold = True if args.hold else (False if args.release else None)
            days, held = await client.set_policy(
                args.conversation,
                retention_days=args.days,
                clear_retention=args.default_days,
                legal_hold=legal_hold,
            )
            shown = f"{days} days" if days is not None else "the global default"
            _out(
                args,
                {"conversation_id": args.conversation, "retention_days": days, "legal_hold": held},
                f"conversation {args.conversation}: retention {shown}, "
                f"legal hold {'on' if held else 'off'}",
            )


async def _schedule(client: BatchClient, args: argparse.Namespace) -> None:
    if args.action == "create":
        created = await client.create_schedule()
        text = "created" if created else "already exists (left as it is)"
        _out(args, {"created": created}, f"schedule missive-retention {text}")
        return
    if args.action != "describe":
        await getattr(client, f"{args.action}_schedule")()
    described = await client.describe_schedule()
    state = described.schedule.state
    info = described.info
    next_runs = [t.isoformat() for t in info.next_action_times[:3]]
    recent = [
        {"at": a.started_at.isoformat(), "workflow_id": _started_id(a.action)}
        for a in info.recent_actions[-5:]
    ]
    running = [_started_id(r) for r in info.running_actions]
    data = {
        "id": described.id,
        "paused": state.paused,
        "note": state.note,
        "next_runs": next_runs,
        "recent_runs": recent,
        "running": running,
        "skipped_overlaps": info.num_actions_skipped_overlap,
    }
    lines = [
        f"schedule {described.id}: {'PAUSED' if state.paused else 'active'}"
        + (f" ({state.note})" if state.note else ""),
        f"  next runs (UTC): {', '.join(next_runs) or '-'}",
        f"  running: {', '.join(running) or '-'}; skipped (overlap): "
        f"{info.num_actions_skipped_overlap}",
    ]
    lines += [f"  ran {r['at']}: {r['workflow_id']}" for r in recent]
    _out(args, data, "\n".join(lines))


def _started_id(action: object) -> str:
    return str(getattr(action, "workflow_id", ""))


def _read_ids(path: str, option: str) -> list[str]:
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise InvalidInput(f"{option} {path}: {err}") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def _out(args: argparse.Namespace, value: object, text: str) -> None:
    if args.json:
        print(json.dumps(as_dict(value), default=_json_default, indent=2))
    else:
        print(text)


def _json_default(value: object) -> object:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
