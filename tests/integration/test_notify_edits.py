"""Notifications follow edits and deletes: an email that falls due after an edit shows the
current text; a deleted message's email is never sent. Real SMTP server, dev server."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from typing import Any

import pytest
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from fakes import Inbox, start_smtp
from missive.config import Settings
from missive.constants import notify_digest_workflow_id, notify_message_workflow_id
from missive.schemas import (
    Channel,
    DeleteMessageInput,
    EditMessageInput,
    NotificationPreferences,
    NotificationStatus,
    NotifyMessageInput,
    NotifyMessageResult,
    NotifyOptions,
    PersistMessageInput,
)
from runtime.notify import notify_workers, open_notify
from runtime.wiring import Core
from tests.conftest import base_settings, free_port
from tests.integration.test_gateway import QUIET, WAIT
from tests.integration.test_notify_e2e import (
    MAIL_DOMAIN,
    _digest_result,
    _group,
    _person,
    _rows,
    _terminate_running,
)
from workflows.notify_message import NotifyMessageWorkflow

pytestmark = pytest.mark.integration


async def test_an_email_shows_the_edited_text_and_a_deleted_message_sends_none(
    settings: Settings, core: Core, dev_env: WorkflowEnvironment, task_queue: str
) -> None:
    inbox, port = Inbox(), free_port()
    options = NotifyOptions(
        email_delay_seconds=1,
        digest_window_seconds=1,
        task_queue=f"{task_queue}-notify",
        push_task_queue=f"{task_queue}-push",
        email_task_queue=f"{task_queue}-email",
        sms_task_queue=f"{task_queue}-sms",
    )
    ana = await _person(core, "ana")
    ben = await _person(core, "ben", email=True)
    await core.preferences.set_user(ben, NotificationPreferences(push=False))
    conversation = await _group(core, ana, ben)
    client = dev_env.client
    worker_settings = base_settings(
        database_url=settings.database_url,
        smtp_host="127.0.0.1",
        smtp_port=port,
        email_from=f"Missive <notify@{MAIL_DOMAIN}>",
    )
    edited = await core.messages.persist(
        PersistMessageInput(conversation, ana, "c-1", "the deploy is at 5")
    )
    deleted = await core.messages.persist(
        PersistMessageInput(conversation, ana, "c-2", "the root password is hunter2")
    )
    # Before either email falls due: one message edited, the other deleted.
    await core.edits.edit(
        EditMessageInput(conversation, edited.message_id, ana, "the deploy moved to 6")
    )
    await core.edits.delete(DeleteMessageInput(conversation, deleted.message_id, ana))
    async with AsyncExitStack() as stack:
        stack.callback(start_smtp(inbox, port).stop)
        senders = open_notify(worker_settings, core, stack)
        for worker in notify_workers(worker_settings, client, core, None, senders, queues=options):
            await stack.enter_async_context(worker)
        handles: list[WorkflowHandle[Any, NotifyMessageResult]] = []
        for stored in (edited, deleted):
            handles.append(
                await client.start_workflow(
                    NotifyMessageWorkflow.run,
                    NotifyMessageInput(
                        message_id=stored.message_id,
                        conversation_id=conversation,
                        sender_id=ana,
                        seq=stored.seq,
                        created_at=stored.created_at,
                        options=options,
                    ),
                    id=notify_message_workflow_id(stored.message_id),
                    task_queue=options.task_queue,
                )
            )
        digest_id = notify_digest_workflow_id(Channel.EMAIL, ben)
        try:
            await _digest_result(client, digest_id)
            for handle in handles:
                await asyncio.wait_for(handle.result(), WAIT)
            await asyncio.sleep(QUIET)
        finally:
            await _terminate_running(client, [*(h.id for h in handles), digest_id])

    [mail] = inbox.to(f"ben@{MAIL_DOMAIN}")
    text = mail.get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
    assert "the deploy moved to 6" in text
    assert "at 5" not in text and "hunter2" not in text
    gone = (await _rows(core, deleted.message_id, ben))[Channel.EMAIL]
    assert gone.status is not NotificationStatus.SENT
    assert gone.status is not NotificationStatus.DIGESTED
