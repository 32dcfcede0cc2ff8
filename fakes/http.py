"""What the HTTP fakes share: the failures they can be told to answer, and serving them."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

from aiohttp import web


class Failure(Enum):
    """An error a sink can be told to answer, in the real API's JSON shape."""

    INVALID_RECIPIENT = "invalid_recipient"
    """FCM: 404 UNREGISTERED; Twilio: 400 code 21211."""

    INVALID_ARGUMENT = "invalid_argument"
    """FCM: 400 INVALID_ARGUMENT on message.token; Twilio: 400 code 21614."""

    SERVER_ERROR = "server_error"
    """500 (FCM INTERNAL; Twilio code 20500)."""

    RATE_LIMITED = "rate_limited"
    """429 with Retry-After (FCM QUOTA_EXCEEDED; Twilio code 20429)."""


@dataclass
class Rule:
    """A failure answered for one token or number."""

    failure: Failure
    """What to answer."""

    retry_after: int = 1
    """Retry-After seconds on a 429."""

    times: int | None = None
    """Answer it this many more times, then succeed; None: always."""


class Sink:
    """A fake provider that records what it accepts and answers failures it is told to."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        """Every accepted message, in arrival order."""
        self.rules: dict[str, Rule] = {}

    def fail(
        self, key: str, failure: Failure, *, retry_after: int = 1, times: int | None = None
    ) -> None:
        """Answers ``failure`` to messages for ``key`` (a token or a number)."""
        self.rules[key] = Rule(failure, retry_after, times)

    def clear(self) -> None:
        """Forgets received messages and rules."""
        self.received.clear()
        self.rules.clear()

    def _rule(self, key: str) -> Rule | None:
        rule = self.rules.get(key)
        if rule is None:
            return None
        if rule.times is not None:
            rule.times -= 1
            if rule.times <= 0:
                del self.rules[key]
        return rule

    async def _list(self, request: web.Request) -> web.Response:
        return web.json_response({"messages": self.received})


async def serve(
    app: web.Application, *, host: str = "127.0.0.1", port: int = 0
) -> tuple[web.AppRunner, str]:
    """Starts ``app``; returns its runner (``await runner.cleanup()`` stops it) and base URL."""
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound_port = runner.addresses[0][1]
    return runner, f"http://{host}:{bound_port}"
