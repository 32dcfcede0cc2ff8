"""Flood: one user sends as fast as the socket allows while another sends at 5/s.

    python -m bench.flood [--flood 1000] [--steady-seconds 10] [--rate 5]

The steady user is a python-socketio client, and a third member reads and acks
(delivered on arrival, read 0.5 s later). The flooder is a script on another
machine: its own process (so its CPU is not the measured clients'), writing
Socket.IO frames back to back on a raw WebSocket (bench.raw_socket). First the
steady user alone (unloaded), then the same with the flood. Printed: the flooder's
acks by type with their latency (goal: RateLimited within 50 ms) and when the
stages of the flood were answered, the steady user's send -> message:new p50/p99
unloaded and loaded (goal: loaded p99 within 2x) with its worst sends, and the
check that every ok ack is a stored row and no error ack (other than Timeout) is.
Last, with nothing else running, the flooder sends as many bad receipts: how fast
the gateway answers a flood it refuses (from the packets' headers past the socket's
pace), against the time reading them at that pace alone would take.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from collections import Counter, defaultdict
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import socketio
from sqlalchemy import text

from bench.chat_mix import _cpu_seconds
from bench.harness import Stack, percentile, stack
from bench.raw_socket import raw_socket
from missive.models import ConversationKind
from missive.services.directory import NewUser
from missive.tokens import issue_token
from runtime.wiring import open_core


async def _client(s: Stack, user: str, exit_stack: AsyncExitStack) -> socketio.AsyncClient:
    client = socketio.AsyncClient(reconnection=False)
    token = issue_token(s.settings.gateway_secret, user, ttl_seconds=3600)
    await client.connect(s.gateway_url, auth={"token": token}, transports=["websocket"])
    exit_stack.push_async_callback(client.disconnect)
    return client


async def _flooder(url: str, token: str, conv: str) -> None:
    """The flooder's process: one raw socket; each stdin line ``send N`` or
    ``receipts N`` floods N frames back to back and prints one JSON line: per frame
    its answer, its latency and when it was answered after the flood's start."""
    async with raw_socket(url, token) as client:
        print("ready", flush=True)
        next_id = 0
        while line := (await asyncio.to_thread(sys.stdin.readline)).split():
            what, n = line[0], int(line[1])
            ids = range(next_id, next_id + n)
            next_id += n
            if what == "send":
                frames = [
                    client.event(
                        i,
                        "message:send",
                        {"conversation_id": conv, "client_message_id": f"flood-{i}", "body": "f"},
                    )
                    for i in ids
                ]
            else:  # bad receipts: a seq no conversation has
                bad = {"conversation_id": conv, "up_to_seq": -1}
                frames = [client.event(i, "message:read", bad) for i in ids]
            sent_at: dict[int, float] = {}
            started = time.perf_counter()
            reading = asyncio.create_task(client.read_acks(next_id, within=60))
            await client.write(frames, sent_at=sent_at)
            await reading
            answers = []
            for k, i in enumerate(ids):
                ack = client.acks[i]
                at = client.answered_at[i]
                kind = "ok" if ack["ok"] else ack["error"]["type"]
                answers.append((f"flood-{i}", kind, at - sent_at[k], at - started))
            print(json.dumps(answers), flush=True)


class Flooder:
    """The flooder's process, driven over its stdin and stdout."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self._process = process

    @classmethod
    async def start(cls, url: str, token: str, conv: str) -> Flooder:
        """Starts the process and waits until its socket is connected."""
        process = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "bench.flood", "--flooder", url, token, conv),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=16 * 1024 * 1024,  # a line carries every frame's answer
        )
        flooder = cls(process)
        ready = await flooder._line()
        if ready != "ready":
            raise RuntimeError(f"the flooder did not start: {ready!r}")
        return flooder

    async def flood(self, what: str, n: int) -> list[tuple[str, str, float, float]]:
        """Floods n frames (``send`` or ``receipts``): (cmid, answer, latency, answered at)."""
        assert self._process.stdin is not None
        self._process.stdin.write(f"{what} {n}\n".encode())
        await self._process.stdin.drain()
        rows = json.loads(await self._line())
        return [(str(c), str(kind), float(took), float(at)) for c, kind, took, at in rows]

    async def close(self) -> None:
        """Ends the process (an empty line) and waits for it."""
        assert self._process.stdin is not None
        self._process.stdin.write(b"\n")
        self._process.stdin.close()
        await self._process.wait()

    async def _line(self) -> str:
        assert self._process.stdout is not None
        return (await asyncio.wait_for(self._process.stdout.readline(), 120)).decode().strip()


async def run(flood: int, steady_seconds: float, rate: float) -> None:
    """Runs the unloaded and the loaded phase and prints the figures."""
    async with stack() as s, AsyncExitStack() as exit_stack:
        core = await open_core(s.settings, exit_stack, pool_size=2)
        flooder, steady, reader = [
            await core.directory.create_user(NewUser(handle=name))
            for name in ("flooder", "steady", "reader")
        ]
        conv = await core.directory.create_conversation(
            kind=ConversationKind.GROUP, members=[flooder, steady, reader]
        )
        s_client = await _client(s, steady, exit_stack)
        r_client = await _client(s, reader, exit_stack)
        arrivals: dict[str, float] = {}

        async def read_later(data: dict[str, Any]) -> None:
            where = {"conversation_id": conv, "up_to_seq": data["seq"]}
            await r_client.call("message:delivered", where, timeout=30)
            await asyncio.sleep(0.5)
            await r_client.call("message:read", where, timeout=30)

        receipts: set[asyncio.Task[None]] = set()

        def on_new(data: dict[str, Any]) -> None:
            arrivals.setdefault(str(data["client_message_id"]), time.perf_counter())
            task = asyncio.create_task(read_later(data))
            receipts.add(task)
            task.add_done_callback(receipts.discard)

        r_client.on("message:new", on_new)
        stored_acks: dict[str, str] = {}
        acked: dict[str, float] = {}

        async def steady_phase(tag: str) -> list[float]:
            started: dict[str, float] = {}
            deadline = time.perf_counter() + steady_seconds
            i = 0
            while time.perf_counter() < deadline:
                cmid = f"{tag}-{i}"
                i += 1
                started[cmid] = time.perf_counter()
                ack = await s_client.call(
                    "message:send",
                    {"conversation_id": conv, "client_message_id": cmid, "body": "steady"},
                    timeout=30,
                )
                stored_acks[cmid] = "ok" if ack["ok"] else ack["error"]["type"]
                acked[cmid] = time.perf_counter() - started[cmid]
                await asyncio.sleep(max(0.0, started[cmid] + 1 / rate - time.perf_counter()))
            await asyncio.sleep(1.0)
            if tag == "loaded":
                worst = sorted(
                    (arrivals[c] - started[c], acked[c], started[c] - flood_started)
                    for c in started
                    if c in arrivals
                )[-3:]
                print(
                    "  worst loaded sends (message:new ms, ack ms, sent at ms after the"
                    " flood's start):",
                    [tuple(round(v * 1000) for v in row) for row in worst],
                )
            return [arrivals[c] - started[c] for c in started if c in arrivals]

        for i in range(20):  # warm up
            await s_client.call(
                "message:send",
                {"conversation_id": conv, "client_message_id": f"warm-{i}", "body": "w"},
                timeout=30,
            )
        await asyncio.sleep(2.0)
        unloaded = await steady_phase("unloaded")

        flood_acks: dict[str, tuple[str, float]] = {}
        flood_at: dict[str, float] = {}
        token = issue_token(s.settings.gateway_secret, flooder, ttl_seconds=3600)
        flooding = await Flooder.start(s.gateway_url, token, conv)
        exit_stack.push_async_callback(flooding.close)

        async def flood_phase() -> None:
            for cmid, kind, took, at in await flooding.flood("send", flood):
                flood_acks[cmid] = (kind, took)
                flood_at[cmid] = at

        before = _cpu_seconds()
        if os.environ.get("FLOOD_MARKER"):  # lets a profiler attach as the flood starts
            await asyncio.to_thread(Path(os.environ["FLOOD_MARKER"]).write_text, "started")
        flood_started = time.perf_counter()
        flood_task = asyncio.create_task(flood_phase())
        loaded_task = asyncio.create_task(steady_phase("loaded"))
        await flood_task
        flood_took = time.perf_counter() - flood_started
        flood_cpu = {k: v - before.get(k, 0.0) for k, v in _cpu_seconds().items()}
        loaded = await loaded_task
        if receipts:
            await asyncio.wait(receipts, timeout=30)

        await asyncio.sleep(3.0)  # the socket's pace and the user's bucket refill
        if os.environ.get("FLOOD_MARKER"):
            marker = Path(os.environ["FLOOD_MARKER"] + ".refusals")
            await asyncio.to_thread(marker.write_text, "started")
            await asyncio.sleep(float(os.environ.get("FLOOD_MARKER_WAIT", "1.0")))
        started = time.perf_counter()
        bad = await flooding.flood("receipts", flood)
        refusals = (
            time.perf_counter() - started,
            Counter(kind for _, kind, _, _ in bad),
            [took for _, _, took, _ in bad],
        )

        async with core.engine.connect() as conn:
            stored = set(
                (
                    await conn.execute(
                        text("SELECT client_message_id FROM messages WHERE sender_id = :u"),
                        {"u": flooder},
                    )
                ).scalars()
            )

    kinds = Counter(kind for kind, _ in flood_acks.values())
    by_kind: dict[str, list[float]] = defaultdict(list)
    for kind, took in flood_acks.values():
        by_kind[kind].append(took)
    ms = 1000.0
    print(f"flood: {flood} sends from one socket as fast as it allows, steady user at {rate}/s")
    print("  flooder's acks           count     p50 ms    p99 ms")
    for kind, times in sorted(by_kind.items()):
        print(
            f"    {kind:<20} {kinds[kind]:7d} {statistics.median(times) * ms:9.1f}"
            f" {percentile(times, 99) * ms:9.1f}"
        )
    marks = [i for i in (0, 49, 99, 199, 299, 499, 999) if i < flood]
    print(
        "  answered after (ms, from the flood's start), by send: "
        + ", ".join(
            f"#{i + 1} {flood_acks[f'flood-{i}'][0]} {flood_at[f'flood-{i}'] * ms:.0f}"
            for i in marks
        )
    )
    print(
        f"  the flood took {flood_took:.2f} s; CPU seconds meanwhile: "
        + ", ".join(f"{k} {v:.2f}" for k, v in sorted(flood_cpu.items()))
    )
    print("  steady user's send -> message:new (ms)    p50      p99")
    print(
        f"    unloaded ({len(unloaded)} sends)             "
        f"{statistics.median(unloaded) * ms:7.1f}  {percentile(unloaded, 99) * ms:7.1f}"
    )
    print(
        f"    during the flood ({len(loaded)} sends)     "
        f"{statistics.median(loaded) * ms:7.1f}  {percentile(loaded, 99) * ms:7.1f}"
    )
    print(
        f"    p99 ratio (goal <= 2.0)              "
        f"{percentile(loaded, 99) / percentile(unloaded, 99):7.2f}"
    )
    took, answers, latencies = refusals
    paced = max(0.0, flood - s.settings.gateway_socket_events_burst) / (
        s.settings.gateway_socket_events_per_second
    )
    print(
        f"  then {flood} bad receipts from the flooder's socket, nothing else running:"
        f" all answered in {took:.2f} s ({dict(answers)};"
        f" p50 {statistics.median(latencies) * ms:.0f} ms,"
        f" p99 {percentile(latencies, 99) * ms:.0f} ms); read at the pace alone it"
        f" would take {paced:.1f} s (ratio {took / paced if paced else 0:.2f})"
    )
    ok = {c for c, (kind, _) in flood_acks.items() if kind == "ok"}
    refused = {c for c, (kind, _) in flood_acks.items() if kind not in ("ok", "Timeout")}
    print(
        f"  truth: {len(ok)} ok acks, {len(stored)} stored;"
        f" ok but not stored: {len(ok - stored)}; refused but stored: {len(refused & stored)}"
        f" (goal 0 and 0); InternalError acks: {kinds['InternalError']} (goal 0);"
        f" steady user's acks: {dict(Counter(stored_acks.values()))}"
    )


def main() -> None:
    """Parses the options and runs."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flood", type=int, default=1000)
    parser.add_argument("--steady-seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=5.0)
    parser.add_argument("--flooder", nargs=3, metavar=("URL", "TOKEN", "CONV"), help="(internal)")
    args = parser.parse_args()
    if args.flooder:
        asyncio.run(_flooder(*args.flooder))
        return
    asyncio.run(run(args.flood, args.steady_seconds, args.rate))


if __name__ == "__main__":
    main()
