"""The processes dev.py starts, waits for and stops."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Awaitable, Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from devstack.console import DevError, Stopped, say
from devstack.options import ROOT

READY_TIMEOUT = 60.0
"""Seconds a server may take to answer before dev.py gives up on it."""


@dataclass
class Child:
    """A process dev.py started and will stop."""

    name: str
    """Shown in messages: temporal, worker, gateway."""
    process: asyncio.subprocess.Process
    """The running process (in its own session, so Ctrl-C reaches only dev.py)."""
    log: Path | None = None
    """Where its output goes, when not to this terminal."""

    def early_exit(self) -> DevError:
        """The one-line error for a child that ended on its own."""
        where = f" (see {self.log})" if self.log else ""
        return DevError(f"{self.name} exited early with code {self.process.returncode}{where}")

    async def stop(self, grace: float) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds."""
        if self.process.returncode is None:
            with suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.process.wait(), grace)
        except TimeoutError:
            say(f"{self.name} did not stop within {grace:.0f}s; killing it")
            with suppress(ProcessLookupError):
                self.process.kill()
            await self.process.wait()


async def start_child(
    name: str, argv: list[str], env: Mapping[str, str], *, log: Path | None = None
) -> Child:
    """Starts a child in its own session; its output goes to log or to this terminal."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644) if log else None
    try:
        process = await asyncio.create_subprocess_exec(
            *argv, cwd=ROOT, env=dict(env), stdout=fd, stderr=fd, start_new_session=True
        )
    finally:
        if fd is not None:
            os.close(fd)
    return Child(name, process, log)


async def wait_ready(
    what: str,
    ready: Callable[[], Awaitable[bool]],
    stop: asyncio.Event,
    *,
    child: Child | None = None,
    within: float = READY_TIMEOUT,
) -> None:
    """Polls ``ready`` until true; raises on stop, on the child's exit or on timeout."""
    deadline = asyncio.get_running_loop().time() + within
    while not await ready():
        if stop.is_set():
            raise Stopped
        if child and child.process.returncode is not None:
            raise child.early_exit()
        if asyncio.get_running_loop().time() > deadline:
            raise DevError(f"{what} was not ready after {within:.0f}s")
        await asyncio.sleep(0.3)


def checkpoint(stop: asyncio.Event) -> None:
    """Raises Stopped when a stop was requested during a blocking step."""
    if stop.is_set():
        raise Stopped
