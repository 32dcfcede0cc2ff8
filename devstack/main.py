"""dev.py's main loop: start the stack, run the demo if asked, stop in reverse order."""

from __future__ import annotations

import asyncio
import signal
import sys
from contextlib import AsyncExitStack
from typing import Any

from devstack.banner import banner
from devstack.children import Child
from devstack.console import DevError, Stopped, say
from devstack.demo import run_demo
from devstack.options import Options, parse_args
from devstack.stack import start_stack
from missive.errors import MessagingError


async def supervise(children: list[Child], stop: asyncio.Event, demo: asyncio.Task | None) -> None:
    """Waits for a stop request; raises when a child exits or the demo fails first."""
    exits = {asyncio.ensure_future(c.process.wait()): c for c in children}
    stopped = asyncio.ensure_future(stop.wait())
    pending: set[asyncio.Future[Any]] = {*exits, stopped, *([demo] if demo else [])}
    try:
        while stopped not in (done := await wait_first(pending)):
            pending -= done
            for future in done:
                if future in exits:
                    raise exits[future].early_exit()
                future.result()  # the demo: re-raises its error
    finally:
        for future in pending:
            future.cancel()


async def wait_first(futures: set[asyncio.Future[Any]]) -> set[asyncio.Future[Any]]:
    """The futures that are done once at least one is."""
    done, _ = await asyncio.wait(futures, return_when=asyncio.FIRST_COMPLETED)
    return done


async def run(opts: Options) -> None:
    """Starts everything, runs the demo if asked, and stops everything in reverse order."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with AsyncExitStack() as stack:
        running = await start_stack(opts, stack, stop)
        banner(running)
        demo = asyncio.create_task(run_demo(running, stack, stop)) if opts.demo else None
        await supervise(running.children, stop, demo)
        say(f"stopping {', '.join(running.stop_order)}")


def main(argv: list[str] | None = None) -> int:
    """Entry point: 0 after a requested stop, 1 with one line when something failed."""
    opts = parse_args(argv)
    try:
        asyncio.run(run(opts))
    except Stopped:
        pass
    except (DevError, MessagingError) as err:
        print(f"dev: {err}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        return 130
    say("stopped")
    return 0
