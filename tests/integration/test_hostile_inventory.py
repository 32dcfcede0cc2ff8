"""Hostile input over every surface: each kind refused by name, nothing written, nothing leaked,
no workflow left Running.

The kinds this file adds, by surface (the inventory of every surface, the earlier
tests' kinds included, is at the end of this docstring):

Gateway events and connection (test_gateway_events_refuse_hostile_input_by_name):
  G1 a NUL in a stored string (a conversation's title), G2 a NUL in an e2e header,
  G3 a NUL in a message body, G4 a NUL in a device token,
  G5 a lone surrogate in a title, G6 a seq past 64 bits in message:sync,
  G7 one past the last message in message:read,
  G8 a limit of 10**30, G9 1,001 members at once, G10 257 mentions, G11 a mention that is
  not a user id, G12 a role that does not exist, G13 membership events without a
  conversation, G14 deleting another member's message, G15 removing a member without the
  right, G16 adding members to a conversation one is not in, G17 a group with a user who
  does not exist, G18 a direct conversation with oneself.

The starter CLI, ``python -m starter`` as a subprocess
(test_the_starter_cli_refuses_hostile_arguments_in_one_line):
  S1 a --timeout of NaN, S2 a token --ttl past the calendar, S3 a send-bulk file that is not
  UTF-8, S4 a send-bulk line nested 100,000 deep, S5 an --e2e-header nested 50,000 deep,
  S6 a --body-file that does not exist, S7 a --body-file that is not UTF-8, S8 a receipt
  --up-to past 64 bits, S9 a phone number that is not E.164, S10 an email address that is
  not one, S11 a member id that is not a UUID, S12 a batch file with a line nested 100,000
  deep, S13 a batch --chunk-size of 10**20, S14 a command that does not exist, S15 a
  negative --master-version.

The codec server over HTTP (test_the_codec_server_refuses_hostile_requests_by_name):
  K1 JSON nested 100,000 deep, K2 an integer of 5,000 digits, K3 a body over 8 MiB,
  K4 a GET, K5 a payload marked encrypted without a key id, K6 plaintext marked encrypted
  under a real key id, K7 one byte of a sealed payload changed, K8 an unknown path
  (with the token: 404; without: 401, so routes cannot be probed), K9 a 5,000-character
  token in the path.
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import text
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.testing import WorkflowEnvironment

from codec_server.__main__ import serve as serve_codec
from missive.constants import (
    EVENT_CONVERSATION_ADD_MEMBERS,
    EVENT_CONVERSATION_CREATE,
    EVENT_CONVERSATION_LEAVE,
    EVENT_CONVERSATION_REMOVE_MEMBER,
    EVENT_CONVERSATION_SET_ROLE,
    EVENT_DEVICE_REGISTER,
    EVENT_MESSAGE_DELETE,
    EVENT_MESSAGE_EDIT,
    EVENT_MESSAGE_READ,
    EVENT_MESSAGE_SEND,
    EVENT_MESSAGE_SYNC,
    EVENT_NOTIFICATION_LIST,
)
from missive.models import ConversationKind, EncryptionMode
from missive.schemas import PersistMessageInput
from missive.services.directory import NewUser
from runtime.wiring import Core
from starter.client import MissiveClient
from tests.conftest import ROOT, base_settings, free_port, process_env
from tests.integration import test_gateway as gateway_tests
from tests.integration.test_gateway import Peer, RunningGateway
from tests.integration.test_starter import (
    emitter,  # noqa: F401  (a fixture)
    missive,  # noqa: F401  (a fixture)
)

pytestmark = pytest.mark.integration

gateway = gateway_tests.gateway
"""The gateway fixture of test_gateway (uvicorn, the test's database, the dev server)."""
connect = gateway_tests.connect
"""Connects a Socket.IO client as a user; closed at teardown."""

UNLOGGED = {"alembic_version", "send_rate_buckets"}
"""Tables that are not data: the migration mark and the send limit's token buckets."""

LEAK_MARKS = ("Traceback", 'File "', "sqlalchemy", "asyncpg", "temporalio")
"""What an answer that leaks internals would show."""


# --- the world, and what every case checks ----------------------------------------------


@dataclass
class World:
    """Ana owns a group with ben and dan, and an e2e group with ben; cy is in neither.

    Every user has an email address and a phone number, and ben wrote one message:
    none of them may appear in an answer to somebody else.
    """

    ana: str
    ben: str
    cy: str
    dan: str
    group: str
    e2e: str
    bens_message: str
    secrets: tuple[str, ...]


async def _world(core: Core) -> World:
    tag = uuid.uuid4().hex[:6]
    ids = {}
    secrets: list[str] = []
    for n, name in enumerate(("ana", "ben", "cy", "dan")):
        email, phone = f"{name}.{tag}@private.example", f"+1415555{n:04d}"
        secrets += [email, phone]
        ids[name] = await core.directory.create_user(
            NewUser(handle=f"{name}-{tag}", email=email, phone=phone)
        )
    ana, ben, cy, dan = ids["ana"], ids["ben"], ids["cy"], ids["dan"]
    group = await core.directory.create_conversation(
        kind=ConversationKind.GROUP, members=[ana, ben, dan], title="deals", owner_id=ana
    )
    e2e = await core.directory.create_conversation(
        kind=ConversationKind.GROUP,
        members=[ana, ben],
        owner_id=ana,
        encryption_mode=EncryptionMode.E2E,
    )
    body = f"ben's secret plan {tag}"
    stored = await core.messages.persist(PersistMessageInput(group, ben, "b-1", body))
    return World(ana, ben, cy, dan, group, e2e, stored.message_id, (*secrets, body))


async def row_counts(core: Core) -> dict[str, int]:
    """Rows in every data table."""
    async with core.engine.connect() as conn:
        tables = (
            await conn.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'"))
        ).scalars()
        return {
            t: (await conn.execute(text(f'SELECT count(*) FROM "{t}"'))).scalar_one()
            for t in sorted(set(tables) - UNLOGGED)
        }


def assert_no_leak(answer: str, secrets: Sequence[str]) -> None:
    """No internals and none of the world's private data in an answer."""
    for mark in (*LEAK_MARKS, *secrets):
        assert mark not in answer, f"{mark!r} leaked in {answer[:300]!r}"


def since_now() -> datetime:
    """A moment just before the cases start (Temporal's clock is this machine's)."""
    return datetime.now(UTC) - timedelta(seconds=1)


async def assert_none_running(client: Client, since: datetime) -> None:
    """No workflow started since ``since`` is still Running (visibility lists the
    candidates, a describe of each one settles it)."""
    query = f"ExecutionStatus = 'Running' AND StartTime >= '{since.isoformat()}'"
    listed = [w async for w in client.list_workflows(query)]
    for found in listed:
        described = await client.get_workflow_handle(found.id, run_id=found.run_id).describe()
        assert described.status is not WorkflowExecutionStatus.RUNNING, (
            f"{described.workflow_type} {found.id} left Running"
        )


# --- the gateway ------------------------------------------------------------------------


def _refused_by_name(ack: dict[str, Any], type: str, match: str, world: World) -> None:
    assert ack["ok"] is False, ack
    assert ack["error"]["type"] == type, ack
    assert match in ack["error"]["message"], ack
    assert len(ack["error"]["message"]) < 300, ack
    assert_no_leak(str(ack), world.secrets)


async def test_gateway_events_refuse_hostile_input_by_name(
    gateway: RunningGateway,
    core: Core,
    dev_env: WorkflowEnvironment,
    connect: Callable[[str], Awaitable[Peer]],
) -> None:
    world = await _world(core)
    a, b, c = await connect(world.ana), await connect(world.ben), await connect(world.cy)
    group, e2e = {"conversation_id": world.group}, {"conversation_id": world.e2e}
    ben_writes = {**group, "message_id": world.bens_message}
    nobody = str(uuid.uuid4())

    def send(where: dict[str, str], **fields: object) -> dict[str, object]:
        return {**where, "client_message_id": uuid.uuid4().hex, "body": "hi", **fields}

    create = EVENT_CONVERSATION_CREATE
    cases: list[tuple[str, Peer, str, object, str, str]] = [
        ("G1", a, create, {"kind": "group", "member_ids": [world.ben], "title": "ops\u0000"},
         "InvalidInput", "MembershipInput.title: holds U+0000"),
        # The lifecycle fails before its code runs; the ack comes from its failure.
        ("G2", a, EVENT_MESSAGE_SEND,
         send(e2e, body="aGk=", e2e_header={"alg": "x25519", "iv": "\u0000"}),
         "InvalidInput", "SendMessageInput.e2e_header.iv: holds U+0000"),
        ("G3", a, EVENT_MESSAGE_SEND, send(group, body="a\u0000b"),
         "InvalidInput", "SendMessageInput.body: holds U+0000"),
        ("G4", a, EVENT_DEVICE_REGISTER, {"platform": "web", "token": "tok\u0000en"},
         "InvalidInput", "push token 'tok\\x00en' is malformed"),
        ("G5", a, create, {"kind": "group", "member_ids": [world.ben], "title": "ops\ud800"},
         "InvalidInput", "not valid Unicode"),
        ("G6", a, EVENT_MESSAGE_SYNC, {**group, "after_seq": 2**70},
         "InvalidInput", "after_seq must be an integer from 0 to 9223372036854775807"),
        ("G7", b, EVENT_MESSAGE_READ, {**group, "up_to_seq": 2**63},
         "MessageNotVisible", "has no message 9223372036854775808 (its last is 1)"),
        ("G8", a, EVENT_NOTIFICATION_LIST, {"limit": 10**30},
         "InvalidInput", "limit must be between 1 and 100"),
        ("G9", a, EVENT_CONVERSATION_ADD_MEMBERS,
         {**group, "user_ids": [str(uuid.uuid4()) for _ in range(1_001)]},
         "InvalidInput", "user_ids names 1001 users; at most 1000"),
        ("G10", a, EVENT_MESSAGE_SEND, send(group, mentions=[world.ben] * 257),
         "InvalidInput", "mentions names 257 users; at most 256"),
        ("G11", a, EVENT_MESSAGE_SEND, send(group, mentions=["@ben"]),
         "InvalidInput", "mentions[] is not a valid UUID: '@ben'"),
        ("G12", a, EVENT_CONVERSATION_SET_ROLE, {**group, "user_id": world.ben, "role": "god"},
         "InvalidInput", "role must be one of owner, admin, member, got 'god'"),
        ("G13", a, EVENT_CONVERSATION_LEAVE, {},
         "InvalidInput", "conversation_id must be a UUID string"),
        ("G14", a, EVENT_MESSAGE_DELETE, {**group, "message_id": "nope"},
         "InvalidInput", "message_id is not a valid UUID: 'nope'"),
        ("G14", c, EVENT_MESSAGE_DELETE, ben_writes, "NotAMember", "is not a member"),
        ("G14", a, EVENT_MESSAGE_EDIT, {**ben_writes, "body": "rewritten by ana"},
         "NotAllowed", "only its sender may edit"),
        ("G15", b, EVENT_CONVERSATION_REMOVE_MEMBER, {**group, "user_id": world.dan},
         "NotAllowed", "only an owner or admin"),
        ("G16", c, EVENT_CONVERSATION_ADD_MEMBERS, {**group, "user_ids": [world.cy]},
         "NotAMember", "is not a member"),
        ("G17", a, create, {"kind": "group", "member_ids": [world.ben, nobody]},
         "UserNotFound", nobody),
        ("G18", a, create, {"kind": "direct", "member_ids": [world.ana]},
         "InvalidInput", "exactly two members"),
    ]  # fmt: skip
    since = since_now()
    before = await row_counts(core)
    for kind, peer, event, payload, error, match in cases:
        ack = await peer.call(event, payload)
        try:
            _refused_by_name(ack, error, match, world)
        except AssertionError as failed:
            raise AssertionError(f"{kind} {event}: {failed}") from None
    assert await row_counts(core) == before
    async with core.engine.connect() as conn:
        untouched = (
            await conn.execute(
                text("SELECT deleted_at IS NULL AND edited_at IS NULL FROM messages WHERE id = :m"),
                {"m": world.bens_message},
            )
        ).scalar_one()
    assert untouched
    await assert_none_running(dev_env.client, since)


# --- the starter CLI ------------------------------------------------------------------------

CLI_AT_ONCE = 2
"""CLI processes run at once (each spends a second or two importing)."""


async def _starter(
    gate: asyncio.Semaphore, env: dict[str, str], *args: str
) -> tuple[int, str, str]:
    """``python -m starter ARGS``: exit code, stdout, stderr."""
    async with gate:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "starter", *args, cwd=ROOT, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_the_starter_cli_refuses_hostile_arguments_in_one_line(
    missive: MissiveClient,  # noqa: F811  (its worker polls the messages queue)
    core: Core,
    dev_env: WorkflowEnvironment,
    tmp_path: Path,
) -> None:
    world = await _world(core)
    env = process_env(
        TEMPORAL_ADDRESS=dev_env.client.service_client.config.target_host,
        DATABASE_URL=str(missive.settings.database_url),
    )
    deep = "[" * 100_000 + "]" * 100_000
    line = {"conversation_id": world.group, "sender_id": world.ana, "body": "hi"}
    files = {
        "latin1": b"caf\xe9 " + world.secrets[-1].encode(),
        "deep.jsonl": json.dumps({**line, "client_message_id": "d-1"})[:-1].encode()
        + b', "extra": '
        + deep.encode()
        + b"}\n",
        "good.jsonl": (json.dumps(line) + "\n").encode(),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    latin1, deep_file, good = (str(tmp_path / n) for n in files)
    send = ("send", "--conversation", world.group, "--sender", world.ana, "--client-id", "c-1")
    cases: list[tuple[str, tuple[str, ...], str]] = [
        ("S1", (*send, "--body", "hi", "--timeout", "nan"),
         "error: InvalidInput: --timeout must be more than 0 and at most 86400 seconds, got nan"),
        ("S2", ("token", world.ana, "--ttl", str(10**20)),
         "error: InvalidInput: --ttl must be more than 0 and at most"),
        ("S3", ("send-bulk", "--file", latin1),
         f"error: InvalidInput: --file {latin1}: 'utf-8' codec can't decode byte 0xe9"),
        ("S4", ("send-bulk", "--file", deep_file),
         "error: PermanentError: 1 send(s) refused (first: line 1: InvalidInput: line 1: not JSON"),
        # An argument holds at most 128 KiB: 50,000 levels.
        ("S5", (*send, "--body", "aGk=", "--e2e-header", "[" * 50_000 + "]" * 50_000),
         "error: InvalidInput: --e2e-header is not JSON"),
        ("S6", (*send, "--body-file", str(tmp_path / "nowhere.txt")),
         "No such file or directory"),
        ("S7", (*send, "--body-file", latin1), "'utf-8' codec can't decode byte 0xe9"),
        ("S8", ("read", "--user", world.ben, "--conversation", world.group, "--up-to", str(2**70)),
         "error: InvalidInput: ReceiptInput.up_to_seq: the integer is outside the signed 64-bit"),
        ("S9", ("users", "create", "--handle", "eve", "--phone", "12345"),
         "error: InvalidInput: phone '12345' is not E.164"),
        ("S10", ("users", "create", "--handle", "eve", "--email", "eve-at-example"),
         "error: InvalidInput: email 'eve-at-example' is not an email address"),
        ("S11", ("conversations", "create", "--kind", "group", "--member", "ben"),
         "error: InvalidInput: user_ids[] is not a valid UUID: 'ben'"),
        ("S12", ("batch", "start", "--file", deep_file),
         "1 malformed line(s), nothing was staged: line 1: not valid JSON (nested too deeply)"),
        ("S13", ("batch", "start", "--file", good, "--chunk-size", str(10**20)),
         "error: InvalidInput: chunk size must be 1 to 50000"),
        ("S14", ("send-everything",), "argument COMMAND: invalid choice: 'send-everything'"),
        ("S15", ("keys", "rotate-master", "--master-version", "-3"),
         "error: InvalidInput: master_key_version must be positive, got -3"),
    ]  # fmt: skip
    since = since_now()
    before = await row_counts(core)
    gate = asyncio.Semaphore(CLI_AT_ONCE)
    done = await asyncio.gather(*(_starter(gate, env, *args) for _, args, _ in cases))
    for (kind, args, named), (code, out, err) in zip(cases, done, strict=True):
        lines = err.splitlines()
        assert code == 2, (kind, args[:2], code, err[-500:])
        assert lines and named in lines[-1], (kind, named, err[-500:])
        # One line, or argparse's usage and then the line that names the problem.
        assert len(lines) == 1 or lines[0].startswith("usage:"), (kind, err[-500:])
        if kind != "S4":  # send-bulk prints its summary, the refused line included
            assert out == "", (kind, out[:300])
        assert_no_leak(out + err, world.secrets)
    assert await row_counts(core) == before
    await assert_none_running(dev_env.client, since)


# --- the codec server over HTTP -----------------------------------------------------------

CODEC_TOKEN = "codec-" + uuid.uuid4().hex


@pytest.fixture
async def codec_url() -> AsyncIterator[str]:
    """``python -m codec_server``'s serve() on a free port, as the Web UI reaches it."""
    settings = base_settings(codec_server_token=CODEC_TOKEN, codec_server_port=free_port())
    stop = asyncio.Event()
    served = asyncio.create_task(serve_codec(settings, stop=stop))
    url = f"http://{settings.codec_server_host}:{settings.codec_server_port}"
    async with aiohttp.ClientSession() as http:
        async with asyncio.timeout(30):
            while True:
                if served.done():
                    served.result()
                try:
                    async with http.post(f"{url}/decode"):
                        break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.05)
    yield url
    stop.set()
    await served


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def test_the_codec_server_refuses_hostile_requests_by_name(codec_url: str) -> None:
    auth = {"Authorization": f"Bearer {CODEC_TOKEN}"}
    secret = "call ana at +14155550100"
    plain = {
        "metadata": {"encoding": _b64(b"json/plain")},
        "data": _b64(json.dumps(secret).encode()),
    }
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{codec_url}/encode", json={"payloads": [plain]}, headers=auth) as r:
            assert r.status == 200
            [sealed] = (await r.json())["payloads"]
        data = base64.b64decode(sealed["data"])
        flipped = {**sealed, "data": _b64(data[:-1] + bytes([data[-1] ^ 1]))}
        no_key = {**sealed, "metadata": {"encoding": sealed["metadata"]["encoding"]}}
        forged = {**sealed, "data": _b64(secret.encode())}

        def payloads(*items: object) -> bytes:
            return json.dumps({"payloads": list(items)}).encode()

        cases: list[tuple[str, str, str, bytes, dict[str, str], int, str]] = [
            ("K1", "POST", "/decode", b'{"payloads": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
             auth, 400, "nested too deeply"),
            ("K2", "POST", "/decode", b'{"payloads": [], "n": ' + b"7" * 5_000 + b"}",
             auth, 400, "a number too long"),
            ("K3", "POST", "/encode", b"x" * (9 * 2**20), auth, 413, "larger than 8388608 bytes"),
            ("K4", "GET", "/decode", b"", auth, 405, "Method Not Allowed"),
            ("K5", "POST", "/decode", payloads(no_key), auth, 422, "unknown codec key id ''"),
            ("K6", "POST", "/decode", payloads(forged), auth, 422, "failed authentication"),
            ("K7", "POST", "/decode", payloads(flipped), auth, 422, "failed authentication"),
            ("K8", "POST", "/keys", payloads(), auth, 404, "Not Found"),
            ("K8", "POST", "/keys", payloads(), {}, 401, "a bearer token is required"),
            ("K9", "POST", f"/{'t' * 5_000}/decode", payloads(sealed), {}, 401,
             "the bearer token is not valid"),
        ]  # fmt: skip
        for kind, method, path, body, headers, status, named in cases:
            async with http.request(method, codec_url + path, data=body, headers=headers) as r:
                answer = await r.text()
                assert (r.status, named in answer) == (status, True), (kind, r.status, answer)
                assert json.loads(answer).keys() == {"error"}, (kind, answer)
                assert len(answer) < 200, (kind, len(answer))
                assert_no_leak(answer, (secret, CODEC_TOKEN, "t" * 100))
