"""The local FCM, Twilio and SMTP sinks dev.py starts when no provider is configured."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AsyncExitStack
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from devstack.console import say
from devstack.options import Options
from devstack.ports import require_free
from fakes import FcmSink, MailFolder, Sink, TwilioSink, serve
from missive.config import Settings
from missive.notify.endpoints import (
    DEV_FCM_SINK_URL,
    DEV_SMTP_SINK,
    DEV_TWILIO_SINK_URL,
    fcm_endpoint,
    smtp_server,
    twilio_base_url,
)

KEEP_RECEIVED = 1_000
"""Pushes / SMS a dev sink keeps in memory (GET /sink/messages lists them)."""


def _say_received(sink: Sink, describe: Callable[[dict[str, Any]], str]) -> Any:
    """aiohttp middleware: one line per message the sink accepted."""
    from aiohttp import web

    @web.middleware
    async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
        before = len(sink.received)
        response = await handler(request)
        if len(sink.received) > before:
            say(describe(sink.received[-1]))
            del sink.received[:-KEEP_RECEIVED]
        return response

    return middleware


def _push_line(got: dict[str, Any]) -> str:
    message = got.get("message", {})
    token = str(message.get("token", ""))[:12]
    shown = message.get("notification", {}).get("title") or f"data {message.get('data', {})}"
    return f"push sink <- {token}...: {shown}"


def _sms_line(got: dict[str, Any]) -> str:
    return f"sms sink <- {got.get('to')}: {got.get('body')}"


def _say_saved(envelope: Any, mail: EmailMessage, path: Path) -> None:
    say(f"mail sink <- {', '.join(envelope.rcpt_tos)}: {mail['Subject']!r} ({path})")


async def start_notify_sinks(opts: Options, base: Settings, stack: AsyncExitStack) -> list[str]:
    """The local FCM, Twilio and SMTP sinks, each unless its provider is configured.

    A port already taken stops dev.py with one line: the worker would otherwise
    send to whatever listens there (another dev.py's sinks). Returns the banner
    lines of the sinks started.

    Raises:
        DevError: a sink's port is in use.
    """
    if not base.notify_enabled:
        return []
    lines: list[str] = []
    for name, url, configured, sink, describe in (
        ("FCM sink", DEV_FCM_SINK_URL, fcm_endpoint(base), FcmSink(), _push_line),
        ("Twilio sink", DEV_TWILIO_SINK_URL, twilio_base_url(base), TwilioSink(), _sms_line),
    ):
        if configured != url:
            continue
        port = int(url.rsplit(":", 1)[1])
        setting = "FCM_ENDPOINT" if name == "FCM sink" else "TWILIO_BASE_URL"
        require_free("127.0.0.1", port, name, f"stop what listens there, or set {setting}")
        app = sink.app()
        app.middlewares.append(_say_received(sink, describe))
        runner, _ = await serve(app, host="127.0.0.1", port=port)
        stack.push_async_callback(runner.cleanup)
        lines.append(f"  {name:<16} {url}/sink/messages (what it received)")
    host, port = DEV_SMTP_SINK
    if smtp_server(base) == DEV_SMTP_SINK:
        require_free(host, port, "SMTP sink", "stop what listens there, or set SMTP_HOST")
        try:
            from aiosmtpd.smtp import SMTP
        except ImportError:
            say("aiosmtpd is not installed: no SMTP sink (pip install aiosmtpd, or set SMTP_HOST)")
            return lines
        folder = opts.data_dir / "mail"
        handler = MailFolder(folder, _say_saved)
        server = await asyncio.get_running_loop().create_server(
            lambda: SMTP(handler, hostname="missive-dev-sink"), host, port
        )
        stack.push_async_callback(server.wait_closed)
        stack.callback(server.close)
        lines.append(f"  SMTP sink        {host}:{port} (each email saved in {folder})")
    return lines
