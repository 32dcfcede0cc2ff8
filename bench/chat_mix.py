"""Chat mix: real clients that ack every message, against the same clients that never ack.

    python -m bench.chat_mix [--seconds 10] [--rounds 2] [--concurrency 12] [--read-after 0.5]
        [--reconnect-every 1] [--offline 1] [--membership-every 2]

Conversations of 2, 6 and 50 members, every member connected over Socket.IO. Each
sender loop sends its next message as soon as the last one was acked. In the
"receipts" rounds every recipient acks ``message:delivered`` when ``message:new``
arrives and ``message:read`` ``--read-after`` seconds later, as a chat app does; in
the "no receipts" rounds nobody acks. Bare no-activity workflows at the same
concurrency give the server's floor. The three alternate, so a noisy moment on
this machine hits each alike; the medians are compared.

Every round, timed or paced, with receipts or without, churns alike: every
``--reconnect-every`` seconds one member (senders too) drops its connection, stays
offline ``--offline`` seconds, reconnects, catches up with one ``message:sync`` and,
in rounds with receipts, acks delivered and read as one watermark per conversation;
a send whose connection dropped before its ack is sent again with the same
client_message_id once reconnected. In each group with members who do not send, the
owner removes one every ``--membership-every`` seconds while they stay connected and
adds them back half a period later; they catch up the same way. Printed with the
figures: what the churn did, and the truth of the acks (every send acked ok is
stored, once; nothing is stored without an ok ack; one lifecycle per message).
Resent sends are left out of the latencies (theirs is their sender's time offline).

The members speak Socket.IO over their own WebSockets (bench.raw_socket.ChatSocket):
on a phone a client's reading costs the server nothing, while python-socketio's
client (``--client socketio``) took about a third as much CPU as the gateway here,
from the same two cores.

Printed: messages/s of each, the ratios (goals: receipts >= 0.8 of no receipts, no
receipts >= 0.7 of bare); then, in rounds paced at ``--paced`` messages/s (a closed
loop at full load measures queueing, not latency), receipt ack p50/p99 (goal p99 <
100 ms) and send -> ``message:new`` p50/p99 with and without receipts (goal: with
receipts within 1.5x); Timeout acks (goal 0); and what each message cost Temporal,
read from the server: workflows started, workflow tasks, signals and history events
per lifecycle. And what the sends-only goal leaves each receipt: a round with receipts
pays inside its sending window for its lifecycles' end (the all-read signal, its task,
the completion: Temporal's extra CPU, since receipts start nothing there), which a round
without pays later; so the ratio it could reach with receipts that cost nothing else,
and the CPU per receipt 0.8 leaves against what each receipt cost here.

With ``CHAT_MIX_MARKER=<file>`` each round writes its tag (``on0``, ``off0``, ``pon0``,
...) to that file as it starts, for a profiler to attach to the right round.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import statistics
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import socketio
from sqlalchemy import text
from temporalio.api.enums.v1 import EventType

from bench.harness import Stack, percentile, stack
from bench.raw_socket import ChatSocket, chat_socket
from bench.send_latency import _floor_throughput
from missive.constants import MESSAGE_WORKFLOW_PREFIX
from missive.models import ConversationKind
from missive.services.directory import NewUser
from missive.services.receipts import MAX_CHANGES_REPORTED
from missive.tokens import issue_token
from runtime.wiring import open_core

SIZES = (2, 6, 50)


def _cpu_seconds() -> dict[str, float]:
    """CPU time so far of this bench, its gateway, worker and Temporal, and PostgreSQL."""
    import psutil

    me = psutil.Process()
    totals = {"bench clients": sum(me.cpu_times()[:2])}
    for child in me.children(recursive=True):
        try:
            cmd = " ".join(child.cmdline())
            used = sum(child.cpu_times()[:2])
        except psutil.Error:
            continue
        name = (
            "gateway"
            if "gateway" in cmd
            else "worker"
            if "worker.py" in cmd
            else "temporal"
            if "temporal" in cmd
            else "other"
        )
        totals[name] = totals.get(name, 0.0) + used
    # PostgreSQL: every server process, plus what its backends that have exited used (a
    # pool's overflow connections close under load): the postmaster's reaped children.
    # Summing the live processes alone lost those, down to a negative figure per round.
    for proc in psutil.process_iter(["name", "ppid"]):
        if proc.info["name"] != "postgres":
            continue
        try:
            times = proc.cpu_times()
            used = times.user + times.system
            parent = psutil.Process(proc.info["ppid"]) if proc.info["ppid"] else None
            if parent is None or parent.name() != "postgres":  # a postmaster
                used += times.children_user + times.children_system
        except psutil.Error:
            continue
        totals["postgres"] = totals.get("postgres", 0.0) + used
    return totals


@dataclass
class Round:
    """What one round of the chat mix measured."""

    receipts: bool
    started: dict[str, float] = field(default_factory=dict)
    first_arrival: dict[str, float] = field(default_factory=dict)
    acked_ok: int = 0
    ack_errors: Counter[str] = field(default_factory=Counter)
    receipt_latencies: list[float] = field(default_factory=list)
    receipt_errors: Counter[str] = field(default_factory=Counter)
    pending: set[asyncio.Task[None]] = field(default_factory=set)
    message_ids: list[str] = field(default_factory=list)
    acked_cmids: list[str] = field(default_factory=list)
    cost: tuple[float, float, float] = (0.0, 0.0, 0.0)
    """Workflow tasks, history events and signals per lifecycle (sampled)."""
    cpu: dict[str, float] = field(default_factory=dict)
    """CPU seconds each process spent during the round."""
    tail: float = 0.0
    """Seconds from the end of sending (with receipts) or from everyone's catch-up read
    (without) until every lifecycle of the round had closed."""
    tail_cpu: dict[str, float] = field(default_factory=dict)
    """CPU seconds each process spent in the tail."""
    reconnects: int = 0
    """Members who dropped their connection, stayed offline and came back."""
    synced: int = 0
    """Messages the members who came back (or were added back) read with message:sync."""
    resent: int = 0
    """Sends whose connection dropped before the ack, sent again with the same
    client_message_id once reconnected."""
    resent_took: list[float] = field(default_factory=list)
    """From their first attempt to their ack (the latency figures leave them out)."""
    resent_duplicates: int = 0
    """Of those, how many were acked ``duplicate`` (the first attempt had stored it)."""
    membership_changes: Counter[str] = field(default_factory=Counter)
    """Members removed and added back while connected, and how those calls were acked."""


def _sample(current: Round, n: int = 60) -> list[str]:
    """Workflow ids of up to n of the round's lifecycles, spread over the round."""
    step = max(1, len(current.message_ids) // n)
    return [f"{MESSAGE_WORKFLOW_PREFIX}-{m}" for m in current.message_ids[::step]][:n]


class _SocketIOClient:
    """python-socketio's client behind ChatSocket's ``call`` / ``on`` (``--client socketio``)."""

    def __init__(self) -> None:
        self.sio = socketio.AsyncClient(reconnection=False)

    def on(self, event: str, handler: Any) -> None:
        async def run(data: Any) -> None:
            handler(data)

        self.sio.on(event, run)

    async def call(self, event: str, data: object, *, within: float) -> Any:
        try:
            return await self.sio.call(event, data, timeout=within)
        except (socketio.exceptions.BadNamespaceError, socketio.exceptions.DisconnectedError):
            raise ConnectionError("the connection closed") from None


class Member:
    """One connected user who behaves like a chat app (when the round says so): acks
    what arrives, reads it a moment later, drops off and comes back, catching up
    with ``message:sync``, and resends what was in flight when the connection dropped."""

    def __init__(self, user_id: str, read_after: float) -> None:
        self.user_id = user_id
        self.read_after = read_after
        self.client: ChatSocket | _SocketIOClient | None = None
        self.round: Round | None = None
        self.last_seen: dict[str, int] = {}
        self.read_to: dict[str, int] = {}
        self.online = asyncio.Event()
        self._connection: AsyncExitStack | None = None

    async def catch_up(self) -> None:
        """Reads everything seen so far, as a user scrolling through the backlog: one
        receipt per conversation, or one per MAX_CHANGES_REPORTED messages (a receipt
        tells the lifecycles of at most that many of the messages it reads)."""
        for conversation_id, seq in self.last_seen.items():
            read = self.read_to.get(conversation_id, 0)
            while read < seq:
                read = min(seq, read + MAX_CHANGES_REPORTED)
                await self.call(
                    "message:read", {"conversation_id": conversation_id, "up_to_seq": read}
                )
            self.read_to[conversation_id] = seq

    async def connect(self, s: Stack, kind: str) -> None:
        """Connects over ChatSocket (``kind`` "raw") or python-socketio's client."""
        token = issue_token(s.settings.gateway_secret, self.user_id, ttl_seconds=7200)
        connection = AsyncExitStack()
        if kind == "socketio":
            client = _SocketIOClient()
            client.on("message:new", self._on_new)
            await client.sio.connect(s.gateway_url, auth={"token": token}, transports=["websocket"])
            connection.push_async_callback(client.sio.disconnect)
            self.client = client
        else:
            chat = await connection.enter_async_context(chat_socket(s.gateway_url, token))
            chat.on("message:new", self._on_new)
            chat.start()
            self.client = chat
        self._connection = connection
        self.online.set()

    async def disconnect(self) -> None:
        """Drops the connection: calls waiting for an ack fail with ConnectionError."""
        self.online.clear()
        if self._connection is not None:
            connection, self._connection = self._connection, None
            await connection.aclose()

    async def reconnect(
        self, s: Stack, kind: str, offline: float, conversations: list[str]
    ) -> None:
        """Goes offline for ``offline`` seconds, comes back and catches up on
        ``conversations``: what it missed, by message:sync, then its receipts."""
        current = self.round
        await self.disconnect()
        await asyncio.sleep(offline)
        await self.connect(s, kind)
        if current is not None:
            current.reconnects += 1
        await self.resync(conversations)

    async def resync(self, conversations: list[str]) -> None:
        """Pages through what came after the last message seen in each conversation
        (one message:sync for all of them), then acks delivered and, ``read_after``
        later, read, one watermark per conversation, as a client back online does."""
        current = self.round
        after = {c: self.last_seen.get(c, 0) for c in conversations}
        while after:
            ack = await self.call(
                "message:sync",
                {
                    "conversations": [
                        {"conversation_id": c, "after_seq": a} for c, a in after.items()
                    ]
                },
            )
            if not ack.get("ok"):
                return
            more: dict[str, int] = {}
            for page in ack["conversations"]:
                conversation_id, messages = page["conversation_id"], page.get("messages") or []
                if current is not None:
                    current.synced += sum(m["sender_id"] != self.user_id for m in messages)
                if messages:
                    newest = max(int(m["seq"]) for m in messages)
                    self.last_seen[conversation_id] = max(
                        self.last_seen.get(conversation_id, 0), newest
                    )
                    if page.get("has_more"):
                        more[conversation_id] = newest
            after = more
        if current is None or not current.receipts:
            return
        caught_up = [(c, self.last_seen[c]) for c in conversations if c in self.last_seen]
        for event in ("message:delivered", "message:read"):
            if event == "message:read":
                await asyncio.sleep(self.read_after)
            for conversation_id, seq in caught_up:
                where = {"conversation_id": conversation_id, "up_to_seq": seq}
                with contextlib.suppress(ConnectionError):
                    await self._receipt(current, event, where)
                if event == "message:read":
                    self.read_to[conversation_id] = max(self.read_to.get(conversation_id, 0), seq)

    async def wait_online(self) -> None:
        """Returns once connected (at once when connected)."""
        async with asyncio.timeout(30):
            await self.online.wait()

    async def call(self, event: str, data: object) -> Any:
        """Emits ``event`` once connected and returns its ack.

        Raises:
            ConnectionError: the connection dropped before the ack came.
        """
        await self.wait_online()
        assert self.client is not None
        return await self.client.call(event, data, within=30)

    async def call_surviving(self, event: str, data: object) -> tuple[Any, int]:
        """``call``, sent again after each dropped connection (safe for an event that
        is idempotent, as message:send is for its client_message_id): the ack and how
        many times it was sent again."""
        again = 0
        while True:
            try:
                return await self.call(event, data), again
            except ConnectionError:
                again += 1

    def _on_new(self, data: dict[str, Any]) -> None:
        now = time.perf_counter()
        current = self.round
        if data["sender_id"] == self.user_id:
            return
        conversation_id = str(data["conversation_id"])
        self.last_seen[conversation_id] = max(
            self.last_seen.get(conversation_id, 0), int(data["seq"])
        )
        if current is None:
            return
        current.first_arrival.setdefault(str(data["client_message_id"]), now)
        if current.receipts:
            self.read_to[conversation_id] = self.last_seen[conversation_id]
            task = asyncio.create_task(self._receipts(current, data))
            current.pending.add(task)
            task.add_done_callback(current.pending.discard)

    async def _receipt(self, current: Round, event: str, where: dict[str, Any]) -> None:
        await self.wait_online()  # an ack's latency counts from its send, not from offline
        started = time.perf_counter()
        ack = await self.call(event, where)
        current.receipt_latencies.append(time.perf_counter() - started)
        if not ack.get("ok"):
            current.receipt_errors[ack["error"]["type"]] += 1

    async def _receipts(self, current: Round, data: dict[str, Any]) -> None:
        where = {"conversation_id": data["conversation_id"], "up_to_seq": data["seq"]}
        try:
            await self._receipt(current, "message:delivered", where)
            await asyncio.sleep(self.read_after)
            await self._receipt(current, "message:read", where)
        except TimeoutError:
            current.receipt_errors["Timeout (client)"] += 1
        except ConnectionError:
            # Dropped with the connection; the watermark sent on reconnecting covers it.
            current.receipt_errors["dropped with the connection"] += 1


async def _temporal_cost(s: Stack, workflow_ids: list[str]) -> tuple[float, float, float]:
    """Workflow tasks, history events and signals per lifecycle, from the server."""
    tasks = events = signals = 0
    for wid in workflow_ids:
        history = await s.env.client.get_workflow_handle(wid).fetch_history()
        kinds = [e.event_type for e in history.events]
        tasks += kinds.count(EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED)
        signals += kinds.count(EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED)
        events += len(kinds)
    n = max(1, len(workflow_ids))
    return tasks / n, events / n, signals / n


async def _count(s: Stack, query: str) -> int:
    return (await s.env.client.count_workflows(query)).count


RUNNING_LIFECYCLES = "WorkflowType = 'MessageLifecycleWorkflow' AND ExecutionStatus = 'Running'"


async def _tail(s: Stack, current: Round, cpu_from: dict[str, float]) -> None:
    """Waits until no lifecycle runs, and records how long that took and its CPU.

    A lifecycle nobody reads ends at its window (a day by default) with a timer's
    workflow task and its completion; one whose readers ack ends at ALL_READ with a
    signal's workflow task and its completion. A round that stops counting when
    sending stops counts the second kind's end and not the first's: the tail puts
    both ends in, as a deployment pays for both.
    """
    started = time.perf_counter()
    async with asyncio.timeout(120):
        while True:
            if not await _count(s, RUNNING_LIFECYCLES):
                break
            await asyncio.sleep(0.2)  # visibility is polled: nothing to await
    current.tail = time.perf_counter() - started
    after = _cpu_seconds()
    current.tail_cpu = {k: after[k] - cpu_from.get(k, 0.0) for k in after}


async def run(
    seconds: float,
    rounds: int,
    concurrency: int,
    read_after: float,
    paced: float,
    sizes: tuple[int, ...] = SIZES,
    client: str = "raw",
    reconnect_every: float = 1.0,
    offline: float = 1.0,
    membership_every: float = 2.0,
) -> None:
    """Runs the alternating rounds and prints the figures."""
    # Capacity is measured here, not the send limits: a sender may exceed 5/s (the
    # bucket is still checked on every send, so its cost is in the figures).
    limits = {
        "SEND_RATE_PER_SECOND": "10000",
        "SEND_BURST": "10000",
        "SEND_MAX_IN_FLIGHT_PER_SOCKET": "64",
    }
    async with stack(env=limits) as s, AsyncExitStack() as exit_stack:
        core = await open_core(s.settings, exit_stack, pool_size=2)
        conversations: list[tuple[str, list[Member]]] = []
        for size in sizes:
            ids = [
                await core.directory.create_user(NewUser(handle=f"m{size}-{i}"))
                for i in range(size)
            ]
            conv = await core.directory.create_conversation(
                kind=ConversationKind.GROUP, members=ids, owner_id=ids[0]
            )
            members = [Member(user, read_after) for user in ids]
            for member in members:
                await member.connect(s, client)
                exit_stack.push_async_callback(member.disconnect)
            conversations.append((conv, members))
        everyone = [m for _, members in conversations for m in members]
        home = {m.user_id: conv for conv, members in conversations for m in members}

        def sender_of(n: int) -> tuple[str, Member]:
            """Sender loop n's conversation and the member who sends in it."""
            conv, members = conversations[n % len(conversations)]
            return conv, members[(n // len(conversations)) % len(members)]

        senders = {sender_of(n)[1].user_id for n in range(concurrency)}
        # Who drops off next: spread over the conversations, a different member each time.
        to_reconnect = itertools.cycle(
            [
                m
                for group in itertools.zip_longest(*(ms for _, ms in conversations))
                for m in group
                if m
            ]
        )
        to_remove = {
            conv: itertools.cycle([m for m in members[1:] if m.user_id not in senders])
            for conv, members in conversations
            if any(m.user_id not in senders for m in members[1:])
        }
        counter = 0
        marker = os.environ.get("CHAT_MIX_MARKER")

        async def churn(current: Round, until: float) -> None:
            """Every ``reconnect_every`` s one member drops off for ``offline`` s and comes
            back; in each group with a member who does not send, every ``membership_every``
            s the owner removes one while connected and adds them back half a period later
            (who is added back catches up as a client told so does). Both end by ``until``
            with everyone connected and a member again."""
            work: list[asyncio.Task[None]] = []

            async def reconnects() -> None:
                while time.perf_counter() + reconnect_every < until:
                    await asyncio.sleep(reconnect_every)
                    member = next(to_reconnect)
                    if member.online.is_set():
                        work.append(
                            asyncio.create_task(
                                member.reconnect(s, client, offline, [home[member.user_id]])
                            )
                        )

            async def memberships(conv: str, owner: Member, candidates: Iterator[Member]) -> None:
                while time.perf_counter() + membership_every < until:
                    await asyncio.sleep(membership_every / 2)
                    member = next(candidates)
                    ack, _ = await owner.call_surviving(
                        "conversation:remove_member",
                        {"conversation_id": conv, "user_id": member.user_id},
                    )
                    current.membership_changes[
                        "removed" if ack.get("ok") else f"remove {ack['error']['type']}"
                    ] += 1
                    await asyncio.sleep(membership_every / 2)
                    ack, _ = await owner.call_surviving(
                        "conversation:add_members",
                        {"conversation_id": conv, "user_ids": [member.user_id]},
                    )
                    current.membership_changes[
                        "added back" if ack.get("ok") else f"add {ack['error']['type']}"
                    ] += 1
                    work.append(asyncio.create_task(member.resync([conv])))

            owners = dict(conversations)  # each group's first member owns it
            loops = [reconnects()] if reconnect_every > 0 else []
            if membership_every > 0:
                loops += [memberships(c, owners[c][0], who) for c, who in to_remove.items()]
            await asyncio.gather(*loops)
            if work:
                await asyncio.gather(*work)

        async def one_round(receipts: bool, tag: str, rate: float | None = None) -> Round:
            """Closed loop (each sender sends when its last send was acked), or with
            ``rate`` an open loop of ``rate`` messages/s in all, for latency."""
            nonlocal counter
            if marker:  # for a profiler: which round runs now
                await asyncio.to_thread(Path(marker).write_text, tag)
            current = Round(receipts=receipts)
            for member in everyone:
                member.round = current
            deadline = time.perf_counter() + seconds
            interval = concurrency / rate if rate else 0.0

            async def loop(n: int) -> None:
                nonlocal counter
                conv, sender = sender_of(n)
                tick = time.perf_counter() + interval * n / concurrency
                while time.perf_counter() < deadline:
                    if interval:
                        await asyncio.sleep(max(0.0, tick - time.perf_counter()))
                        tick += interval
                    counter += 1
                    cmid = f"{tag}-{n}-{counter}"
                    await sender.wait_online()
                    current.started[cmid] = time.perf_counter()
                    ack, again = await sender.call_surviving(
                        "message:send",
                        {"conversation_id": conv, "client_message_id": cmid, "body": f"hi {cmid}"},
                    )
                    current.resent += again
                    if again:  # its latency is its sender's time offline: not the gateway's
                        current.resent_took.append(time.perf_counter() - current.started.pop(cmid))
                    if ack.get("ok"):
                        current.acked_ok += 1
                        current.message_ids.append(str(ack["message_id"]))
                        current.acked_cmids.append(cmid)
                        if again and ack.get("duplicate"):
                            current.resent_duplicates += 1
                    else:
                        current.ack_errors[ack["error"]["type"]] += 1

            cpu_before = _cpu_seconds()
            started = time.perf_counter()
            churning = asyncio.create_task(churn(current, deadline))
            await asyncio.gather(*(loop(n) for n in range(concurrency)))
            elapsed = time.perf_counter() - started
            await churning  # everyone is back and a member again
            current.started["__elapsed__"] = elapsed
            cpu_after = _cpu_seconds()
            current.cpu = {k: cpu_after[k] - cpu_before.get(k, 0.0) for k in cpu_after}
            if receipts:  # the last reads, their signals, and the lifecycles' ends
                await _tail(s, current, cpu_after)
            else:
                await asyncio.sleep(read_after + 1.5)
            if current.pending:
                await asyncio.wait(current.pending, timeout=30)
            for member in everyone:
                member.round = None
            current.cost = await _temporal_cost(s, _sample(current))
            if not receipts:
                # Everyone catches up (one read each) once the histories are sampled: the
                # lifecycles end as they would when their users open the app, and the
                # next round's watermarks do not end them instead.
                cpu_before_tail = _cpu_seconds()
                tail = asyncio.create_task(_tail(s, current, cpu_before_tail))
                await asyncio.gather(*(member.catch_up() for member in everyone))
                await tail
            return current

        # Warm up: connections, prepared statements, sticky queues.
        warm = await one_round(receipts=True, tag="warm")
        with_receipts: list[Round] = []
        without: list[Round] = []
        bare_rates: list[float] = []
        paced_on: list[Round] = []
        paced_off: list[Round] = []
        for r in range(rounds):
            bare_rates.append(await _floor_throughput(s, seconds, concurrency))
            without.append(await one_round(receipts=False, tag=f"off{r}"))
            with_receipts.append(await one_round(receipts=True, tag=f"on{r}"))
            paced_off.append(await one_round(receipts=False, tag=f"poff{r}", rate=paced))
            paced_on.append(await one_round(receipts=True, tag=f"pon{r}", rate=paced))

        def rate(rounds_: list[Round]) -> float:
            return statistics.median(
                r.acked_ok / r.started["__elapsed__"] for r in rounds_ if r.started
            )

        def send_to_new(rounds_: list[Round]) -> list[float]:
            return [
                r.first_arrival[c] - r.started[c]
                for r in rounds_
                for c in r.first_arrival
                if c in r.started
            ]

        on, off, bare = rate(with_receipts), rate(without), statistics.median(bare_rates)

        def rate_done(rounds_: list[Round]) -> float:
            return statistics.median(
                r.acked_ok / (r.started["__elapsed__"] + r.tail) for r in rounds_ if r.started
            )

        def cpu_done(rounds_: list[Round]) -> float:
            return statistics.median(
                (sum(r.cpu.values()) + sum(r.tail_cpu.values())) / max(1, r.acked_ok)
                for r in rounds_
            )

        on_done, off_done = rate_done(with_receipts), rate_done(without)
        cpu_done_on, cpu_done_off = cpu_done(with_receipts), cpu_done(without)
        lat_on, lat_off = send_to_new(paced_on), send_to_new(paced_off)
        receipt_lat = [x for r in paced_on for x in r.receipt_latencies]
        loaded_lat = [x for r in with_receipts for x in r.receipt_latencies]
        timeouts = sum(
            r.ack_errors["Timeout"] + r.receipt_errors["Timeout"]
            for r in [*with_receipts, *without, *paced_on, *paced_off]
        )
        errors_on = sum((r.ack_errors for r in with_receipts), Counter())
        errors_off = sum((r.ack_errors for r in without), Counter())
        receipt_errors = sum((r.receipt_errors for r in with_receipts), Counter())

        # Temporal's side, read from the server after each round.
        cost_on = tuple(statistics.median(r.cost[i] for r in with_receipts) for i in range(3))
        cost_off = tuple(statistics.median(r.cost[i] for r in without) for i in range(3))
        all_rounds = [*with_receipts, *without, *paced_on, *paced_off]
        acked = {c for r in [warm, *all_rounds] for c in r.acked_cmids}
        async with core.engine.connect() as conn:
            stored = Counter(
                (await conn.execute(text("SELECT client_message_id FROM messages"))).scalars()
            )
        missing = sum(1 for c in acked if not stored[c])
        unacked_stored = sum(1 for c in stored if c not in acked)
        lifecycles = await _count(s, "WorkflowType = 'MessageLifecycleWorkflow'")
        memberships = await _count(s, "WorkflowType = 'MembershipWorkflow'")
        receipt_workflows = await _count(s, "WorkflowType = 'ReceiptWorkflow'")
        clears = await _count(s, "WorkflowType = 'ClearPushesWorkflow'")
        sent_on = sum(r.acked_ok for r in with_receipts)
        sent_off = sum(r.acked_ok for r in without)
        receipts_sent = len(receipt_lat)

    ms = 1000.0
    print(
        f"chat mix: conversations of {', '.join(map(str, sizes))}, {concurrency} senders,"
        f" median of {rounds} alternating rounds of {seconds:.0f} s, read {read_after} s after,"
        f" {'python-socketio' if client == 'socketio' else 'ChatSocket'} clients"
    )
    print("throughput (messages/s)")
    print(f"  with receipts (every recipient acks)  {on:7.1f}")
    print(f"  without receipts                      {off:7.1f}")
    print(f"  bare no-activity workflows            {bare:7.1f}")
    print(f"  ratio with / without (goal >= 0.8)    {on / off:7.2f}")
    print(f"  ratio without / bare (goal >= 0.7)    {off / bare:7.2f}")
    print("to completion (sending, then until every lifecycle of the round has closed)")
    print(f"  with receipts                         {on_done:7.1f}")
    print(f"  without receipts (all read at the end) {off_done:6.1f}")
    print(f"  ratio with / without                  {on_done / off_done:7.2f}")
    print(f"  ratio without / bare (bare complete too) {off_done / bare:4.2f}")
    print(
        f"  CPU ms per message, all processes     with {cpu_done_on * ms:6.1f}"
        f"  without {cpu_done_off * ms:6.1f}  ratio {cpu_done_off / cpu_done_on:.2f}"
    )
    print(f"latency (ms) at {paced:.0f} messages/s in all            p50      p99")
    print(
        f"  receipt ack ({len(receipt_lat)} receipts)        "
        f"{statistics.median(receipt_lat) * ms:7.1f}  {percentile(receipt_lat, 99) * ms:7.1f}"
        "   (goal p99 < 100)"
    )
    print(
        f"  receipt ack at full load ({len(loaded_lat)})    "
        f"{statistics.median(loaded_lat) * ms:7.1f}  {percentile(loaded_lat, 99) * ms:7.1f}"
    )
    print(
        f"  send -> message:new, receipts flowing  "
        f"{statistics.median(lat_on) * ms:7.1f}  {percentile(lat_on, 99) * ms:7.1f}"
    )
    print(
        f"  send -> message:new, no receipts       "
        f"{statistics.median(lat_off) * ms:7.1f}  {percentile(lat_off, 99) * ms:7.1f}"
    )
    print(
        f"  p50 ratio (goal <= 1.5)                "
        f"{statistics.median(lat_on) / statistics.median(lat_off):7.2f}"
    )
    rounds_n = max(1, len(all_rounds))
    resent_took = [x for r in all_rounds for x in r.resent_took]
    reconnects = sum(r.reconnects for r in all_rounds) / rounds_n
    synced = sum(r.synced for r in all_rounds) / rounds_n
    changes = dict(sum((r.membership_changes for r in all_rounds), Counter()))
    print(
        f"churn (every round, timed or paced): {reconnects:.1f} reconnects a round after"
        f" {offline:g} s offline ({synced:.0f} messages a round caught up by message:sync);"
        f" members removed and added back while connected, in all: {changes};"
        f" {len(resent_took)} sends resent after a drop"
        f" ({sum(r.resent_duplicates for r in all_rounds)} acked duplicate: stored by the first"
        f" attempt; p50 {statistics.median(resent_took or [0.0]) * ms:.0f} ms from the first"
        " attempt to the ack, left out of the latencies above)"
    )
    print(
        f"truth: {len(acked)} sends acked ok, {missing} of them not stored (goal 0);"
        f" {unacked_stored} stored without an ok ack (goal 0); {lifecycles} lifecycles for"
        f" {sum(stored.values())} stored messages"
    )
    print(f"acks not ok: with receipts {dict(errors_on)}, without {dict(errors_off)}")
    print(
        f"receipt acks not ok: {dict(receipt_errors)} (NotAMember: a read sent while its"
        f" reader was removed); Timeout acks in all: {timeouts} (goal 0)"
    )
    print("CPU ms per message at full load (median rounds)   with receipts  without")
    for name in sorted({k for r in [*with_receipts, *without] for k in r.cpu}):

        def per_message(rounds_: list[Round], name: str = name) -> float:
            return statistics.median(r.cpu.get(name, 0.0) / max(1, r.acked_ok) for r in rounds_)

        print(
            f"  {name:<42} {per_message(with_receipts) * ms:9.1f} {per_message(without) * ms:9.1f}"
        )
    _print_budget(with_receipts, without)
    print("Temporal cost per lifecycle (sampled histories)  tasks  events  signals")
    print(
        f"  with receipts                                {cost_on[0]:6.2f} {cost_on[1]:7.1f}"
        f" {cost_on[2]:8.2f}"
    )
    print(
        f"  without receipts                             {cost_off[0]:6.2f} {cost_off[1]:7.1f}"
        f" {cost_off[2]:8.2f}"
    )
    print(
        f"workflows started per message: 1 lifecycle + "
        f"{(receipt_workflows + clears) / max(1, sent_on + sent_off):.3f} others"
        f" (ReceiptWorkflow: {receipt_workflows}, ClearPushesWorkflow: {clears},"
        f" MembershipWorkflow for the churn: {memberships},"
        f" for {receipts_sent} receipts)"
    )


def _print_budget(with_receipts: list[Round], without: list[Round]) -> None:
    """What the sends-only goal leaves each receipt, from this run's CPU figures.

    Receipts start nothing in Temporal (no ReceiptWorkflow): what the Temporal server
    spends more per message in a round with receipts is its lifecycles' end, the
    all-read signal, its workflow task and the completion, which a round without
    receipts pays only later (at the window, or when its users open the app). That
    alone, the gateway's share of the same tasks left out, caps the ratio at
    sending / (sending + end) even for receipts that cost nothing else; what 0.8 leaves,
    divided by the receipts a message brings, is each receipt's budget, to compare with
    what each one cost here outside Temporal.
    """

    def per_message(rounds_: list[Round], name: str | None = None) -> float:
        return statistics.median(
            (r.cpu.get(name, 0.0) if name else sum(r.cpu.values())) / max(1, r.acked_ok)
            for r in rounds_
        )

    sending, sending_on = per_message(without), per_message(with_receipts)
    end = per_message(with_receipts, "temporal") - per_message(without, "temporal")
    receipts = statistics.median(
        len(r.receipt_latencies) / max(1, r.acked_ok) for r in with_receipts
    )
    if not receipts:
        return
    ms = 1000.0
    print("the sends-only goal, per receipt (CPU ms, all processes; medians of the rounds)")
    print(f"  a message without receipts, while sending            {sending * ms:7.1f}")
    print(f"  its lifecycle's end, Temporal's part (with - without) {end * ms:7.1f}")
    ceiling = sending / (sending + end)
    print(f"  ratio if receipts cost nothing but that end          {ceiling:7.2f}")
    print(f"  receipts per message                                 {receipts:7.1f}")
    print(
        f"  each receipt's cost outside Temporal                 "
        f"{(sending_on - sending - end) / receipts * ms:7.3f}"
    )
    print(
        f"  what 0.8 sends only leaves each receipt              "
        f"{(sending / 0.8 - sending - end) / receipts * ms:7.3f}"
    )


def main() -> None:
    """Parses the options and runs."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=12)
    parser.add_argument("--read-after", type=float, default=0.5)
    parser.add_argument("--paced", type=float, default=8.0, help="messages/s of latency rounds")
    parser.add_argument(
        "--sizes", default=",".join(map(str, SIZES)), help="conversation sizes, comma-separated"
    )
    parser.add_argument(
        "--client",
        choices=("raw", "socketio"),
        default="raw",
        help="the members' client: bench.raw_socket.ChatSocket, or python-socketio's",
    )
    parser.add_argument(
        "--reconnect-every",
        type=float,
        default=1.0,
        help="seconds between one member dropping off and the next (0: nobody does)",
    )
    parser.add_argument("--offline", type=float, default=1.0, help="seconds a member stays offline")
    parser.add_argument(
        "--membership-every",
        type=float,
        default=2.0,
        help="seconds between removals of a member who does not send, in each group that"
        " has one (added back half a period later; 0: membership stays)",
    )
    args = parser.parse_args()
    sizes = tuple(int(size) for size in args.sizes.split(","))
    asyncio.run(
        run(
            args.seconds,
            args.rounds,
            args.concurrency,
            args.read_after,
            args.paced,
            sizes,
            args.client,
            args.reconnect_every,
            args.offline,
            args.membership_every,
        )
    )


if __name__ == "__main__":
    main()
