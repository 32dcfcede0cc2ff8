"""Staging: import files checked and COPYed into batch_items, sealed; reports of batches.

Staging never encrypts a message: items are sealed with the staging keys only
(CODEC_KEYS-derived where the process has them), so the starter stages without
MASTER_KEYS.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from missive.crypto import StagingCipher
from missive.db import driver_connection
from missive.errors import InvalidInput
from missive.schemas import BatchFailure, BatchKind, BatchReport
from missive.services.batch._items import ItemState, require_batch_id

_MAX_LISTED_BAD_LINES = 10


@dataclass(frozen=True)
class StagedSource:
    """An import file checked line by line: what staging needs to know."""

    path: Path
    """The JSON-lines file."""
    total: int
    """Items in it (non-blank lines)."""
    sha256: str
    """Digest of its bytes: restaging the same batch id with other content is refused."""


def scan_import_file(path: Path) -> StagedSource:
    """Checks that every non-blank line of a JSON-lines file is a JSON object.

    Nothing is kept in memory but the digest and the count.

    Raises:
        InvalidInput: the file cannot be read, is empty, or has malformed lines
            (the first few are named by line number).
    """
    digest = hashlib.sha256()
    total = 0
    bad: list[str] = []
    bad_count = 0
    try:
        with path.open("rb") as handle:
            for line_no, raw in enumerate(handle, start=1):
                digest.update(raw)
                if not raw.strip():
                    continue
                total += 1
                problem = _line_problem(raw)
                if problem is not None:
                    bad_count += 1
                    if len(bad) < _MAX_LISTED_BAD_LINES:
                        bad.append(f"line {line_no}: {problem}")
    except OSError as err:
        raise InvalidInput(f"cannot read import file {path}: {err.strerror or err}") from None
    if bad:
        more = f" (and {bad_count - len(bad)} more)" if bad_count > len(bad) else ""
        raise InvalidInput(
            f"{path.name}: {bad_count} malformed line(s), nothing was staged: "
            + "; ".join(bad)
            + more
        )
    if total == 0:
        raise InvalidInput(f"{path.name}: the batch is empty (no items)")
    return StagedSource(path=path, total=total, sha256=digest.hexdigest())


def _line_problem(raw: bytes) -> str | None:
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as err:
        return f"not valid JSON ({str(err).split(':')[0]})"
    except RecursionError:
        return "not valid JSON (nested too deeply)"
    if not isinstance(value, dict):
        return f"expected a JSON object, got {type(value).__name__}"
    return None


def _file_records(batch_id: str, path: Path) -> Iterator[tuple[str, int, int, str]]:
    item_no = 0
    with path.open("rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            if raw.strip():
                item_no += 1
                yield batch_id, item_no, line_no, raw.decode("utf-8").strip()


def announcement_items(
    sender_id: str, body: str, conversation_ids: Iterable[str]
) -> list[dict[str, str]]:
    """The items of an announcement: the same body from one sender to each conversation."""
    return [
        {"conversation_id": cid, "sender_id": sender_id, "body": body} for cid in conversation_ids
    ]


def user_announcement_items(
    sender_id: str, body: str, user_ids: Iterable[str]
) -> list[dict[str, str]]:
    """The items of an announcement to users: the same body from one sender to each
    user, in their direct conversation (found or created when the item is stored)."""
    return [{"recipient_id": uid, "sender_id": sender_id, "body": body} for uid in user_ids]


class BatchStaging:
    """Stages batches (COPY, items sealed) and reports on them; never encrypts a message."""

    def __init__(self, engine: AsyncEngine, staging: StagingCipher) -> None:
        self._engine = engine
        self._staging = staging

    async def stage_file(self, batch_id: str, kind: BatchKind, source: StagedSource) -> bool:
        """COPYs a scanned import file into batch_items in one transaction.

        Returns:
            False when this batch id was staged before from the same content
            (nothing is written again), True when it was staged now.

        Raises:
            InvalidInput: the batch id exists with other content.
        """
        return await self._stage(
            require_batch_id(batch_id),
            kind,
            source.total,
            source.sha256,
            lambda: _file_records(batch_id, source.path),
        )

    async def stage_items(
        self, batch_id: str, kind: BatchKind, items: Sequence[dict[str, Any]]
    ) -> bool:
        """Stages items given in memory (an announcement); see ``stage_file``.

        Raises:
            InvalidInput: no items, or the batch id exists with other content.
        """
        if not items:
            raise InvalidInput("the batch is empty (no items)")
        lines = [json.dumps(item, sort_keys=True) for item in items]
        digest = hashlib.sha256("\n".join(lines).encode()).hexdigest()
        return await self._stage(
            require_batch_id(batch_id),
            kind,
            len(lines),
            digest,
            lambda: ((batch_id, n, n, line) for n, line in enumerate(lines, start=1)),
        )

    async def _stage(
        self,
        batch_id: str,
        kind: BatchKind,
        total: int,
        digest: str,
        records: Callable[[], Iterator[tuple[str, int, int, str]]],
    ) -> bool:
        async with driver_connection(self._engine) as conn:
            async with conn.transaction():
                inserted = await conn.fetchval(
                    "INSERT INTO batches (id, kind, total, source_sha256) VALUES ($1, $2, $3, $4)"
                    " ON CONFLICT (id) DO NOTHING RETURNING id",
                    batch_id,
                    str(kind),
                    total,
                    digest,
                )
                if inserted is None:
                    row = await conn.fetchrow(
                        "SELECT kind, source_sha256 FROM batches WHERE id = $1", batch_id
                    )
                    if row is None or row["source_sha256"] != digest or row["kind"] != str(kind):
                        raise InvalidInput(
                            f"batch {batch_id} already exists with other content; "
                            "choose another batch id"
                        )
                    return False
                # Sealed, never in clear: the item is plaintext until its chunk stores it.
                seal, label = self._staging.seal, self._staging.current
                await conn.copy_records_to_table(
                    "batch_items",
                    records=(
                        (bid, n, line_no, seal(bid, n, item.encode()), label)
                        for bid, n, line_no, item in records()
                    ),
                    columns=["batch_id", "item_no", "line_no", "payload_sealed", "payload_key"],
                )
        return True

    async def report(self, batch_id: str, *, limit: int) -> BatchReport:
        """Counts of a batch's items and its first ``limit`` failures.

        Raises:
            InvalidInput: no such batch.
        """
        require_batch_id(batch_id)
        async with driver_connection(self._engine) as conn:
            batch = await conn.fetchrow("SELECT kind, total FROM batches WHERE id = $1", batch_id)
            if batch is None:
                raise InvalidInput(f"batch {batch_id} does not exist")
            counts = {
                r["state"]: r["n"]
                for r in await conn.fetch(
                    "SELECT state, count(*) AS n FROM batch_items WHERE batch_id = $1"
                    " GROUP BY state",
                    batch_id,
                )
            }
            failures = await conn.fetch(
                "SELECT item_no, line_no, reason FROM batch_items"
                " WHERE batch_id = $1 AND state = $2 ORDER BY item_no LIMIT $3",
                batch_id,
                ItemState.FAILED,
                limit,
            )
        return BatchReport(
            batch_id=batch_id,
            kind=batch["kind"],
            total=batch["total"],
            pending=counts.get(ItemState.PENDING, 0),
            stored=counts.get(ItemState.STORED, 0),
            failed=counts.get(ItemState.FAILED, 0),
            failures=[
                BatchFailure(item_no=r["item_no"], line_no=r["line_no"], reason=r["reason"] or "")
                for r in failures
            ],
        )

    async def require_staged(self, batch_id: str, kind: BatchKind, total: int) -> None:
        """Checks that a batch was staged, with this kind and this many items.

        A BatchWorkflow started by hand (the Temporal CLI, another service) names
        its batch and its total itself: for a batch never staged its chunks would
        find no items, and a total of 10**12 would run empty chunks for ever.

        Raises:
            InvalidInput: the batch id is malformed, no such batch was staged, or it
                was staged with another kind or item count.
        """
        require_batch_id(batch_id)
        staged = await self.exists(batch_id)
        if staged is None:
            raise InvalidInput(
                f"batch {batch_id} was never staged: stage its items first "
                "(python -m starter batch start or announce)"
            )
        staged_kind, staged_total = staged
        if total != staged_total:
            raise InvalidInput(
                f"BatchInput.total is {total}, but batch {batch_id} was staged "
                f"with {staged_total} item{'' if staged_total == 1 else 's'}"
            )
        if str(kind) != staged_kind:
            raise InvalidInput(
                f"BatchInput.kind is {kind}, but batch {batch_id} was staged as {staged_kind}"
            )

    async def exists(self, batch_id: str) -> tuple[str, int] | None:
        """The (kind, total) of a staged batch, or None."""
        async with driver_connection(self._engine) as conn:
            row = await conn.fetchrow("SELECT kind, total FROM batches WHERE id = $1", batch_id)
        return None if row is None else (row["kind"], row["total"])
