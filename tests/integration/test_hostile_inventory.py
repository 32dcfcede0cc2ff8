"""Hostile input over every surface: each kind refused by name, nothing written, nothing leaked,
no workflow left Running.

The kinds this file adds, by surface (the inventory of every surface, the earlier
tests' kinds included, is at the end of this docstring):

Gateway events (test_gateway_events_refuse_hostile_input_by_name):
  G1 a NUL in a stored string (a conversation's title), G2 a NUL in an e2e header,
  G3 a NUL in a message body, G4 a NUL in a device token,
  G5 a lone surrogate in a title, G6 a seq past 64 bits in message:sync,
  G7 one past the last message in message:read,
  G8 a limit of 10**30, G9 1,001 members at once, G10 257 mentions, G11 a mention that is
  not a user id, G12 a role that does not exist, G13 membership events without a
  conversation, G14 deleting or editing another member's message without the right
  (or from outside the conversation), G15 removing a member without the
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

Hand-written workflow input, started by name with raw JSON as the Temporal CLI does
(test_hand_written_workflow_input_fails_at_once_by_name):
  W1 a NUL in a user's display name, W2 a lone surrogate in it, W3 an email address of
  10,000 characters, W4 an update of a user id that is not a UUID, W5 a NUL in a
  conversation's title, W6 a membership action that does not exist, W7 5,000 members at
  once, W8 a change by an actor who is not a member, W9 an edit by someone other than the
  sender, W10 an edit of a message of another conversation, W11 an e2e header nested 65
  deep, W12 a NUL in an e2e header, W13 a delete by a member without the right, W14 a
  delete of a message id that is not a UUID, W15 an e2e header in a standard conversation,
  W16 a notification delay of 10**12 s, W17 a receipt seq past 64 bits, W18 a push batch of
  0, W19 a digest window of 2**40 s, W20 a negative settle time, W21 a data key version of
  0, W22 a master key version past 32 bits, W23 a negative retention chunk, W24 a search
  rebuild in batches of 0, W25 a heartbeat timeout of NaN, W26 a NUL in a notification id,
  W27 a NUL in a search key's user id, W28 a field named by a lone surrogate, W29 a count
  past 64 bits, W30 a report limit of NaN, W31 a batch that was never staged (with a total
  of 10**12), W32 a batch's total or kind other than what was staged (10**12 items for a
  batch of one, an announcement for an import), W33 257 mentions, W34 a mention that is not
  a user id, W35 a mention that is not a user id in a notification start.

The codec server over HTTP (test_the_codec_server_refuses_hostile_requests_by_name):
  K1 JSON nested 100,000 deep, K2 an integer of 5,000 digits, K3 a body over 8 MiB,
  K4 a GET, K5 a payload marked encrypted without a key id, K6 plaintext marked encrypted
  under a real key id, K7 one byte of a sealed payload changed, K8 an unknown path
  (with the token: 404; without: 401, so routes cannot be probed), K9 a 5,000-character
  token in the path, K10 a header or request line over 8 KiB (an Authorization header of
  9 KB and of 100 KB after the real token, a 9 KB path after it): 431, neither quoted in
  the answer nor logged with a traceback.

The whole inventory, kind -> where it is tested (a kind tested with several variants
counts once): 154 kinds, 76 in earlier tests (numbered below) and 78 here.

Gateway connection, 13 (tests/integration/):
  1-5 no token, a malformed one, a forged signature, an expired token, an unknown user:
    test_gateway.py::test_connections_without_a_valid_token_are_refused
  6-7 a token over 256 characters, a 2 MB one; 13 a polling POST over the limit (413):
    test_gateway_malformed.py::
    test_messages_over_the_size_limit_are_answered_and_the_socket_stays
  8 a malformed CONNECT packet:
    test_gateway_malformed.py::test_malformed_connect_packets_get_connect_error
  9 a token in the query string: test_gateway_tokens.py::test_no_token_reaches_a_log
  10 a revoked token, both forms: test_gateway_tokens.py::
    test_revoking_a_users_tokens_closes_their_sockets_on_every_gateway,
    test_connect_refuses_a_revoked_token_of_the_older_form
  11 events after the token expired: test_gateway_tokens.py::
    test_an_expired_token_closes_its_socket_and_refuses_its_events
  12 token:refresh with another user's, a forged or an expired token:
    test_gateway_tokens.py::test_token_refresh_keeps_a_socket_open_past_its_first_token
Gateway transport, 12 (tests/integration/test_gateway_malformed.py):
  14-20 JSON that does not parse, nesting 100,000 deep, an event that is not an array
    starting with its name, an integer over 100 digits, an unknown event, invalid UTF-8 in
    a binary frame, an event without an ack id:
    test_undecodable_events_get_one_ack_naming_the_problem
  21 invalid UTF-8 in a text frame (1007):
    test_invalid_utf8_in_a_text_frame_closes_with_the_websocket_reason
  22 a 10 MB event: test_messages_over_the_size_limit_are_answered_and_the_socket_stays
  23 a frame over 16 MiB (1009): test_a_frame_over_the_websocket_limit_closes_with_1009
  24 a lone surrogate in a body or a device token:
    test_a_lone_surrogate_is_invalid_input_naming_the_field
  76 2,000 malformed packets as fast as a socket can send them (JSON that does not parse,
    another namespace, binary junk): read at the socket's pace, one answer each, another
    user's sends not slowed: test_a_malformed_packet_flood_is_paced_and_slows_nobody_else
Gateway events, 19 (tests/integration/):
  25-32 a blank body, one over MAX_BODY_BYTES, a conversation id that is not a UUID, an
    empty client_message_id, no body, a payload that is not an object, a send to someone
    else's conversation, to one that does not exist:
    test_gateway.py::test_bad_sends_are_refused_and_write_nothing
  33-35 a receipt in someone else's conversation, for a message that does not exist, with
    both a seq and a message id or seq 0:
    test_gateway.py::test_receipts_are_refused_outside_ones_conversations
  36-38 an unknown preference or timezone, a device of an unknown platform or a malformed
    token, a notification:list limit out of range:
    test_gateway.py::test_notification_settings_devices_and_the_bell_over_the_socket
  39-42 message:sync with bad seqs or limits or of someone else's conversation, an edit by
    another user or of a message elsewhere, adding an unknown user or removing the last
    owner, a direct conversation of three or an unknown kind: test_conversations.py::
    test_bad_conversation_requests_get_a_clear_error_and_write_nothing
  43 search filter injection and wrong types: test_search.py::
    test_bad_input_is_refused_or_empty,
    test_a_user_finds_only_their_conversations_even_with_crafted_filters
Starter CLI, 10 (tests/integration/):
  44 a malformed conversation id:
    test_starter.py::test_cli_refuses_a_malformed_request_in_one_line
  45 an unreachable TEMPORAL_ADDRESS:
    test_starter.py::test_cli_names_an_unreachable_temporal_and_exits_1,
    test_ops.py::test_cli_ops_commands_name_an_unreachable_temporal
  46 a send by a non-member: test_starter.py::test_cli_send_status_and_refusal_end_to_end
  47 adding to a direct conversation, a handle taken:
    test_starter_directory.py::test_the_cli_provisions_users_and_conversations
  48 revoking the tokens of an unknown user or a malformed id:
    test_gateway_tokens.py::test_the_cli_revokes_tokens
  49 a search query over the limit, a conversation not one's own:
    test_search.py::test_starter_search_goes_through_a_scoped_key
  50 both target files of batch announce:
    test_batch_jobs.py::test_cli_announces_to_users_in_their_direct_conversations
  51 send-bulk lines that are not JSON or are refused:
    test_bulk.py::test_cli_send_bulk_reports_line_numbers_and_exits_2_on_refusals
  52 retry of an unknown workflow, a bad visibility query, bad durations:
    test_ops.py::test_cli_failures_retry_and_health_exit_codes,
    test_cli_stuck_lists_notification_rows_open_long_past_due
  53 batch files with malformed lines (the library the CLI calls): test_batch_services.py::
    test_bad_files_are_refused_with_line_numbers_and_nothing_is_staged
Hand-written workflow input, 13, each for every workflow of the contract
(tests/integration/test_hostile_workflow_input.py):
  54-64 an array, a string, null, no input, two inputs, JSON that does not parse, an
    unknown encoding, an unknown codec key, a forged ciphertext, a value of the wrong type,
    a missing field:
    test_every_workflow_fails_at_once_on_hostile_input_and_writes_nothing
  65-66 max_body_bytes above the worker's, a negative window:
    test_limits_come_from_the_worker_not_the_input
Codec server, 9 (tests/unit/test_codec_server.py, aiohttp's test server):
  67 no, a wrong or a Basic token: test_requests_without_the_right_token_are_refused
  68-70 not JSON, not a payload list, an entry that is not a payload:
    test_bodies_that_are_not_payload_lists_get_400_naming_the_problem
  71-72 an unknown key id, a truncated ciphertext:
    test_unknown_key_id_and_truncated_ciphertext_are_refused_by_name
  73-74 a 200 KB key id, a key id that is not UTF-8: test_a_huge_requested_key_id_is_not_echoed
  75 a preflight from another origin: test_cors_preflight_is_answered_for_the_web_ui_only
Here, 78: G1-G18 (gateway), S1-S15 (CLI), W1-W35 (workflow input), K1-K10 (codec server).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import math
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import text
from temporalio import workflow
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError
from temporalio.common import RawValue
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.batch import BatchActivities
from codec_server.__main__ import serve as serve_codec
from missive.config import Settings
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
from missive.schemas import BatchKind, PersistMessageInput
from missive.services.directory import NewUser
from runtime.batch_worker import batch_service
from runtime.wiring import Core, activity_methods, message_activities, workflow_runner
from starter.client import MissiveClient
from tests.conftest import ROOT, base_settings, free_port, process_env
from tests.integration import test_gateway as gateway_tests
from tests.integration.test_gateway import Peer, RunningGateway
from tests.integration.test_hostile_workflow_input import CONTRACT, _json
from tests.integration.test_starter import (
    RecordingEmitter,
    emitter,  # noqa: F401  (a fixture)
    missive,  # noqa: F401  (a fixture)
)

pytestmark = pytest.mark.integration

gateway = gateway_tests.gateway
"""The gateway fixture of test_gateway (uvicorn, the test's database, the dev server)."""
connect = gateway_tests.connect
"""Connects a Socket.IO client as a user; closed at teardown."""

UNLOGGED = {"alembic_version", "send_rate_buckets", "provider_rate_buckets"}
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
    """The moment the cases start. Temporal's clock is this machine's, so no margin: one
    would take in the lifecycles an earlier test's last sends started, which run on."""
    return datetime.now(UTC)


async def assert_none_running(client: Client, since: datetime) -> None:
    """No workflow started since ``since`` is still Running.

    Visibility lists the candidates and a describe of each settles it; as visibility
    lags, a sentinel started last (on a queue nobody polls, so it stays Running) must
    show in the list first: it also proves the query sees a Running workflow.
    """
    sentinel = await client.start_workflow(
        "VisibilitySentinel", id=f"sentinel-{uuid.uuid4()}", task_queue=f"idle-{uuid.uuid4()}"
    )
    query = f"ExecutionStatus = 'Running' AND StartTime >= '{since.isoformat()}'"
    try:
        async with asyncio.timeout(30):
            while True:
                listed = [w async for w in client.list_workflows(query)]
                if any(w.id == sentinel.id for w in listed):
                    break
                await asyncio.sleep(0.1)  # visibility catches up on its own; nothing to await
    finally:
        await sentinel.terminate("visibility caught up")
    for found in listed:
        if found.id == sentinel.id:
            continue
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
    a, b = await connect(world.ana), await connect(world.ben)
    c, d = await connect(world.cy), await connect(world.dan)
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
        ("G14", d, EVENT_MESSAGE_DELETE, ben_writes,
         "NotAllowed", "only its sender or an owner or admin"),
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


# --- hand-written workflow input ----------------------------------------------------------

FAILS_WITHIN = 15.0
"""Seconds a refused start may take to fail; a retried workflow task never fails at all."""

BY_NAME = {workflow._Definition.must_from_class(wf).name: wf for wf in CONTRACT}
"""Every workflow of the contract, by the name a hand-written start uses."""


async def _fails_at_once(
    client: Client, raw: Client, name: str, input: RawValue, queue: str
) -> ApplicationError:
    """Starts ``name`` with raw ``input``; its failure, once checked it failed for good
    and never retried a workflow task."""
    workflow_id = f"hostile-{uuid.uuid4().hex}"
    await raw.start_workflow(name, args=[input], id=workflow_id, task_queue=queue)
    handle = client.get_workflow_handle(workflow_id)
    try:
        await asyncio.wait_for(handle.result(), FAILS_WITHIN)
    except WorkflowFailureError as failed:
        cause = failed.cause
    else:
        raise AssertionError(f"{name} accepted its hostile input")
    assert isinstance(cause, ApplicationError) and cause.non_retryable, (name, cause)
    assert (await handle.describe()).status is WorkflowExecutionStatus.FAILED
    events = [e.event_type async for e in handle.fetch_history_events()]
    assert EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED not in events, name
    return cause


async def test_hand_written_workflow_input_fails_at_once_by_name(
    dev_env: WorkflowEnvironment, core: Core, settings: Settings, task_queue: str
) -> None:
    world = await _world(core)
    client = dev_env.client
    raw = await Client.connect(client.service_client.config.target_host)  # no codec
    e2e = await core.messages.persist(
        PersistMessageInput(world.e2e, world.ana, "e-1", "c2VjcmV0", e2e_header={"alg": "x"})
    )
    elsewhere = await core.directory.create_conversation(
        kind=ConversationKind.GROUP, members=[world.cy], owner_id=world.cy
    )
    theirs = await core.messages.persist(PersistMessageInput(elsewhere, world.cy, "c-1", "hi"))
    in_group = {"conversation_id": world.group}
    bens = {**in_group, "message_id": world.bens_message}
    notify = {
        "message_id": world.bens_message,
        "conversation_id": world.group,
        "sender_id": world.ben,
        "seq": 1,
        "created_at": datetime.now(UTC).isoformat(),
    }
    cid = {"conversation_id": world.group}
    create = {"action": "create", "kind": "group", "actor_id": world.ana, "user_ids": [world.ben]}
    sends = {**in_group, "sender_id": world.ana, "client_message_id": "w-1", "body": "hi"}
    staging = batch_service(core, None)
    batches = BatchActivities(staging)
    staged = f"hostile-{uuid.uuid4().hex[:12]}"  # one item, never run
    await staging.stage_items(staged, BatchKind.IMPORT, [{**sends, "body": "staged"}])
    never = {"batch_id": f"never-{uuid.uuid4().hex[:12]}", "kind": "import", "total": 10**12}
    deep = json.loads('{"k": ' * 64 + "{}" + "}" * 64)
    cases: list[tuple[str, str, object, str, str]] = [
        ("W1", "UserProfileWorkflow", {"handle": "eve", "display_name": "Eve\u0000"},
         "InvalidInput", "UserProfileInput.display_name: holds U+0000"),
        ("W2", "UserProfileWorkflow", {"handle": "eve", "display_name": "Eve\ud800"},
         "InvalidInput", "UserProfileInput.display_name: is not valid Unicode"),
        ("W3", "UserProfileWorkflow", {"handle": "eve", "email": "e" * 10_000 + "@example.com"},
         "InvalidInput", "is not an email address"),
        ("W4", "UserProfileWorkflow", {"user_id": "ben", "locale": "en"},
         "InvalidInput", "user_id is not a valid UUID: 'ben'"),
        ("W5", "MembershipWorkflow", {**create, "title": "deals\u0000"},
         "InvalidInput", "MembershipInput.title: holds U+0000"),
        ("W6", "MembershipWorkflow", {**create, "action": "explode"},
         "InvalidInput", "MembershipInput.action: expected one of create, add, remove, leave"),
        ("W7", "MembershipWorkflow",
         {"action": "add", **cid, "actor_id": world.ana,
          "user_ids": [str(uuid.uuid4()) for _ in range(5_000)]},
         "InvalidInput", "user_ids names 5000 users; at most 1000"),
        ("W8", "MembershipWorkflow",
         {"action": "add", **cid, "actor_id": world.cy, "user_ids": [world.cy]},
         "NotAMember", f"user {world.cy} is not a member"),
        ("W9", "EditMessageWorkflow", {**bens, "editor_id": world.ana, "body": "by ana"},
         "NotAllowed", "only its sender may edit"),
        ("W10", "EditMessageWorkflow",
         {**in_group, "message_id": theirs.message_id, "editor_id": world.cy, "body": "x"},
         "MessageNotVisible", f"is not in conversation {world.group}"),
        ("W11", "EditMessageWorkflow",
         {"conversation_id": world.e2e, "message_id": e2e.message_id, "editor_id": world.ana,
          "body": "bmV3", "e2e_header": deep},
         "InvalidInput", "EditMessageInput.e2e_header.k.k.k"),
        ("W12", "EditMessageWorkflow",
         {"conversation_id": world.e2e, "message_id": e2e.message_id, "editor_id": world.ana,
          "body": "bmV3", "e2e_header": {"iv": "\u0000"}},
         "InvalidInput", "EditMessageInput.e2e_header.iv: holds U+0000"),
        ("W13", "DeleteMessageWorkflow", {**bens, "actor_id": world.dan},
         "NotAllowed", "only its sender or an owner or admin"),
        ("W14", "DeleteMessageWorkflow", {**in_group, "message_id": "latest"},
         "InvalidInput", "message_id is not a valid UUID: 'latest'"),
        ("W15", "MessageLifecycleWorkflow", {**sends, "e2e_header": {"alg": "x"}},
         "InvalidInput", "e2e_header is only accepted in end-to-end encrypted conversations"),
        # The planner would drop them without a word; the gateway refuses them (G10, G11).
        ("W33", "MessageLifecycleWorkflow",
         {**sends, "mentions": [world.ben] * 257, "notify": {}},
         "InvalidInput", "mentions names 257 users; at most 256"),
        ("W34", "MessageLifecycleWorkflow",
         {**sends, "mentions": [world.ben, "@ben"], "notify": {}},
         "InvalidInput", "mentions[] is not a valid UUID: '@ben'"),
        ("W16", "MessageLifecycleWorkflow", {**sends, "notify": {"grace_seconds": 10**12}},
         "InvalidInput", "SendMessageInput.notify.grace_seconds: must be between 0 and 2592000"),
        ("W17", "ReceiptWorkflow",
         {**in_group, "user_id": world.ben, "status": "read", "up_to_seq": 2**70},
         "InvalidInput", "ReceiptInput.up_to_seq: the integer is outside the signed 64-bit"),
        ("W35", "NotifyMessageWorkflow", {**notify, "mentions": ["@everyone"]},
         "InvalidInput", "mentions[] is not a valid UUID: '@everyone'"),
        ("W18", "NotifyMessageWorkflow", {**notify, "options": {"push_batch_size": 0}},
         "InvalidInput", "NotifyMessageInput.options.push_batch_size: must be between 1 and"),
        ("W19", "NotificationDigestWorkflow",
         {"recipient_id": world.ben, "channel": "email",
          "options": {"digest_window_seconds": 2**40}},
         "InvalidInput", "options.digest_window_seconds: must be between 0 and 2592000"),
        ("W20", "DataKeyRotationWorkflow", {**cid, "settle_seconds": -1},
         "InvalidInput", "DataKeyRotationInput.settle_seconds: must be between 0 and 3600"),
        ("W21", "DataKeyRotationWorkflow", {**cid, "to_version": 0},
         "InvalidInput", "DataKeyRotationInput.to_version: must be between 1 and 2147483647"),
        ("W22", "MasterKeyRotationWorkflow", {"master_key_version": 2**31},
         "InvalidInput", "MasterKeyRotationInput.master_key_version: must be between 1 and"),
        ("W23", "RetentionWorkflow", {"chunk_size": -1},
         "InvalidInput", "RetentionInput.chunk_size: must be between 0 and 100000, got -1"),
        ("W24", "SearchRebuildWorkflow", {"batch_size": 0},
         "InvalidInput", "RebuildInput.batch_size: must be between 1 and 10000, got 0"),
        ("W25", "BatchWorkflow",
         {"batch_id": "b-1", "kind": "import", "total": 1, "heartbeat_timeout_seconds": math.nan},
         "InvalidInput", "BatchInput.heartbeat_timeout_seconds: expected a finite number"),
        ("W31", "BatchWorkflow", never,
         "InvalidInput", f"batch {never['batch_id']} was never staged"),
        ("W32", "BatchWorkflow", {"batch_id": staged, "kind": "import", "total": 10**12},
         "InvalidInput", f"total is 1000000000000, but batch {staged} was staged with 1 item"),
        ("W32", "BatchWorkflow", {"batch_id": staged, "kind": "announcement", "total": 1},
         "InvalidInput", f"kind is announcement, but batch {staged} was staged as import"),
        ("W26", "ClearPushesWorkflow",
         {"notification_ids": ["n\u0000"], "push_task_queue": task_queue},
         "InvalidInput", "ClearPushesInput.notification_ids[0]: holds U+0000"),
        ("W27", "SearchKeyWorkflow", {"user_id": world.ben + "\u0000"},
         "InvalidInput", "SearchKeyInput.user_id: holds U+0000"),
        ("W28", "KeyReportWorkflow", {"\udfff": True},
         "InvalidInput", "KeyReportInput: a key: is not valid Unicode"),
        ("W29", "SearchIndexerWorkflow", {"indexed": 2**64},
         "InvalidInput", "SearchIndexerInput.indexed: the integer is outside the signed 64-bit"),
        ("W30", "SearchCheckWorkflow", {"report_limit": math.nan},
         "InvalidInput", "SearchCheckInput.report_limit: expected a finite number, got nan"),
    ]  # fmt: skip
    assert {name for _, name, *_ in cases} == set(BY_NAME), "a workflow of the contract is missing"
    since = since_now()
    before = await row_counts(core)
    async with Worker(
        client,
        task_queue=task_queue,
        workflows=CONTRACT,
        # The batch worker's two: a batch that got past its check would write its items.
        activities=[
            *activity_methods(message_activities(core, RecordingEmitter())),
            batches.check_staged_batch,
            batches.process_batch_chunk,
        ],
        # The sandbox, as every workflow test: the runner the processes build, turned on.
        workflow_runner=workflow_runner(settings.model_copy(update={"workflow_sandbox": True})),
    ):
        failures = await asyncio.gather(
            *(
                _fails_at_once(client, raw, name, _json(input), task_queue)
                for _, name, input, _, _ in cases
            )
        )
    for (kind, name, _, error, named), cause in zip(cases, failures, strict=True):
        assert (cause.type, named in cause.message) == (error, True), (kind, name, cause)
        assert len(cause.message) < 300, (kind, len(cause.message))
        assert_no_leak(cause.message, world.secrets)
    assert await row_counts(core) == before
    await assert_none_running(client, since)


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


async def test_the_codec_server_refuses_hostile_requests_by_name(
    codec_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    auth = {"Authorization": f"Bearer {CODEC_TOKEN}"}
    # The real token first: aiohttp's own refusal quoted a header's first 100 bytes.
    padded = {n: {"Authorization": f"Bearer {CODEC_TOKEN} " + "h" * n} for n in (9_000, 100_000)}
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
            ("K10", "POST", "/decode", payloads(), padded[9_000], 431,
             "the request line or a header is over 8190 bytes"),
            ("K10", "POST", "/decode", payloads(), padded[100_000], 431,
             "the request line or a header is over 8190 bytes"),
            ("K10", "POST", f"/{CODEC_TOKEN}/decode?pad={'p' * 9_000}", payloads(), {}, 431,
             "the request line or a header is over 8190 bytes"),
        ]  # fmt: skip
        caplog.set_level(logging.DEBUG)
        for kind, method, path, body, headers, status, named in cases:
            async with http.request(method, codec_url + path, data=body, headers=headers) as r:
                answer = await r.text()
                assert (r.status, named in answer) == (status, True), (kind, r.status, answer)
                assert json.loads(answer).keys() == {"error"}, (kind, answer)
                assert len(answer) < 200, (kind, len(answer))
                assert_no_leak(answer, (secret, CODEC_TOKEN, "t" * 100, "h" * 16, "p" * 16))
    served = [r for r in caplog.records if r.name.startswith(("aiohttp", "missive"))]
    assert [r.getMessage() for r in served if "could not read" in r.getMessage()] == [
        "refused a request aiohttp could not read: LineTooLong"
    ] * 3, [r.getMessage()[:200] for r in served]
    for record in served:
        assert record.exc_info is None, (record.name, record.getMessage()[:200])
        assert_no_leak(record.getMessage(), (secret, CODEC_TOKEN, "t" * 100, "h" * 16, "p" * 16))
