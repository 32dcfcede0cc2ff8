"""Cost of encryption on the send path: the payload codec on vs off, same run.

    python -m bench.codec_cost [--sends 200] [--seconds 6] [--rounds 3] [--concurrency 16]

Two stacks run side by side (each: PostgreSQL database, dev server, worker,
gateway): one with CODEC_KEYS set, one without (no payload codec). Latency
(``message:send`` -> another client's ``message:new``) and throughput are
measured in alternating rounds, so a noisy moment hits both alike. At-rest
encryption (AES-256-GCM of each body) runs on both stacks; its own cost per
message is measured apart and printed beside the latency.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass, field

import socketio

from bench.harness import Receiver, Stack, chat_room, percentile, stack
from missive.crypto import MessageCipher


@dataclass
class Side:
    """One stack and its connected clients."""

    name: str
    stack: Stack
    conversation: str
    senders: list[socketio.AsyncClient]
    receiver: Receiver
    latencies: list[float] = field(default_factory=list)
    rates: list[float] = field(default_factory=list)
    counter: int = 0

    async def send(self, client: socketio.AsyncClient, cmid: str) -> None:
        body = f"hello {cmid}: call +1 555 0100 or ana@example.com"
        ack = await client.call(
            "message:send",
            {"conversation_id": self.conversation, "client_message_id": cmid, "body": body},
            timeout=30,
        )
        if not ack.get("ok"):
            raise SystemExit(f"{self.name}: send refused: {ack}")

    async def latency_round(self, n: int, tag: str) -> None:
        for i in range(n):
            cmid = f"{tag}-{i}"
            waiter = asyncio.get_running_loop().create_future()
            self.receiver.waiters[cmid] = waiter
            started = time.perf_counter()
            ack = asyncio.create_task(self.send(self.senders[0], cmid))
            arrived = await asyncio.wait_for(waiter, 30)
            self.latencies.append(arrived - started)
            await ack

    async def throughput_round(self, seconds: float, concurrency: int, tag: str) -> None:
        deadline = time.perf_counter() + seconds

        async def loop(worker_no: int) -> None:
            client = self.senders[worker_no % len(self.senders)]
            while time.perf_counter() < deadline:
                self.counter += 1
                await self.send(client, f"{tag}-{worker_no}-{self.counter}")

        started = time.perf_counter()
        await asyncio.gather(*(loop(w) for w in range(concurrency)))
        elapsed = time.perf_counter() - started
        await asyncio.sleep(1.0)
        end = started + elapsed
        arrived = sum(1 for k, t in self.receiver.arrived.items() if k.startswith(tag) and t <= end)
        self.rates.append(arrived / elapsed)


async def _side(name: str, s: Stack, exit_stack: AsyncExitStack) -> Side:
    room = await chat_room(s, exit_stack)
    side = Side(name, s, room.conversation, room.clients, room.receiver)
    for i in range(20):  # warm up: connections, prepared statements, sticky queues
        await side.send(room.clients[0], f"warm-{i}")
    return side


def at_rest_cost_us(n: int = 5000) -> float:
    """Microseconds to encrypt and decrypt one body at rest (what every send pays)."""
    cipher = MessageCipher({1: os.urandom(32)})
    wrapped = cipher.new_data_key("c", 1)
    key = cipher.data_key("c", 1, wrapped)
    body = b"hello: call +1 555 0100 or ana@example.com" * 4
    started = time.perf_counter()
    for i in range(n):
        sealed = cipher.encrypt_body(key, conversation_id="c", message_id=str(i), body=body)
        cipher.decrypt_body(key, conversation_id="c", message_id=str(i), ciphertext=sealed)
    return (time.perf_counter() - started) / n * 1e6


async def run(sends: int, seconds: float, concurrency: int, rounds: int) -> None:
    """Measures both sides in alternating rounds and prints the table and ratios."""
    async with (
        stack(codec=True) as encrypted,
        stack(codec=False) as plain,
        AsyncExitStack() as exit_stack,
    ):
        on = await _side("codec", encrypted, exit_stack)
        off = await _side("no codec", plain, exit_stack)
        per_round = max(1, sends // rounds)
        for r in range(rounds):
            first, second = (on, off) if r % 2 == 0 else (off, on)
            await first.latency_round(per_round, f"lat{r}")
            await second.latency_round(per_round, f"lat{r}")
            await first.throughput_round(seconds, concurrency, f"tp{r}")
            await second.throughput_round(seconds, concurrency, f"tp{r}")

    ms = 1000.0
    print(f"send path, {len(on.latencies)} sends per side; {rounds} alternating rounds")
    print("                                 codec   no codec   ratio (goal <= 1.10)")
    for label, q in (("latency p50 (ms)", 50), ("latency p99 (ms)", 99)):
        a = percentile(on.latencies, q) * ms
        b = percentile(off.latencies, q) * ms
        print(f"  {label:<28}{a:7.1f}   {b:7.1f}     {a / b:5.2f}")
    a, b = statistics.median(on.rates), statistics.median(off.rates)
    print(f"  {'throughput (msg/s)':<28}{a:7.1f}   {b:7.1f}     {b / a:5.2f} (no codec / codec)")
    print(
        f"  at-rest AES-256-GCM, encrypt + decrypt one body: {at_rest_cost_us():.1f} us "
        "(paid on both sides)"
    )


def main() -> None:
    """Parses the options and runs."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sends", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    asyncio.run(run(args.sends, args.seconds, args.concurrency, args.rounds))


if __name__ == "__main__":
    main()
