"""What long-running processes share: the entry point (settings, logging, one-line
errors) and giving freed heap memory back to the operating system."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
import logging
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from pydantic import ValidationError

from missive.config import Settings
from missive.errors import MessagingError


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
    try:
        asyncio.run(main(settings))
    except MessagingError as err:
        print(f"{name}: {err}", file=sys.stderr)
        return 1
    return 0


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
