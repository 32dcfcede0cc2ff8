"""What long-running processes share: the entry point (settings, logging, one-line
errors, the interpreter's thread switching and garbage collector) and giving freed
heap memory back to the operating system."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
import gc
import logging
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from pydantic import ValidationError

from missive.config import Settings
from missive.errors import MessagingError

SWITCH_INTERVAL_SECONDS = 0.0005
"""How long a busy thread keeps the GIL from a thread that asks for it: 0.5 ms
instead of Python's 5 ms. The event loop shares the interpreter with the Temporal
SDK's threads (its Rust core hands each RPC answer back through a thread that
needs the GIL, and workflow activations run in a thread pool). While the loop was
busy, say reading a client's flood, each of those handoffs could wait out the full
5 ms, and a send makes a dozen of them. In bench/flood.py (medians of 8 and 11
runs) the send that lands with the flood took 88 ms instead of 104, and the
flood's refusals were answered 36 ms after their write (p50) instead of 47."""


def run_process(name: str, main: Callable[[Settings], Coroutine[Any, Any, None]]) -> int:
    """Reads Settings, configures logging and runs ``main``; returns the exit code.

    An invalid setting or an unreachable dependency is one line on stderr and
    exit code 1, never a traceback wall.
    """
    try:
        settings = Settings()
    except ValidationError as err:
        print(f"{name}: invalid settings: {str(err).splitlines()[0]}", file=sys.stderr)
        return 1
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    tune_interpreter()
    try:
        asyncio.run(main(settings))
    except MessagingError as err:
        print(f"{name}: {err}", file=sys.stderr)
        return 1
    return 0


def tune_interpreter() -> None:
    """Shorter GIL handoffs (SWITCH_INTERVAL_SECONDS), and the garbage collector told
    that what the imports made stays: ``gc.freeze`` moves every object alive now
    (modules, classes, SQLAlchemy's and Temporal's tables) out of the collector's
    sight, so a full collection walks only what the process made since. Without it,
    collections were a third of the gateway's CPU while it refused a flood of bad
    receipts (perf), a twentieth in the chat mix."""
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
    gc.collect()
    gc.freeze()


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None where the C library has none (macOS, musl)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    trim: Callable[[int], int] | None = getattr(ctypes.CDLL(name), "malloc_trim", None)
    return trim


def release_freed_memory() -> None:
    """Returns the heap memory a batch chunk freed to the operating system.

    A chunk allocates and frees a few megabytes per transaction (rows, arrays,
    ciphertexts, asyncpg buffers). glibc keeps freed heap memory for reuse and,
    after the first large free, raises its mmap threshold so later large
    buffers come from the heap as well: without this the worker's RSS crept up
    with the batch (some 30 MB over 1,000,000 items) while no object was kept.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
