"""What a local activity costs the process that runs it, whatever the activity does.

    python -m bench.local_activity_cost [--seconds 6] [--concurrency 16] [--rounds 2]

Eagerly started workflows with 0, 1, 2 and 3 no-op local activities, at the same
concurrency, on one dev server with the worker in this process: workflows per second
and this process's CPU per workflow. The send path runs its local activities in the
gateway process, so this is what each one costs the gateway (see the README's
benchmarks: why the broadcast plans the notifications in its own local activity).
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import time
import uuid

from temporalio.testing import WorkflowEnvironment
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from bench.baseline_workflows import LocalActivitiesWorkflow, noop
from bench.harness import _binary


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def run(seconds: float, concurrency: int, rounds: int) -> None:
    """Measures each count in turn, ``rounds`` times, and prints them."""
    env = await WorkflowEnvironment.start_local(dev_server_existing_path=_binary("temporal"))
    async with env:
        queue = f"bench-{uuid.uuid4().hex[:8]}"
        async with Worker(
            env.client,
            task_queue=queue,
            workflows=[LocalActivitiesWorkflow],
            activities=[noop],
            workflow_runner=UnsandboxedWorkflowRunner(),  # as the gateway runs them
            max_concurrent_workflow_tasks=max(concurrency, 5),
        ):
            print("local activities   workflows/s   process CPU per workflow (ms)")
            for _ in range(rounds):
                for count in (0, 1, 2, 3):
                    done = 0
                    deadline = time.perf_counter() + seconds

                    async def loop(count: int = count, deadline: float = deadline) -> None:
                        nonlocal done
                        while time.perf_counter() < deadline:
                            handle = await env.client.start_workflow(
                                LocalActivitiesWorkflow.run,
                                count,
                                id=f"la-{uuid.uuid4()}",
                                task_queue=queue,
                                request_eager_start=True,
                            )
                            await handle.result()
                            done += 1

                    cpu, started = _cpu(), time.perf_counter()
                    await asyncio.gather(*(loop() for _ in range(concurrency)))
                    elapsed, used = time.perf_counter() - started, _cpu() - cpu
                    print(f"{count:16d}   {done / elapsed:11.1f}   {1000 * used / done:10.2f}")


def main() -> None:
    """Parses the options and runs."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    asyncio.run(run(args.seconds, args.concurrency, args.rounds))


if __name__ == "__main__":
    main()
