"""Hand-written workflow input, as the Temporal CLI or another service sends it, on the dev server.

Every workflow of the contract, given input of the wrong shape, fails at once
(its first workflow task, no retry) with a non-retryable ``InvalidInput`` naming
the field, writes nothing, and is not left Running. The input goes through a
client without Missive's codec or converter, like ``temporal workflow start
--input '...'``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import typing
import uuid
from datetime import datetime
from enum import Enum
from typing import Any

import pytest
from sqlalchemy import text
from temporalio import workflow
from temporalio.api.common.v1 import Payload
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError
from temporalio.common import RawValue
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from missive.config import Settings
from missive.models import ConversationKind
from missive.services.directory import NewUser
from runtime.batch_worker import JOB_WORKFLOWS
from runtime.codec import ENCODING, KEY_ID
from runtime.search import SEARCH_WORKFLOWS
from runtime.wiring import WORKFLOWS, Core, activity_methods, message_activities, workflow_runner
from tests.conftest import SESSION_KEYS
from tests.integration.test_starter import RecordingEmitter
from workflows.key_rotation import KEY_WORKFLOWS
from workflows.message_lifecycle import MessageLifecycleWorkflow
from workflows.notify_digest import NotificationDigestWorkflow
from workflows.notify_message import NotifyMessageWorkflow

pytestmark = pytest.mark.integration

CONTRACT = [
    *WORKFLOWS,
    *JOB_WORKFLOWS,
    *KEY_WORKFLOWS,
    *SEARCH_WORKFLOWS,
    NotifyMessageWorkflow,
    NotificationDigestWorkflow,
]

FAILS_WITHIN = 15.0
"""Seconds a refused start may take to fail; a retried workflow task never fails at all."""


def _json(value: object) -> RawValue:
    return RawValue(Payload(metadata={"encoding": b"json/plain"}, data=json.dumps(value).encode()))


def _input_type(wf: type) -> type:
    [hint] = workflow._Definition.must_from_class(wf).arg_types or [type(None)]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint  # type: ignore[no-any-return]


def _wrong_value(hint: Any) -> object:
    """A JSON value of the wrong type for ``hint``."""
    options = [a for a in typing.get_args(hint) if a is not type(None)]
    if options and typing.get_origin(hint) is not list:
        hint = options[0]
    if hint is str or hint is datetime or (isinstance(hint, type) and issubclass(hint, Enum)):
        return 5
    return "five"


def _cases(wf: type) -> list[tuple[str, list[RawValue], str]]:
    """(kind, the start's arguments, what the error must name) for one workflow."""
    cls = _input_type(wf)
    name = cls.__name__
    fields = [f for f in dataclasses.fields(cls) if f.init]  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    cases: list[tuple[str, list[RawValue], str]] = [
        ("array instead of object", [_json([1, 2])], f"{name}: expected an object"),
        ("string instead of object", [_json("hello")], f"{name}: expected an object"),
        ("null", [_json(None)], "is required"),
        ("no input", [], "is required"),
        ("two inputs", [_json({}), _json({})], "input: expected 1 argument"),
        (
            "not JSON",
            [RawValue(Payload(metadata={"encoding": b"json/plain"}, data=b'{"a": '))],
            f"{name}: the payload is not valid JSON",
        ),
        (
            "unknown encoding",
            [RawValue(Payload(metadata={"encoding": b"x" * 5000}, data=b"{}"))],
            "is not one this worker reads",
        ),
        (
            "payload the codec cannot decode (unknown key)",
            [RawValue(Payload(metadata={"encoding": ENCODING, KEY_ID: b"9" * 300}, data=b"x"))],
            "unknown codec key id '9999999999999999'...",
        ),
        (
            "payload the codec cannot decode (forged)",
            [RawValue(Payload(metadata={"encoding": ENCODING, KEY_ID: b"1"}, data=os.urandom(64)))],
            "failed authentication",
        ),
    ]
    if fields:
        first = fields[0]
        cases.append(
            (
                f"wrong type in {first.name}",
                [_json({first.name: _wrong_value(hints[first.name])})],
                f"{name}.{first.name}: expected",
            )
        )
    required = [
        f
        for f in fields
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if required:
        cases.append(("missing field", [_json({})], f"{name}.{required[0].name}: is required"))
    return cases


async def _row_counts(core: Core) -> dict[str, int]:
    async with core.engine.connect() as conn:
        tables = (
            await conn.execute(
                text(
                    "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
                    "AND tablename <> 'alembic_version'"
                )
            )
        ).scalars()
        return {
            t: (await conn.execute(text(f'SELECT count(*) FROM "{t}"'))).scalar_one()
            for t in list(tables)
        }


async def _refused(client: Client, raw: Client, wf: type, args: list[RawValue], queue: str) -> str:
    """Starts ``wf`` with raw ``args``; returns its failure after checking it failed at once."""
    name = workflow._Definition.must_from_class(wf).name
    assert name is not None
    wf_id = f"hostile-{uuid.uuid4().hex}"
    await raw.start_workflow(name, args=args, id=wf_id, task_queue=queue)
    handle = client.get_workflow_handle(wf_id)
    with pytest.raises(WorkflowFailureError) as failed:
        await asyncio.wait_for(handle.result(), FAILS_WITHIN)
    cause = failed.value.cause
    assert isinstance(cause, ApplicationError), (name, cause)
    assert (cause.type, cause.non_retryable) == ("InvalidInput", True), (name, cause)
    assert (await handle.describe()).status == WorkflowExecutionStatus.FAILED
    events = [e.event_type async for e in handle.fetch_history_events()]
    # Failed by its first workflow task: never a failed (retried) task.
    assert EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED not in events, name
    assert events.count(EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED) == 1, name
    return cause.message


async def test_every_workflow_fails_at_once_on_hostile_input_and_writes_nothing(
    dev_env: WorkflowEnvironment, core: Core, settings: Settings, task_queue: str
) -> None:
    raw = await Client.connect(dev_env.client.service_client.config.target_host)
    before = await _row_counts(core)
    acts = activity_methods(message_activities(core, RecordingEmitter()))
    async with Worker(
        dev_env.client,
        task_queue=task_queue,
        workflows=CONTRACT,
        activities=acts,
        # The sandbox, as every workflow test: the runner the processes build, turned on.
        workflow_runner=workflow_runner(settings.model_copy(update={"workflow_sandbox": True})),
    ):
        runs = [(wf, kind, args, named) for wf in CONTRACT for kind, args, named in _cases(wf)]
        messages = await asyncio.gather(
            *(_refused(dev_env.client, raw, wf, args, task_queue) for wf, _, args, _ in runs)
        )
    for (wf, kind, _, named), message in zip(runs, messages, strict=True):
        assert named in message, (wf.__name__, kind, message)
        assert len(message) < 300, (wf.__name__, kind, len(message))
    assert len(runs) >= 9 * len(CONTRACT)
    assert await _row_counts(core) == before


async def test_limits_come_from_the_worker_not_the_input(
    dev_env: WorkflowEnvironment, core: Core, settings: Settings, task_queue: str
) -> None:
    raw = await Client.connect(dev_env.client.service_client.config.target_host)
    ana = await core.directory.create_user(NewUser(handle="ana"))
    ben = await core.directory.create_user(NewUser(handle="ben"))
    conv = await core.directory.create_conversation(kind=ConversationKind.GROUP, members=[ana, ben])
    send = {"conversation_id": conv, "sender_id": ana, "client_message_id": "c-1"}
    acts = activity_methods(message_activities(core, RecordingEmitter()))
    async with Worker(
        dev_env.client,
        task_queue=task_queue,
        workflows=WORKFLOWS,
        activities=acts,
        workflow_runner=workflow_runner(settings),
    ):
        big = await _refused(
            dev_env.client,
            raw,
            MessageLifecycleWorkflow,
            [_json({**send, "body": "x" * 200_000, "max_body_bytes": 100_000_000})],
            task_queue,
        )
        window = await _refused(
            dev_env.client,
            raw,
            MessageLifecycleWorkflow,
            [_json({**send, "body": "hi", "lifecycle_window_seconds": -5})],
            task_queue,
        )
    assert f"over the limit of {settings.max_body_bytes}" in big
    assert "SendMessageInput.lifecycle_window_seconds: must be between 1 and" in window
    counts = await _row_counts(core)
    assert (counts["messages"], counts["deliveries"]) == (0, 0)


@pytest.mark.parametrize("process", ["worker", "gateway"])
def test_a_process_without_codec_keys_refuses_to_start(
    process: str,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name in ("CODEC_KEYS", "ALLOW_PLAINTEXT_PAYLOADS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("MASTER_KEYS", SESSION_KEYS["master_keys"])
    monkeypatch.setenv("GATEWAY_SECRET", SESSION_KEYS["gateway_secret"])
    monkeypatch.setenv("TEMPORAL_ADDRESS", "127.0.0.1:9")  # never reached
    if process == "worker":
        from worker import main
    else:
        from gateway.__main__ import main
    assert main() == 1
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"{process}: CODEC_KEYS is not set: ")
    assert "ALLOW_PLAINTEXT_PAYLOADS=true" in line
