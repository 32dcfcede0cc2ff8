"""A digest's items that arrive as its run decides to end, on the dev server with real rows.

NotificationDigestWorkflow ends when nothing arrived during its last send. These tests
put the next item's signal-with-start (the real queue_digests) into the two places it
could fall through: during that last send, and while the workflow task that completes
the run is in flight, after the run returned. Either way the item must go out in a
digest of its own, not stay ``queued`` with no workflow left to send it. The second
place is safe only because the server refuses to complete a workflow task that a new
signal arrived during (WorkflowTaskFailed, cause UNHANDLED_COMMAND) and the SDK runs
the task again with the signal applied before the activity result; the test checks
that this refusal really happened, so it cannot pass without hitting the gap.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from temporalio import activity, workflow
from temporalio.api.enums.v1 import EventType, WorkflowTaskFailedCause
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client, WorkflowHistory
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment
from temporalio.worker import (
    ExecuteWorkflowInput,
    Interceptor,
    UnsandboxedWorkflowRunner,
    Worker,
    WorkflowInboundInterceptor,
    WorkflowInterceptorClassInput,
)

from activities.notify import ChannelActivities, NotifyActivities
from fakes import Inbox, start_smtp
from missive.config import Settings
from missive.constants import notify_digest_workflow_id
from missive.models import ConversationKind
from missive.notify.log import NotificationRow
from missive.schemas import (
    Channel,
    DigestItem,
    DispatchDueInput,
    NotificationDigestResult,
    NotificationPreferences,
    NotificationStatus,
    NotifyMessageInput,
    NotifyOptions,
    PersistMessageInput,
    PlanNotificationsInput,
    QueueDigestsInput,
    SendNotificationsInput,
    SendNotificationsResult,
)
from missive.services.directory import NewUser
from runtime.client import data_converter
from runtime.notify import open_notify
from runtime.wiring import Core
from tests.conftest import base_settings, free_port
from workflows.notify_digest import NotificationDigestWorkflow

pytestmark = pytest.mark.integration

MAIL_DOMAIN = "missive.example"
WAIT = 30.0
"""Real seconds for a step of a digest (one-second windows) on a busy 2-core machine."""
DUE_LATER = timedelta(hours=2)
"""Past the email delay, so dispatch_due queues each message's email row for the digest."""


class _HoldCompletion:
    """Runs ``while_held`` inside the digest run's completing workflow task, once.

    The hook runs after the run function returned, inside the activation whose
    commands complete the workflow, so the workflow task is in flight on the server
    until it is done: the gap a late signal must not fall into. The worker runs in
    debug mode, which runs activations inline on the test's event loop (and has no
    deadlock timer to fail a long one), so ``while_held`` runs to its end on a thread
    and event loop of its own. Only the first completion that is not a replay is
    held: the task the server refuses runs again from history and must go on.
    """

    def __init__(self, workflow_id: str, while_held: Callable[[], Awaitable[None]]) -> None:
        self._workflow_id = workflow_id
        self._while_held = while_held
        self.held = False
        self.error: BaseException | None = None

    def _on_return(self) -> None:
        if self.held or workflow.info().workflow_id != self._workflow_id:
            return
        if workflow.unsafe.is_replaying():
            return
        self.held = True

        def hold() -> None:
            try:
                asyncio.run(asyncio.wait_for(self._while_held(), WAIT))
            except BaseException as err:  # re-raised by the test, not lost in the thread
                self.error = err

        thread = threading.Thread(target=hold, name="digest-late-signal")
        thread.start()
        thread.join()

    def interceptor(self) -> Interceptor:
        """A worker interceptor calling _on_return when the run function returns."""
        hold = self

        class _Inbound(WorkflowInboundInterceptor):
            async def execute_workflow(self, input: ExecuteWorkflowInput) -> Any:
                result = await super().execute_workflow(input)
                hold._on_return()
                return result

        class _Hooks(Interceptor):
            def workflow_interceptor_class(
                self, input: WorkflowInterceptorClassInput
            ) -> type[WorkflowInboundInterceptor]:
                return _Inbound

        return _Hooks()


@dataclass
class Digest:
    """Ben's email digest with the real activities over the test's database and SMTP."""

    client: Client
    core: Core
    options: NotifyOptions
    notify: NotifyActivities
    channels: ChannelActivities
    inbox: Inbox
    ana: str
    ben: str
    conversation: str
    messages: int = 0

    @property
    def workflow_id(self) -> str:
        return notify_digest_workflow_id(Channel.EMAIL, self.ben)

    async def queued_item(self) -> str:
        """A new message from Ana whose email row for Ben is queued for his digest."""
        self.messages += 1
        log = self.core.notifications
        stored = await self.core.messages.persist(
            PersistMessageInput(self.conversation, self.ana, f"c-{self.messages}", "deploy done")
        )
        message = NotifyMessageInput(
            message_id=stored.message_id,
            conversation_id=self.conversation,
            sender_id=self.ana,
            seq=stored.seq,
            created_at=stored.created_at,
            options=self.options,
        )
        await log.plan(PlanNotificationsInput(message=message, now=stored.created_at))
        due, _ = await log.dispatch_due(
            DispatchDueInput(
                message_id=stored.message_id,
                options=self.options,
                now=stored.created_at + DUE_LATER,
            )
        )
        [item] = [i for i in due.digests if i.recipient_id == self.ben]
        assert (await self.row(item.notification_id)).status is NotificationStatus.QUEUED
        return item.notification_id

    async def queue(self, notification_id: str, *, client: Client | None = None) -> None:
        """What the notification dispatch does with a due row: the real queue_digests
        (through ``client`` when given, else the test's)."""
        notify = NotifyActivities(self.core.notifications, client=client or self.client)
        await ActivityEnvironment().run(
            notify.queue_digests,
            QueueDigestsInput(
                items=[DigestItem(notification_id, self.ben, Channel.EMAIL)],
                options=self.options,
            ),
        )

    async def row(self, notification_id: str) -> NotificationRow:
        """One of Ben's log rows."""
        rows = await self.core.notifications.rows(recipient_id=self.ben)
        [found] = [r for r in rows if r.id == notification_id]
        return found

    def workers(
        self,
        *,
        hold: _HoldCompletion | None = None,
        after_send: Callable[[], Awaitable[None]] | None = None,
    ) -> list[Worker]:
        """The digest's workflow worker and the email worker, with the test's hooks.

        The workflow worker is unsandboxed so the hold's interceptor is the test's own
        object (the sandbox would import this module again), and in debug mode so a
        held activation is not failed as a deadlock after 2 s. ``after_send`` runs
        inside the first send_email, after the email went out and before the activity
        returns.
        """
        pending_hook = [after_send] if after_send is not None else []

        @activity.defn(name="send_email")
        async def send_email(input: SendNotificationsInput) -> SendNotificationsResult:
            result = await self.channels.send_email(input)
            if pending_hook:
                await pending_hook.pop()()
            return result

        return [
            Worker(
                self.client,
                task_queue=self.options.task_queue,
                workflows=[NotificationDigestWorkflow],
                activities=[self.notify.prepare_digest],
                workflow_runner=UnsandboxedWorkflowRunner(),
                interceptors=[hold.interceptor()] if hold is not None else [],
                debug_mode=True,
            ),
            Worker(self.client, task_queue=self.options.email_task_queue, activities=[send_email]),
        ]


@pytest.fixture
async def digest(
    settings: Settings, core: Core, dev_env: WorkflowEnvironment, task_queue: str
) -> AsyncIterator[Digest]:
    inbox, port = Inbox(), free_port()
    options = NotifyOptions(
        digest_window_seconds=1,
        task_queue=f"{task_queue}-notify",
        push_task_queue=f"{task_queue}-push",
        email_task_queue=f"{task_queue}-email",
        sms_task_queue=f"{task_queue}-sms",
    )
    ana = await core.directory.create_user(NewUser(handle="ana", display_name="Ana"))
    ben = await core.directory.create_user(
        NewUser(handle="ben", display_name="Ben", email=f"ben@{MAIL_DOMAIN}")
    )
    await core.preferences.set_user(ben, NotificationPreferences(push=False))
    conversation = await core.directory.create_conversation(
        kind=ConversationKind.GROUP, members=[ana, ben], title="ops", owner_id=ana
    )
    sender_settings = base_settings(
        database_url=settings.database_url,
        smtp_host="127.0.0.1",
        smtp_port=port,
        email_from=f"Missive <notify@{MAIL_DOMAIN}>",
    )
    async with AsyncExitStack() as stack:
        stack.callback(start_smtp(inbox, port).stop)
        yield Digest(
            client=dev_env.client,
            core=core,
            options=options,
            notify=NotifyActivities(core.notifications, client=dev_env.client),
            channels=ChannelActivities(open_notify(sender_settings, core, stack)),
            inbox=inbox,
            ana=ana,
            ben=ben,
            conversation=conversation,
        )


async def _assert_each_item_went_out_in_its_own_digest(
    digest: Digest, items: list[str], result: NotificationDigestResult
) -> None:
    """Every item digested into a sent digest row, one email per digest, by one run."""
    rows = [await digest.row(i) for i in items]
    assert [r.status for r in rows] == [NotificationStatus.DIGESTED] * len(items), rows
    digest_ids = [str(r.digest_id) for r in rows]
    assert len(set(digest_ids)) == len(items), digest_ids
    for digest_id in digest_ids:
        sent = await digest.row(digest_id)
        assert (sent.status, sent.item_count) == (NotificationStatus.SENT, 1), sent
    assert len(digest.inbox.to(f"ben@{MAIL_DOMAIN}")) == len(items)
    assert len(digest.inbox.emails) == len(items)  # each exactly once
    assert (result.digests, result.items) == (len(items), len(items))


async def test_an_item_queued_during_the_last_send_gets_the_next_digest(digest: Digest) -> None:
    first, second = await digest.queued_item(), await digest.queued_item()
    result, history, run_id, latest_run = await _first_run(
        digest, digest.workers(after_send=lambda: digest.queue(second)), first
    )
    await _assert_each_item_went_out_in_its_own_digest(digest, [first, second], result)
    events = list(history.events)
    # The signal came while the first send was running, and that run sent both digests.
    signals = _all(events, EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED)
    first_sent = _first(events, EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED)
    assert len(signals) == 2 and signals[1] < first_sent, _names(events)
    assert latest_run == run_id


async def test_an_item_queued_while_the_run_completes_is_not_left_queued(digest: Digest) -> None:
    first, second = await digest.queued_item(), await digest.queued_item()
    config = digest.client.service_client.config

    async def queue_second() -> None:
        # This loop's own client: the test's is bound to the loop the hold blocks.
        client = await Client.connect(
            config.target_host,
            namespace=digest.client.namespace,
            data_converter=data_converter(base_settings()),
        )
        await digest.queue(second, client=client)

    hold = _HoldCompletion(digest.workflow_id, queue_second)
    result, history, run_id, latest_run = await _first_run(digest, digest.workers(hold=hold), first)
    if hold.error is not None:
        raise hold.error
    assert hold.held, "the run never returned"
    await _assert_each_item_went_out_in_its_own_digest(digest, [first, second], result)
    events = list(history.events)
    # The gap was hit: the second item's signal came after the first digest's send
    # completed, and the server refused the task completing the run because of it.
    [refused] = [
        e
        for e in events
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED
        and e.workflow_task_failed_event_attributes.cause
        == WorkflowTaskFailedCause.WORKFLOW_TASK_FAILED_CAUSE_UNHANDLED_COMMAND
    ]
    first_sent = _first(events, EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED)
    signals = _all(events, EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED)
    assert len(signals) == 2 and first_sent < refused.event_id < signals[1], _names(events)
    # The same run then sent the second digest: no other run was started for it.
    assert latest_run == run_id


async def _first_run(
    digest: Digest, workers: list[Worker], first: str
) -> tuple[NotificationDigestResult, WorkflowHistory, str, str]:
    """Queues ``first`` with ``workers`` running and waits for the run it started: its
    result and history, its run id, and the run id latest once it ended."""
    async with AsyncExitStack() as stack:
        for worker in workers:
            await stack.enter_async_context(worker)
        await digest.queue(first)
        latest = digest.client.get_workflow_handle(digest.workflow_id)
        run_id = (await latest.describe()).run_id
        first_run = digest.client.get_workflow_handle(
            digest.workflow_id, run_id=run_id, result_type=NotificationDigestResult
        )
        result = await asyncio.wait_for(first_run.result(), WAIT)
        history = await first_run.fetch_history()
        return result, history, run_id, (await latest.describe()).run_id


def _all(events: list[HistoryEvent], kind: EventType.ValueType) -> list[int]:
    return [e.event_id for e in events if e.event_type == kind]


def _first(events: list[HistoryEvent], kind: EventType.ValueType) -> int:
    return _all(events, kind)[0]


def _names(events: list[HistoryEvent]) -> list[str]:
    """The history as event names, for a failing assertion's message."""
    return [f"{e.event_id} {EventType.Name(e.event_type)}" for e in events]
