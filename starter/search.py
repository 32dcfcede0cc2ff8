"""Search from the starter: user searches, the index check, the index rebuild.

python -m starter search --user U "query" [--conversation C] [--sender S] [--since ISO]
                         [--until ISO] [--page N] [--per-page N]
python -m starter search-check [--repair]
python -m starter search-rebuild [--batch-size N] [--progress]

A user search asks Temporal for a short-lived scoped key (SearchKeyWorkflow: the
worker looks up the user's conversations) and then queries Typesense with it, so
the key, not this process, decides what the user can find, and no message text
enters a workflow history. A workflow, not a direct call: the key needs the
Typesense admin key and DATABASE_URL, which only the worker holds.
"""

from __future__ import annotations

import argparse
import uuid
from datetime import timedelta
from typing import Any

from temporalio.client import Client, WorkflowFailureError
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.service import RPCError, RPCStatusCode

from missive.config import Settings
from missive.constants import (
    SEARCH_CHECK_WORKFLOW_PREFIX,
    SEARCH_KEY_WORKFLOW_PREFIX,
    search_rebuild_workflow_id,
)
from missive.errors import InvalidInput, ProviderUnavailable
from missive.schemas import (
    RebuildInput,
    RebuildProgress,
    SearchCheckInput,
    SearchCheckResult,
    SearchKeyGrant,
    SearchKeyInput,
    SearchQuery,
    SearchResult,
)
from missive.search import TypesenseClient, parse_time, query_with_key, search_params
from missive.validation import require_uuid
from runtime.messaging import to_domain_error
from workflows.search_check import SearchCheckWorkflow
from workflows.search_key import SearchKeyWorkflow
from workflows.search_rebuild import SearchRebuildWorkflow


async def search_messages(
    client: Client, settings: Settings, user_id: str, query: SearchQuery
) -> SearchResult:
    """Searches the messages of the user's conversations.

    Raises:
        InvalidInput: a bad query or filter (checked before anything is sent).
        NotAMember: a conversation filter the user does not take part in.
        ProviderUnavailable: TYPESENSE_URL is unset, or Typesense is unavailable.
    """
    uid = require_uuid(user_id, "user_id")
    params = search_params(query)
    if not settings.typesense_url:
        raise ProviderUnavailable("search needs TYPESENSE_URL (the Typesense the workers index)")
    try:
        grant: SearchKeyGrant = await client.execute_workflow(
            SearchKeyWorkflow.run,
            SearchKeyInput(user_id=uid, conversation_id=query.conversation_id),
            id=f"{SEARCH_KEY_WORKFLOW_PREFIX}-{uuid.uuid4()}",
            task_queue=settings.search_task_queue,
            execution_timeout=timedelta(seconds=60),
        )
    except WorkflowFailureError as err:
        raise to_domain_error(err) from None
    # The admin key is not needed (nor used): the request carries the scoped key.
    typesense = TypesenseClient(settings.typesense_url, "")
    try:
        return await query_with_key(typesense, grant, params, query)
    finally:
        await typesense.close()


async def check_index(
    client: Client, settings: Settings, *, repair: bool = False, report_limit: int = 100
) -> SearchCheckResult:
    """Compares PostgreSQL with the index per conversation; ``repair`` queues the gaps."""
    try:
        return await client.execute_workflow(
            SearchCheckWorkflow.run,
            SearchCheckInput(repair=repair, report_limit=report_limit),
            id=f"{SEARCH_CHECK_WORKFLOW_PREFIX}-{uuid.uuid4()}",
            task_queue=settings.search_task_queue,
        )
    except WorkflowFailureError as err:
        raise to_domain_error(err) from None


async def rebuild_index(
    client: Client, settings: Settings, *, batch_size: int = 2_000
) -> RebuildProgress:
    """Rebuilds the index into a new collection and swaps the alias; waits for it.

    A rebuild already running is joined, not started twice.
    """
    if not 1 <= batch_size <= 10_000:
        raise InvalidInput(f"batch_size must be 1-10000, got {batch_size}")
    handle = await client.start_workflow(
        SearchRebuildWorkflow.run,
        RebuildInput(batch_size=batch_size),
        id=search_rebuild_workflow_id(settings.typesense_collection),
        task_queue=settings.search_task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
    )
    try:
        return await handle.result()
    except WorkflowFailureError as err:
        raise to_domain_error(err) from None


async def rebuild_progress(client: Client, settings: Settings) -> RebuildProgress:
    """Where the latest rebuild is (running or finished).

    Raises:
        InvalidInput: no rebuild has run.
    """
    handle = client.get_workflow_handle(
        search_rebuild_workflow_id(settings.typesense_collection), result_type=RebuildProgress
    )
    try:
        return await handle.query(SearchRebuildWorkflow.progress)
    except RPCError as err:
        if err.status != RPCStatusCode.NOT_FOUND:
            raise
        raise InvalidInput("no search rebuild has run") from None


def add_parsers(commands: Any, common: argparse.ArgumentParser) -> None:
    """Adds ``search``, ``search-check`` and ``search-rebuild`` to the CLI."""
    search = commands.add_parser(
        "search", parents=[common], help="search a user's messages (their conversations only)"
    )
    search.add_argument("query", metavar="QUERY", help="the words to find (typo-tolerant)")
    search.add_argument("--user", required=True, metavar="U", help="who is searching")
    search.add_argument("--conversation", metavar="C", help="only this conversation")
    search.add_argument("--sender", metavar="S", help="only messages from this user")
    search.add_argument("--since", metavar="ISO", help="sent at or after (with a timezone)")
    search.add_argument("--until", metavar="ISO", help="sent at or before (with a timezone)")
    search.add_argument("--page", type=int, default=1, metavar="N", help="page (from 1)")
    search.add_argument("--per-page", type=int, default=20, metavar="N", help="hits per page")

    check = commands.add_parser(
        "search-check", parents=[common], help="compare PostgreSQL with the search index"
    )
    check.add_argument("--repair", action="store_true", help="queue the gaps for the indexer")

    rebuild = commands.add_parser(
        "search-rebuild", parents=[common], help="rebuild the search index, swap it in"
    )
    rebuild.add_argument("--batch-size", type=int, default=2_000, metavar="N")
    rebuild.add_argument(
        "--progress", action="store_true", help="only show the latest rebuild's progress"
    )


def query_from_args(args: argparse.Namespace) -> SearchQuery:
    """The CLI's search arguments as a checked SearchQuery."""
    query = SearchQuery(
        text=args.query,
        conversation_id=(
            require_uuid(args.conversation, "conversation_id") if args.conversation else None
        ),
        sender_id=require_uuid(args.sender, "sender_id") if args.sender else None,
        since=parse_time(args.since, "since"),
        until=parse_time(args.until, "until"),
        page=args.page,
        per_page=args.per_page,
    )
    search_params(query)
    return query


async def run(args: argparse.Namespace, client: Client, settings: Settings) -> tuple[object, str]:
    """Runs one search command; returns the result and its description."""
    if args.command == "search":
        result = await search_messages(client, settings, args.user, query_from_args(args))
        return result, describe_result(result)
    if args.command == "search-check":
        checked = await check_index(client, settings, repair=args.repair)
        return checked, describe_check(checked)
    if args.progress:
        progress = await rebuild_progress(client, settings)
    else:
        progress = await rebuild_index(client, settings, batch_size=args.batch_size)
    return progress, describe_rebuild(progress)


def describe_result(result: SearchResult) -> str:
    """Hits as a person reads them."""
    first = (result.page - 1) * result.per_page
    lines = [f"{result.found} found; page {result.page} ({len(result.hits)} hits)"]
    for n, hit in enumerate(result.hits, start=first + 1):
        lines.append(
            f"{n:>3}. {hit.created_at.isoformat(timespec='seconds')} conversation "
            f"{hit.conversation_id} seq {hit.seq} from {hit.sender_id}: {hit.snippet}"
        )
    return "\n".join(lines)


def describe_check(result: SearchCheckResult) -> str:
    """The check as an operator reads it."""
    lines = [
        f"{result.conversations} conversation(s): {result.expected} message(s) expected, "
        f"{result.indexed} document(s), {result.pending} pending, {result.missing} missing, "
        f"{result.extra} extra" + (" (queued for repair)" if result.repaired else ""),
    ]
    for gap in result.gaps:
        lines.append(
            f"  {gap.conversation_id}: expected {gap.expected}, indexed {gap.indexed}, "
            f"missing {gap.missing}, extra {gap.extra}"
        )
    if not result.gaps:
        lines.append("  no gaps")
    return "\n".join(lines)


def describe_rebuild(progress: RebuildProgress) -> str:
    """The rebuild's progress in one line."""
    dropped = f"; dropped {', '.join(progress.dropped)}" if progress.dropped else ""
    return (
        f"rebuild {progress.phase}: {progress.collection or '-'} "
        f"({progress.indexed}/{progress.total} documents; was {progress.previous or '-'}){dropped}"
    )
