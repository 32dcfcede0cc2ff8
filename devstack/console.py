"""What dev.py tells its user: its own lines, and one-line errors."""

from __future__ import annotations


class DevError(Exception):
    """A problem the user can act on, told in one line."""


class Stopped(Exception):
    """Ctrl-C or SIGTERM arrived while starting up."""


def say(line: str) -> None:
    """Prints one line of dev.py's own output."""
    print(f"dev: {line}", flush=True)
