"""No plaintext in Temporal, for every workflow kind: raw histories, read without the codec,
hold no message body, e-mail address or phone number.

Users with all three provision themselves (UserProfileWorkflow carries the email and
the phone in its input), make a conversation (MembershipWorkflow), write, are notified
by push, email and SMS digest (the lifecycle's agenda, NotifyMessageWorkflow,
NotificationDigestWorkflow), read (ReceiptWorkflow, which clears the shown pushes), edit
and delete (EditMessageWorkflow, DeleteMessageWorkflow and its ClearPushesWorkflow),
import a batch in chunks (BatchWorkflow), rotate keys (MasterKeyRotationWorkflow,
DataKeyRotationWorkflow, KeyReportWorkflow), run retention (RetentionWorkflow) and search
(SearchIndexerWorkflow, SearchRebuildWorkflow, SearchCheckWorkflow, SearchKeyWorkflow),
every worker on queues of this test's own. Then every run started since, as visibility
lists it, is read raw from the dev server's history service and searched byte for byte.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy import text
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import History
from temporalio.api.workflowservice.v1 import GetWorkflowExecutionHistoryRequest
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from fakes import FcmSink, Inbox, TwilioSink, serve, start_smtp
from missive.config import Settings
from missive.constants import membership_workflow_id, message_workflow_id, user_workflow_id
from missive.notify.options import notify_options
from missive.schemas import (
    DataKeyRotationInput,
    DeleteMessageInput,
    EditMessageInput,
    KeyReportInput,
    MasterKeyRotationInput,
    MembershipAction,
    MembershipInput,
    NotificationPreferences,
    NotifyMessageInput,
    PersistMessageInput,
    RebuildInput,
    ReceiptInput,
    ReceiptStatus,
    RetentionInput,
    SearchCheckInput,
    SearchQuery,
    SendMessageInput,
    UserProfileInput,
)
from runtime.batch_worker import batch_worker
from runtime.keys import key_worker
from runtime.notify import notify_workers, open_notify
from runtime.search import open_search, search_worker, start_indexer
from runtime.wiring import WORKFLOWS, Core, activity_methods, message_activities, open_core
from starter.batch import BatchClient, BatchOptions
from starter.client import MissiveClient
from tests.conftest import SESSION_KEYS, base_settings, free_port
from tests.integration.test_hostile_inventory import BY_NAME
from tests.integration.test_search import typesense  # noqa: F401  (a fixture)
from tests.integration.test_starter import RecordingEmitter
from workflows.delete_message import DeleteMessageWorkflow
from workflows.edit_message import EditMessageWorkflow
from workflows.key_rotation import (
    DataKeyRotationWorkflow,
    KeyReportWorkflow,
    MasterKeyRotationWorkflow,
)
from workflows.membership import MembershipWorkflow
from workflows.message_lifecycle import MessageLifecycleWorkflow
from workflows.notify_message import NotifyMessageWorkflow
from workflows.receipts import ReceiptWorkflow
from workflows.retention import RetentionWorkflow
from workflows.search_check import SearchCheckWorkflow
from workflows.search_rebuild import SearchRebuildWorkflow
from workflows.user_profile import UserProfileWorkflow

pytestmark = pytest.mark.integration

WAIT = 60.0
"""Upper bound for anything here (seconds each when healthy; the machine is shared)."""

TAG = uuid.uuid4().hex[:8]
PEOPLE = ("ana", "ben", "cy")
EMAILS = {name: f"{name}.{TAG}@private.example" for name in PEOPLE}
PHONES = {name: f"+1415555{n:04d}" for n, name in enumerate(PEOPLE, start=7)}
PHRASE = f"the merger {TAG}"
"""In every body: a phrase nothing else in a history could hold."""
SECRETS = (*EMAILS.values(), *PHONES.values(), PHRASE)

T = TypeVar("T")


def _body(who: str) -> str:
    return f"Call {PHONES[who]} or write to {EMAILS[who]} about {PHRASE}"


@dataclasses.dataclass
class Queues:
    """This test's task queues, so no other test's worker takes its tasks."""

    messages: str
    batch: str
    keys: str


async def _until(check: Callable[[], Awaitable[T | None]], what: str) -> T:
    """Polls ``check`` (real time, up to WAIT) until it returns something."""
    try:
        async with asyncio.timeout(WAIT):
            while True:
                found = await check()
                if found is not None:
                    return found
                await asyncio.sleep(0.1)  # nothing to await: a row, a visibility record
    except TimeoutError:
        raise AssertionError(f"not within {WAIT} s: {what}") from None


async def _scalar(core: Core, sql: str, **params: object) -> Any:
    async with core.engine.connect() as conn:
        return (await conn.execute(text(sql), params)).scalar()


async def _runs_since(client: Client, since: datetime) -> list[tuple[str, str, str]]:
    """(workflow type, id, run id) of every run started since ``since``, once visibility
    lists a sentinel started last (visibility lags behind starts and closes)."""
    sentinel = await client.start_workflow(
        "VisibilitySentinel", id=f"sentinel-{uuid.uuid4()}", task_queue=f"idle-{uuid.uuid4()}"
    )
    await sentinel.terminate("visibility caught up")
    query = f"StartTime >= '{since.isoformat()}'"

    async def listed() -> list[tuple[str, str, str]] | None:
        found = [w async for w in client.list_workflows(query)]
        done = any(
            w.id == sentinel.id and w.status is WorkflowExecutionStatus.TERMINATED for w in found
        )
        if not done:
            return None
        return [(w.workflow_type, w.id, w.run_id) for w in found if w.id != sentinel.id]

    return await _until(listed, "visibility to list the sentinel, terminated")


async def _raw_history(client: Client, workflow_id: str, run_id: str) -> bytes:
    """A run's whole history as Temporal stores it, read without any codec."""
    service = client.service_client.workflow_service
    pages: list[bytes] = []
    token = b""
    while True:
        page = await service.get_workflow_execution_history(
            GetWorkflowExecutionHistoryRequest(
                namespace=client.namespace,
                execution=WorkflowExecution(workflow_id=workflow_id, run_id=run_id),
                next_page_token=token,
            )
        )
        pages.append(page.history.SerializeToString())
        token = page.next_page_token
        if not token:
            return b"".join(pages)


def _hidden(raw: bytes, where: str) -> None:
    for secret in SECRETS:
        assert secret.encode() not in raw, f"{secret!r} in clear in the history of {where}"


@pytest.fixture
async def stack() -> AsyncIterator[AsyncExitStack]:
    """Closes what the test opened (workers first: they were entered last)."""
    async with AsyncExitStack() as stack:
        yield stack


@pytest.fixture
async def twilio() -> AsyncIterator[tuple[TwilioSink, str]]:
    """The local Twilio sink, served; yields it and its base URL."""
    sink = TwilioSink()
    runner, url = await serve(sink.app())
    yield sink, url
    await runner.cleanup()


@pytest.fixture
def smtp() -> Iterator[tuple[Inbox, int]]:
    """An SMTP server on a free port; yields its inbox and the port."""
    inbox, port = Inbox(), free_port()
    controller = start_smtp(inbox, port)
    yield inbox, port
    controller.stop()


async def test_raw_history_of_every_workflow_kind_has_no_body_email_or_phone(
    dev_env: WorkflowEnvironment,
    settings: Settings,
    task_queue: str,
    fcm: tuple[FcmSink, str],
    twilio: tuple[TwilioSink, str],
    smtp: tuple[Inbox, int],
    typesense: tuple[str, str],  # noqa: F811
    stack: AsyncExitStack,
    tmp_path: Path,
) -> None:
    client = dev_env.client
    # Master key 2 is current, so the master rotation has data keys to re-wrap.
    new_master = base64.b64encode(os.urandom(32)).decode()
    config = base_settings(
        database_url=settings.database_url,
        master_keys=f"{SESSION_KEYS['master_keys']},2:{new_master}",
        fcm_endpoint=fcm[1],
        twilio_base_url=twilio[1],
        smtp_host="127.0.0.1",
        smtp_port=smtp[1],
        email_from="Missive <notify@missive.example>",
        notify_grace_seconds=0,
        notify_email_delay_seconds=1,
        notify_sms_delay_seconds=1,
        notify_digest_window_seconds=1,
        typesense_url=typesense[0],
        typesense_api_key=typesense[1],
        typesense_collection=f"t{uuid.uuid4().hex[:10]}",
        search_task_queue=f"{task_queue}-search",
        graceful_shutdown_seconds=2,
    )
    queues = Queues(task_queue, f"{task_queue}-batch", f"{task_queue}-keys")
    options = dataclasses.replace(
        notify_options(config),
        task_queue=f"{task_queue}-notify",
        push_task_queue=f"{task_queue}-push",
        email_task_queue=f"{task_queue}-email",
        sms_task_queue=f"{task_queue}-sms",
    )
    core = await open_core(config, stack, pool_size=8)
    emitter = RecordingEmitter()
    since = datetime.now(UTC) - timedelta(seconds=1)

    search = open_search(config, core, stack)
    assert search is not None
    senders = open_notify(config, core, stack)
    for worker in [
        Worker(
            client,
            task_queue=queues.messages,
            workflows=WORKFLOWS,
            activities=activity_methods(message_activities(core, emitter)),
        ),
        *notify_workers(config, client, core, emitter, senders, queues=options),
        batch_worker(config, client, core, emitter, task_queue=queues.batch),
        key_worker(config, client, core, task_queue=queues.keys),
        search_worker(config, client, search),
    ]:
        await stack.enter_async_context(worker)
    indexer = client.get_workflow_handle(await start_indexer(client, config))

    async def stop_indexer() -> None:
        with contextlib.suppress(RPCError):  # the test's end may have stopped it
            await indexer.terminate("test over")

    stack.push_async_callback(stop_indexer)  # before the workers stop

    async def run(wf: Any, input: Any, workflow_id: str, queue: str = queues.messages) -> Any:
        return await asyncio.wait_for(
            client.execute_workflow(wf, input, id=workflow_id, task_queue=queue), WAIT
        )

    # Users with an email address and a phone number, through the workflow services use.
    users = {}
    for name in PEOPLE:
        profile = await run(
            UserProfileWorkflow.run,
            UserProfileInput(
                handle=f"{name}-{TAG}", display_name=name.title(), email=EMAILS[name],
                phone=PHONES[name], client_user_id=f"crm-{name}-{TAG}",
            ),
            user_workflow_id(f"client:crm-{name}-{TAG}"),
        )  # fmt: skip
        assert (profile.email, profile.phone) == (EMAILS[name], PHONES[name])
        users[name] = profile.user_id
        await core.preferences.register_device(profile.user_id, "android", f"{name}-phone")
        await core.preferences.set_user(profile.user_id, NotificationPreferences(sms=True))
    ana, ben, cy = (users[n] for n in PEOPLE)
    made = await run(
        MembershipWorkflow.run,
        MembershipInput(
            action=MembershipAction.CREATE, actor_id=ana, user_ids=[ben, cy], kind="group",
            title="deals",
        ),
        membership_workflow_id("create", ana, TAG),
    )  # fmt: skip
    group = made.conversation.conversation_id

    # A message with notifications: its agenda pushes, then digests by email and SMS.
    lifecycle = await run(
        MessageLifecycleWorkflow.run,
        SendMessageInput(
            conversation_id=group, sender_id=ana, client_message_id=f"m-{TAG}",
            body=_body("ana"), lifecycle_window_seconds=1, mentions=[ben], notify=options,
            request_id="r-1",
        ),
        message_workflow_id(ana, f"m-{TAG}"),
    )  # fmt: skip
    [sent] = [d for e, d, _ in emitter.events if e == "message:new"]
    assert sent["body"] == _body("ana")  # the body did travel, in full
    await run(
        ReceiptWorkflow.run,
        ReceiptInput(
            user_id=cy, conversation_id=group, status=ReceiptStatus.READ, up_to_seq=1,
            notify=options,
        ),
        f"receipt-{TAG}",
    )  # fmt: skip
    await run(
        EditMessageWorkflow.run,
        EditMessageInput(group, lifecycle.message_id, ana, f"{_body('cy')} (edited)"),
        f"edit-{TAG}",
    )

    # A second message, notified by a workflow of its own, then deleted once its pushes
    # were shown: the delete clears them with a ClearPushesWorkflow.
    second = await core.messages.persist(PersistMessageInput(group, ben, f"b-{TAG}", _body("ben")))
    await run(
        NotifyMessageWorkflow.run,
        NotifyMessageInput(
            message_id=second.message_id, conversation_id=group, sender_id=ben, seq=second.seq,
            created_at=second.created_at, options=options,
        ),
        f"notify-{TAG}",
        options.task_queue,
    )  # fmt: skip
    deleted = await run(
        DeleteMessageWorkflow.run,
        DeleteMessageInput(group, second.message_id, ben, push_task_queue=options.push_task_queue),
        f"delete-{TAG}",
    )
    assert deleted.changed

    # A batch import in chunks of one.
    lines = [
        json.dumps({"conversation_id": group, "sender_id": users[who], "body": _body(who)})
        for who in PEOPLE
    ]
    file = tmp_path / "import.jsonl"
    file.write_text("\n".join(lines) + "\n")
    batches = BatchClient(client, config, stack, task_queue=queues.batch)
    started = await batches.start_import(file, options=BatchOptions(chunk_size=1))
    assert (await asyncio.wait_for(batches.result(started.batch_id), WAIT)).stored == 3
    await run(RetentionWorkflow.run, RetentionInput(), f"retention-{TAG}", queues.batch)

    # Keys: a new data key for the conversation, every data key under master key 2.
    await run(
        DataKeyRotationWorkflow.run,
        DataKeyRotationInput(conversation_id=group, settle_seconds=0),
        f"rotate-data-{TAG}",
        queues.keys,
    )
    await run(MasterKeyRotationWorkflow.run, MasterKeyRotationInput(), f"rotate-{TAG}", queues.keys)
    await run(KeyReportWorkflow.run, KeyReportInput(), f"key-report-{TAG}", queues.keys)

    # Search: indexed by the indexer, rebuilt, checked, and searched with a scoped key.
    async def indexed() -> bool | None:
        pending = "SELECT count(*) FROM messages WHERE indexed_at IS NULL"
        return True if await _scalar(core, pending) == 0 else None

    await _until(indexed, "every message indexed")
    await run(SearchRebuildWorkflow.run, RebuildInput(batch_size=2), f"rebuild-{TAG}",
              config.search_task_queue)  # fmt: skip
    await run(SearchCheckWorkflow.run, SearchCheckInput(), f"check-{TAG}", config.search_task_queue)
    found = await MissiveClient(client, config).search(ben, SearchQuery(text=PHRASE))
    assert found.found >= 1, found

    # Ben's digests reached the providers (the push went first); Temporal held no text.
    async def digested() -> bool | None:
        mailed = EMAILS["ben"] in {e.rcpt_tos[0] for e, _ in smtp[0].emails}
        texted = PHONES["ben"] in {m["to"] for m in twilio[0].received}
        return True if mailed and texted and fcm[0].received else None

    await _until(digested, "ben's push, email and SMS")
    runs = await _runs_since(client, since)
    kinds = {kind for kind, _, _ in runs}
    contract = {str(name) for name in BY_NAME}
    assert kinds >= contract, f"not run: {sorted(contract - kinds)}"
    for kind, workflow_id, run_id in runs:
        _hidden(await _raw_history(client, workflow_id, run_id), f"{kind} {workflow_id}")

    # The check can see what it looks for: through the codec, the profile's input holds it.
    history = await client.get_workflow_handle(
        user_workflow_id(f"client:crm-ana-{TAG}")
    ).fetch_history()
    started_event = next(
        e for e in history.events if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED
    )
    codec = client.data_converter.payload_codec
    assert codec is not None
    payloads = started_event.workflow_execution_started_event_attributes.input.payloads
    decoded = b"".join(p.data for p in await codec.decode(list(payloads)))
    assert EMAILS["ana"].encode() in decoded and PHONES["ana"].encode() in decoded
    assert EMAILS["ana"].encode() not in History(events=history.events).SerializeToString()
    # ... and a payload a client without the codec wrote shows in clear.
    raw = await Client.connect(client.service_client.config.target_host)
    plain = await raw.start_workflow(
        "KeyReportWorkflow", {"note": PHRASE}, id=f"plain-{TAG}", task_queue=f"idle-{TAG}"
    )
    try:
        with pytest.raises(AssertionError, match="in clear in the history of"):
            _hidden(await _raw_history(client, plain.id, plain.result_run_id or ""), plain.id)
    finally:
        await plain.terminate("test over")
    # Nothing of this test keeps running on the session's server (digests gather on).
    for _, workflow_id, run_id in runs:
        handle = client.get_workflow_handle(workflow_id, run_id=run_id)
        if (await handle.describe()).status is WorkflowExecutionStatus.RUNNING:
            await handle.terminate("test over")
