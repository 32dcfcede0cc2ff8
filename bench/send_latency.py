"""Send path: latency and throughput of message:send -> message:new, against Temporal floors.

    python -m bench.send_latency [--sends 300] [--seconds 8] [--rounds 3] [--concurrency 16]

Measured in one run on one dev server:

* floor latency: a bare workflow with one local activity, started with
  ``request_eager_start=True`` by a worker in the starting process, start -> result;
* Missive latency: one client's ``message:send`` to another client's ``message:new``;
* floor throughput: bare no-activity workflows at the same concurrency;
* Missive throughput: messages that reached the receiving client per second.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from contextlib import AsyncExitStack

import socketio
from temporalio.worker import Worker

from bench.baseline_workflows import BareWorkflow, LocalActivityWorkflow, noop
from bench.harness import Stack, chat_room, percentile, stack


async def _floor_latency(s: Stack, n: int) -> list[float]:
    queue = f"bench-{uuid.uuid4().hex[:8]}"
    times = []
    async with Worker(
        s.env.client, task_queue=queue, workflows=[LocalActivityWorkflow], activities=[noop]
    ):
        for i in range(n + 20):
            started = time.perf_counter()
            handle = await s.env.client.start_workflow(
                LocalActivityWorkflow.run,
                i,
                id=f"floor-{uuid.uuid4()}",
                task_queue=queue,
                request_eager_start=True,
            )
            await handle.result()
            if i >= 20:
                times.append(time.perf_counter() - started)
    return times


async def _floor_throughput(s: Stack, seconds: float, concurrency: int) -> float:
    queue = f"bench-{uuid.uuid4().hex[:8]}"
    done = 0
    async with Worker(
        s.env.client,
        task_queue=queue,
        workflows=[BareWorkflow],
        max_concurrent_workflow_tasks=max(concurrency, 5),
    ):
        deadline = time.perf_counter() + seconds

        async def loop() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                handle = await s.env.client.start_workflow(
                    BareWorkflow.run,
                    1,
                    id=f"bare-{uuid.uuid4()}",
                    task_queue=queue,
                    request_eager_start=True,
                )
                await handle.result()
                done += 1

        started = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return done / elapsed


async def run(sends: int, seconds: float, concurrency: int, rounds: int) -> None:
    """Runs both measurements and prints the table and the ratios."""
    async with stack() as s, AsyncExitStack() as exit_stack:
        room = await chat_room(s, exit_stack)
        conv, receiver, clients = room.conversation, room.receiver, room.clients

        async def send(client: socketio.AsyncClient, cmid: str) -> dict[str, object]:
            ack = await client.call(
                "message:send",
                {"conversation_id": conv, "client_message_id": cmid, "body": f"hello {cmid}"},
                timeout=30,
            )
            if not ack.get("ok"):
                raise SystemExit(f"send refused: {ack}")
            return ack

        # Warm up: connections, prepared statements, sticky queues.
        for i in range(20):
            await send(clients[0], f"warm-{i}")

        latencies = []
        for i in range(sends):
            cmid = f"lat-{i}"
            waiter = asyncio.get_running_loop().create_future()
            receiver.waiters[cmid] = waiter
            started = time.perf_counter()
            ack_task = asyncio.create_task(send(clients[0], cmid))
            arrived = await asyncio.wait_for(waiter, 30)
            latencies.append(arrived - started)
            await ack_task

        floor = await _floor_latency(s, sends)

        counter = 0

        async def ours_round() -> float:
            nonlocal counter
            deadline = time.perf_counter() + seconds
            tag = f"tp{counter}-"

            async def loop(worker_no: int) -> None:
                nonlocal counter
                client = clients[worker_no % len(clients)]
                while time.perf_counter() < deadline:
                    counter += 1
                    await send(client, f"{tag}{worker_no}-{counter}")

            started = time.perf_counter()
            await asyncio.gather(*(loop(w) for w in range(concurrency)))
            elapsed = time.perf_counter() - started
            await asyncio.sleep(1.0)  # stragglers still count only if inside the window
            end = started + elapsed
            return sum(1 for k, t in receiver.arrived.items() if k.startswith(tag) and t <= end) / (
                elapsed
            )

        # Alternate the two, so a noisy moment on this machine hits both alike.
        ours_rates, bare_rates = [], []
        for _ in range(rounds):
            bare_rates.append(await _floor_throughput(s, seconds, concurrency))
            ours_rates.append(await ours_round())
        ours, bare = statistics.median(ours_rates), statistics.median(bare_rates)

    ms = 1000.0
    p50, p99 = statistics.median(latencies) * ms, percentile(latencies, 99) * ms
    f50, f99 = statistics.median(floor) * ms, percentile(floor, 99) * ms
    print(f"latency over {sends} sends (ms)      p50      p99")
    print(f"  message:send -> message:new  {p50:7.1f}  {p99:7.1f}")
    print(f"  floor: eager WF + 1 local act {f50:7.1f}  {f99:7.1f}")
    print(f"  ratio p50 (goal <= 2.0)       {p50 / f50:7.2f}")
    print(
        f"throughput (per second): median of {rounds} alternating rounds"
        f" of {seconds:.0f} s, concurrency {concurrency}"
    )
    print(f"  messages end to end          {ours:7.1f}")
    print(f"  bare no-activity workflows   {bare:7.1f}")
    print(f"  ratio (goal >= 0.6)          {ours / bare:7.2f}")


def main() -> None:
    """Parses the options and runs."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sends", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    asyncio.run(run(args.sends, args.seconds, args.concurrency, args.rounds))


if __name__ == "__main__":
    main()
