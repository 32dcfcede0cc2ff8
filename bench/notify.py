"""Notification fan-out: one message to a large group, against direct sends from one loop.

    python -m bench.notify [--members 2000] [--offline 1500] [--grace 3] [--rounds 2]

Measured in one run, against the same local FCM sink:

* Missive: one message to a group of ``--members`` members, each with one device,
  sent through Temporal (the lifecycle runs its notification agenda). ``--members -
  --offline`` of them receive the message within the grace period; the others get
  a push. The wave is timed from the moment the pushes fell due (the message's
  time plus the grace period, a deliberate wait) until the sink has every push.
* Direct: the same number of pushes, through the same PushSender, from one asyncio
  loop with the same concurrency, no Temporal and no database.

It also counts the Temporal actions the notifications cost, per notified recipient:
the lifecycle runs the notification agenda itself, so they are the actions in its
history beyond those of a lifecycle without notifications (start, persist and
broadcast local activities, the window timer).
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta

from sqlalchemy import text
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from bench.harness import Stack, free_port, stack
from fakes import FcmSink, serve
from missive.models import ConversationKind
from missive.notify.dispatch import SEND_CONCURRENCY
from missive.notify.push import PushMessage, PushSender, _StaticSinkCredentials
from missive.schemas import NotifyOptions, SendMessageInput
from missive.services.directory import NewUser
from runtime.messaging import send_message
from runtime.wiring import Core, open_core

ACTION_EVENTS = {
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED,
    EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED,
    EventType.EVENT_TYPE_TIMER_STARTED,
    EventType.EVENT_TYPE_MARKER_RECORDED,  # local activities
    EventType.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED,
    EventType.EVENT_TYPE_SIGNAL_EXTERNAL_WORKFLOW_EXECUTION_INITIATED,
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED,
}


async def _group(core: Core, members: int) -> tuple[str, list[str], str]:
    """A sender and ``members`` members with one device each, in one group."""
    sender = await core.directory.create_user(NewUser(handle=f"ana-{uuid.uuid4().hex[:6]}"))
    ids = [str(uuid.uuid4()) for _ in range(members)]
    async with core.engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO users (id, handle, display_name) "
                "SELECT u, 'm-' || u::text, 'Member' FROM unnest(CAST(:ids AS uuid[])) AS u"
            ),
            {"ids": ids},
        )
        await conn.execute(
            text(
                "INSERT INTO devices (id, user_id, platform, push_token) "
                "SELECT gen_random_uuid(), u, 'android', 'tok-' || u::text "
                "FROM unnest(CAST(:ids AS uuid[])) AS u"
            ),
            {"ids": ids},
        )
    conversation = await core.directory.create_conversation(
        kind=ConversationKind.GROUP, members=[sender, *ids], title="ops"
    )
    return sender, ids, conversation


LIFECYCLE_ACTIONS = 4
"""A lifecycle's own actions: its start, persist and broadcast, the window timer."""


async def _actions(client: Client, workflow_id: str) -> int:
    history = await client.get_workflow_handle(workflow_id).fetch_history()
    return sum(1 for e in history.events if e.event_type in ACTION_EVENTS) - LIFECYCLE_ACTIONS


async def _project_round(
    s: Stack, core: Core, sink: FcmSink, *, members: int, offline: int, grace: int
) -> tuple[float, int, int]:
    sender, ids, conversation = await _group(core, members)
    online = ids[offline:]
    sink.clear()
    options = NotifyOptions(
        grace_seconds=grace,
        email_delay_seconds=86_400,
        sms_delay_seconds=86_400,
        push_batch_size=100,
    )
    accepted = await send_message(
        s.env.client,
        SendMessageInput(
            conversation_id=conversation,
            sender_id=sender,
            client_message_id=uuid.uuid4().hex,
            body="deploy finished, all green",
            notify=options,
        ),
    )
    async with core.engine.begin() as conn:  # the online members' clients ack within the grace
        await conn.execute(
            text(
                "UPDATE deliveries SET status = 1, delivered_at = now() "
                "WHERE message_id = :m AND recipient_id = ANY(CAST(:ids AS uuid[]))"
            ),
            {"m": accepted.message_id, "ids": online},
        )
    due = accepted.created_at + timedelta(seconds=grace)
    deadline = time.monotonic() + 600
    while len(sink.received) < offline:
        if time.monotonic() > deadline:
            raise SystemExit(f"only {len(sink.received)} of {offline} pushes arrived in 600 s")
        await asyncio.sleep(0.02)
    wave = (datetime.now(UTC) - due).total_seconds()
    await asyncio.sleep(1.0)  # anything extra (a duplicate) would show up now
    lifecycle = f"message-{accepted.message_id}"
    return wave, len(sink.received), await _actions(s.env.client, lifecycle)


async def _direct_round(sink: FcmSink, url: str, n: int) -> float:
    sender = PushSender(
        project_id="missive-dev", credentials=_StaticSinkCredentials(), endpoint=url
    )
    sink.clear()
    limit = asyncio.Semaphore(SEND_CONCURRENCY)

    async def one(i: int) -> None:
        async with limit:
            await sender.send(
                PushMessage(token=f"direct-{i}", title="Ana in #ops", body="deploy finished")
            )

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    elapsed = time.perf_counter() - started
    assert len(sink.received) == n
    return elapsed


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=2000)
    parser.add_argument("--offline", type=int, default=1500)
    parser.add_argument("--grace", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    sink = FcmSink()
    port = free_port()
    runner, url = await serve(sink.app(), port=port)
    env = {
        "FCM_ENDPOINT": url,
        "NOTIFY_PUSH_PER_SECOND": "100000",  # the bench measures us, not a quota
        "LOG_LEVEL": "WARNING",
    }
    try:
        async with stack(env=env) as s, AsyncExitStack() as exit_stack:
            core = await open_core(s.settings, exit_stack, pool_size=4)
            for round_no in range(1, args.rounds + 1):
                direct = await _direct_round(sink, url, args.offline)
                wave, received, actions = await _project_round(
                    s, core, sink, members=args.members, offline=args.offline, grace=args.grace
                )
                print(
                    f"round {round_no}: {args.offline} offline of {args.members}: "
                    f"Missive push wave {wave:.2f} s ({args.offline / wave:.0f}/s, "
                    f"{received} pushes at the sink); direct {direct:.2f} s "
                    f"({args.offline / direct:.0f}/s); ratio {direct / wave:.2f} (goal >= 0.5); "
                    f"{actions} actions = {actions / args.offline:.3f} per notified recipient"
                )
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
