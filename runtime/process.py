"""The entry point shared by long-running processes: settings, logging, one-line errors."""

from __future__ import annotations

import asyncio
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
