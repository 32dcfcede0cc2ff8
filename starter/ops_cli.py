"""``python -m starter send-bulk | health | failures | stuck | retry``: the operator's commands."""

from __future__ import annotations

import argparse
import dataclasses
import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from missive.config import Settings
from missive.errors import InvalidInput, PermanentError, ProviderUnavailable
from missive.notify.log import OverdueSummary
from starter import ops
from starter.bulk import DEFAULT_CONCURRENCY, BulkSummary, JsonlSends, send_many
from starter.client import MissiveClient, timeout_option

SHOWN_PROBLEMS = 20
"""Refused / failed sends listed in text output (``--json`` lists all)."""


def add_parsers(commands: Any, common: argparse.ArgumentParser) -> None:
    """Adds the bulk and operations commands to the starter's subcommands."""
    bulk = commands.add_parser(
        "send-bulk", parents=[common], help="send every message of a JSON-lines file"
    )
    bulk.add_argument(
        "--file",
        required=True,
        metavar="PATH",
        help='one {"conversation_id", "sender_id", "client_message_id", "body"} per line '
        "('-': stdin)",
    )
    bulk.add_argument(
        "--concurrency",
        type=int,
        default=DEFAULT_CONCURRENCY,
        metavar="N",
        help="sends in flight at once (default %(default)s)",
    )
    bulk.add_argument(
        "--start-only",
        action="store_true",
        help="only start each lifecycle, do not wait for its ack (refusals then show as "
        "failed workflows: see `failures`)",
    )

    health = commands.add_parser(
        "health", parents=[common], help="workers per task queue and dependencies; exit 1 if not"
    )
    health.add_argument(
        "--task-queue",
        action="append",
        metavar="NAME",
        help="check this task queue (repeatable; default every queue worker.py serves)",
    )

    failures = commands.add_parser(
        "failures", parents=[common], help="failed workflows grouped by type and cause"
    )
    failures.add_argument("--since", default="1h", metavar="DURATION", help="e.g. 30m, 1h, 7d")
    failures.add_argument("--type", metavar="WORKFLOW_TYPE", help="only this workflow type")
    failures.add_argument("--query", metavar="Q", help="a visibility clause ANDed to the query")

    stuck = commands.add_parser(
        "stuck",
        parents=[common],
        help="running workflows' activities that keep failing, and notification rows open "
        "long past due (with DATABASE_URL)",
    )
    stuck.add_argument(
        "--min-attempts", type=int, default=3, metavar="N", help="attempt N or later (default 3)"
    )
    stuck.add_argument("--query", metavar="Q", help="a visibility clause ANDed to the query")
    stuck.add_argument(
        "--overdue-after",
        metavar="DURATION",
        help="a notification row open this long past its due time is listed "
        "(e.g. 30m; default NOTIFY_OVERDUE_SECONDS)",
    )

    retry = commands.add_parser(
        "retry", parents=[common], help="re-run failed workflows by reset or re-start"
    )
    which = retry.add_mutually_exclusive_group(required=True)
    which.add_argument("--workflow-id", metavar="ID", help="one workflow")
    which.add_argument("--query", metavar="Q", help="every closed workflow this query matches")
    retry.add_argument("--mode", choices=("reset", "restart"), default="reset")
    retry.add_argument(
        "--reset-point",
        choices=("last", "first"),
        default="last",
        help="reset to the last (default) or the first completed workflow task",
    )
    retry.add_argument("--dry-run", action="store_true", help="list what would be retried")


async def run(args: argparse.Namespace, settings: Settings) -> None:
    """Runs one of this module's commands."""
    call_timeout = timeout_option(args.timeout)
    if args.command == "failures":
        since = ops.parse_duration(args.since)  # bad input never waits on a connection
    if args.command == "send-bulk" and args.concurrency < 1:
        raise InvalidInput(f"--concurrency must be at least 1, got {args.concurrency}")
    if args.command == "stuck" and args.min_attempts < 1:
        raise InvalidInput(f"--min-attempts must be at least 1, got {args.min_attempts}")
    overdue_after = None
    if args.command == "stuck" and args.overdue_after is not None:
        try:
            overdue_after = ops.parse_duration(args.overdue_after)
        except InvalidInput as err:
            raise InvalidInput(str(err).replace("--since", "--overdue-after")) from None
    async with await MissiveClient.connect(settings, call_timeout=call_timeout) as missive:
        client = missive.temporal
        if args.command == "send-bulk":
            await _send_bulk(args, missive)
        elif args.command == "health":
            report = await ops.health(client, settings, queues=args.task_queue)
            _out(args, report, _describe_health(report))
            if not report.healthy:
                raise ProviderUnavailable("unhealthy: " + "; ".join(report.problems))
        elif args.command == "failures":
            found = await ops.failures(
                client, since=since, workflow_type=args.type, extra_query=args.query
            )
            _out(args, found, _describe_failures(found))
        elif args.command == "stuck":
            activities = await ops.stuck(
                client, min_attempts=args.min_attempts, extra_query=args.query
            )
            overdue = (
                await ops.overdue_notifications(settings, older_than=overdue_after)
                if settings.database_url
                else None
            )
            margin = overdue_after or timedelta(seconds=settings.notify_overdue_seconds)
            _out(
                args,
                {"activities": activities, "overdue_notifications": overdue},
                _describe_stuck(activities, args.min_attempts)
                + "\n"
                + _describe_overdue(overdue, margin),
            )
        else:
            done = await ops.retry(
                client,
                workflow_id=args.workflow_id,
                query=args.query,
                mode=args.mode,
                reset_point=args.reset_point,
                dry_run=args.dry_run,
            )
            _out(args, done, _describe_retry(done))


COMMANDS = {name: run for name in ("send-bulk", "health", "failures", "stuck", "retry")}
"""The commands this module adds, for starter/cli.py's table."""


async def _send_bulk(args: argparse.Namespace, missive: MissiveClient) -> None:
    sends = JsonlSends(Path(args.file))
    summary = await send_many(
        missive, sends, concurrency=args.concurrency, wait_for_ack=not args.start_only
    )
    summary = dataclasses.replace(
        summary,
        total=summary.total + len(sends.problems),
        refused=sorted([*sends.problems, *summary.refused], key=lambda p: p.number),
    )
    _out(args, summary, _describe_bulk(summary))
    if summary.failed:
        raise ProviderUnavailable(
            f"{len(summary.failed)} send(s) failed (first: line {summary.failed[0].number}: "
            f"{summary.failed[0].message}); sending the file again is safe"
        )
    if summary.refused:
        first = summary.refused[0]
        raise PermanentError(
            f"{len(summary.refused)} send(s) refused (first: line {first.number}: "
            f"{first.error_type}: {first.message})"
        )


def _out(args: argparse.Namespace, result: object, text: str) -> None:
    if args.json:
        data = dataclasses.asdict(result) if dataclasses.is_dataclass(result) else result  # type: ignore[arg-type]
        if isinstance(result, ops.RetryReport):
            data["retried"] = result.retried  # type: ignore[index]
        print(json.dumps(data, default=_json_default, indent=2))
    else:
        print(text)


def _json_default(value: object) -> object:
    if isinstance(value, datetime):
        return value.isoformat()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _describe_bulk(summary: BulkSummary) -> str:
    mode = "stored" if summary.waited_for_ack else "started (not waiting for acks)"
    lines = [
        f"{summary.total} send(s) in {summary.elapsed_seconds:.1f}s: {summary.started} {mode}, "
        f"{summary.duplicates} duplicate(s), {len(summary.refused)} refused, "
        f"{len(summary.failed)} failed"
    ]
    for label, problems in (("refused", summary.refused), ("failed", summary.failed)):
        for p in problems[:SHOWN_PROBLEMS]:
            lines.append(f"  line {p.number}: {label}: {p.error_type}: {p.message}")
        if len(problems) > SHOWN_PROBLEMS:
            lines.append(f"  ... {len(problems) - SHOWN_PROBLEMS} more {label} (--json lists all)")
    return "\n".join(lines)


def _describe_health(report: ops.HealthReport) -> str:
    lines = [f"{'healthy' if report.healthy else 'UNHEALTHY'} at {report.checked_at.isoformat()}"]
    for q in report.queues:
        backlog = (
            f"backlog {q.workflow_backlog}/{q.activity_backlog}"
            if q.workflow_backlog is not None
            else "backlog n/a"
        )
        seen = q.last_access.isoformat() if q.last_access else "never"
        lines.append(
            f"  {'ok  ' if q.healthy else 'FAIL'} task queue {q.task_queue}: "
            f"{q.workflow_pollers} workflow / {q.activity_pollers} activity poller(s), "
            f"{backlog} (workflow/activity), last poll {seen}"
        )
    for d in report.dependencies:
        lines.append(
            f"  {'ok  ' if d.reachable else 'FAIL'} {d.name} at {d.target}: {d.detail} "
            f"({d.latency_ms:g} ms)"
        )
    return "\n".join(lines)


def _describe_failures(found: ops.FailureReport) -> str:
    if not found.total:
        return f"no failed, timed-out or terminated workflows ({found.query})"
    lines = [f"{found.total} workflow(s) failed ({found.elapsed_seconds:.1f}s)"]
    lines += [f"  {name}: {count}" for name, count in found.by_type.items()]
    lines.append("by cause:")
    for g in found.groups:
        where = f" in activity {g.activity_type}" if g.activity_type else ""
        lines.append(
            f"  {g.count:>6}  {g.workflow_type} {g.status}: {g.error_type}{where}: {g.pattern}"
        )
        lines.append(f"          e.g. {', '.join(g.example_ids)}")
    return "\n".join(lines)


def _describe_stuck(activities: list[ops.StuckActivity], min_attempts: int) -> str:
    if not activities:
        return f"no running activity is on attempt {min_attempts} or later"
    lines = []
    for a in activities:
        last = f"{a.error_type}: {a.message}" if a.error_type else "no failure recorded"
        lines.append(
            f"{a.workflow_id} ({a.workflow_type}): {a.activity_type} attempt {a.attempt}: {last}"
        )
    return "\n".join(lines)


def _describe_overdue(overdue: OverdueSummary | None, margin: timedelta) -> str:
    if overdue is None:
        return "notification rows: not checked (set DATABASE_URL to look for overdue ones)"
    after = f"{int(margin.total_seconds())} s"
    if not overdue.count:
        return f"no notification row is open more than {after} past its due time"
    lines = [
        f"{overdue.count} notification row(s) open more than {after} past their due time "
        f"(oldest due {overdue.oldest_due.isoformat() if overdue.oldest_due else '?'}):"
    ]
    for row in overdue.examples:
        about = f"message {row.message_id}" if row.message_id else row.dedupe_key
        last = f": {row.reason}" if row.reason else ""
        lines.append(
            f"  {row.id} {row.channel} to {row.recipient_id} ({about}): {row.status} since "
            f"{row.updated_at.isoformat()}, due {row.due_at.isoformat()}, "
            f"{row.attempts} attempt(s){last}"
        )
    if overdue.count > len(overdue.examples):
        lines.append(f"  ... {overdue.count - len(overdue.examples)} more")
    return "\n".join(lines)


def _describe_retry(done: ops.RetryReport) -> str:
    verb = "would retry" if done.dry_run else "retried"
    lines = [f"{verb} {done.retried} workflow(s) by {done.mode}"]
    for item in done.items:
        if item.skipped:
            lines.append(f"  {item.workflow_id}: skipped ({item.skipped})")
        else:
            new = f" -> run {item.new_run_id}" if item.new_run_id else ""
            lines.append(f"  {item.workflow_id} [{item.status}]: {item.action}{new}")
    return "\n".join(lines)
