"""No plaintext in Temporal: a lifecycle's raw history, read without the codec, hides the body."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from temporalio.api.common.v1 import Payload
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import History
from temporalio.client import Client, WorkflowFailureError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from missive.constants import message_id_for, message_workflow_id
from missive.models import ConversationKind
from missive.schemas import LifecyclePhase, NotifyOptions, SendMessageInput
from missive.services.directory import NewUser
from runtime.wiring import Core, activity_methods, message_activities
from workflows.message_lifecycle import MessageLifecycleWorkflow

pytestmark = pytest.mark.integration

WAIT = 60.0
EMAIL = "ana.private@example.com"
PHONE = "+1 555 0100"
BODY = f"Call me at {PHONE} or write to {EMAIL} about the merger"
SECRETS = (EMAIL, PHONE, "about the merger")


class Inbox:
    """An emitter that keeps what a lifecycle broadcast."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    async def emit(self, event: str, data: Any, *, room: str | None = None) -> None:
        self.events.append((event, data))


async def _raw_client(dev_env: WorkflowEnvironment) -> Client:
    """A client WITHOUT the codec: what Temporal itself (and its Web UI) stores."""
    config = dev_env.client.config()
    return await Client.connect(
        dev_env.client.service_client.config.target_host, namespace=config["namespace"]
    )


def _assert_hidden(raw: bytes, what: str) -> None:
    for secret in SECRETS:
        assert secret.encode() not in raw, f"{secret!r} in clear in {what}"


async def test_raw_history_has_no_body_email_or_phone(
    core: Core, dev_env: WorkflowEnvironment, task_queue: str
) -> None:
    ana, ben = [
        await core.directory.create_user(NewUser(handle=f"{h}-{uuid.uuid4().hex[:6]}"))
        for h in ("ana", "ben")
    ]
    conversation = await core.directory.create_conversation(
        kind=ConversationKind.DIRECT, members=[ana, ben]
    )
    inbox = Inbox()
    raw_client = await _raw_client(dev_env)
    async with Worker(
        dev_env.client,
        task_queue=task_queue,
        workflows=[MessageLifecycleWorkflow],
        activities=activity_methods(message_activities(core, inbox)),
    ):
        sent = SendMessageInput(
            conversation_id=conversation,
            sender_id=ana,
            client_message_id="private-1",
            body=BODY,
            lifecycle_window_seconds=1,
            request_id="r-1",
        )
        handle = await dev_env.client.start_workflow(
            MessageLifecycleWorkflow.run,
            sent,
            id=message_workflow_id(ana, "private-1"),
            task_queue=task_queue,
        )
        result = await asyncio.wait_for(handle.result(), WAIT)
        assert result.phase is LifecyclePhase.WINDOW_ELAPSED
        # The body did travel: it was stored and broadcast in full.
        assert [data["body"] for event, data in inbox.events if event == "message:new"] == [BODY]

        # A refused send whose error message quotes the email and the phone number.
        refused = await dev_env.client.start_workflow(
            MessageLifecycleWorkflow.run,
            SendMessageInput(
                conversation_id=f"{EMAIL} {PHONE}",
                sender_id=ana,
                client_message_id="private-2",
                body=BODY,
            ),
            id=f"refused-{uuid.uuid4()}",
            task_queue=task_queue,
        )
        with pytest.raises(WorkflowFailureError) as failed:
            await asyncio.wait_for(refused.result(), WAIT)
        # Through the codec the operator reads the reason, email included...
        assert EMAIL in str(failed.value.cause)

    for done in (handle, refused):
        history = await raw_client.get_workflow_handle(done.id).fetch_history()
        raw = History(events=history.events).SerializeToString()
        _assert_hidden(raw, f"history of {done.id}")
        _assert_hidden(history.to_json().encode(), f"JSON history of {done.id}")
        payloads = [
            p
            for event in history.events
            if event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED
            for p in event.workflow_execution_started_event_attributes.input.payloads
        ]
        assert payloads and all(p.metadata["encoding"] == b"binary/encrypted" for p in payloads)

    # ... while Temporal holds only the encoded failure.
    history = await raw_client.get_workflow_handle(refused.id).fetch_history()
    failure = next(
        e.workflow_execution_failed_event_attributes.failure
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED
    )
    assert failure.message == "Encoded failure"
    assert failure.encoded_attributes.metadata["encoding"] == b"binary/encrypted"
    assert failure.stack_trace == ""


async def test_notifications_add_no_text_to_history_even_decoded(
    core: Core, dev_env: WorkflowEnvironment, task_queue: str
) -> None:
    """With notifications on, only the start input carries the body, even through the codec."""
    ana, ben = [
        await core.directory.create_user(NewUser(handle=f"{h}-{uuid.uuid4().hex[:6]}"))
        for h in ("ana", "ben")
    ]
    conversation = await core.directory.create_conversation(
        kind=ConversationKind.GROUP, members=[ana, ben], title="deals"
    )
    async with Worker(
        dev_env.client,
        task_queue=task_queue,
        workflows=[MessageLifecycleWorkflow],
        activities=activity_methods(message_activities(core, Inbox())),
    ):
        handle = await dev_env.client.start_workflow(
            MessageLifecycleWorkflow.run,
            SendMessageInput(
                conversation_id=conversation,
                sender_id=ana,
                client_message_id="private-3",
                body=BODY,
                lifecycle_window_seconds=1,
                mentions=[ben],
                # ben has no device and no address: in-app only, the rest is skipped.
                notify=NotifyOptions(task_queue=task_queue),
            ),
            id=message_workflow_id(ana, "private-3"),
            task_queue=task_queue,
        )
        await asyncio.wait_for(handle.result(), WAIT)
    assert len(await core.notifications.rows(message_id=message_id_for(ana, "private-3"))) == 3

    history = await dev_env.client.get_workflow_handle(handle.id).fetch_history()
    codec = dev_env.client.data_converter.payload_codec
    assert codec is not None
    started: list[Payload] = []
    others: list[Payload] = []
    for event in history.events:
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED:
            started += event.workflow_execution_started_event_attributes.input.payloads
        elif event.event_type == EventType.EVENT_TYPE_MARKER_RECORDED:
            for payloads in event.marker_recorded_event_attributes.details.values():
                others += payloads.payloads
    assert len(others) >= 3  # persist, broadcast and the notification plan
    decoded_start = b"".join(p.data for p in await codec.decode(started))
    assert b"about the merger" in decoded_start  # the check can see the body...
    decoded = b"".join(p.data for p in await codec.decode(others))
    for secret in SECRETS:  # ...and no local activity result carries it
        assert secret.encode() not in decoded, f"{secret!r} in a decoded marker"
