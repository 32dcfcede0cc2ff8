"""Who can read the gateway's metrics: its own loopback listener, or a bearer token."""

from __future__ import annotations

import asyncio
import urllib.request
from contextlib import AsyncExitStack

import pytest

from missive.metrics import Metrics
from runtime.telemetry import public_metrics, serve_metrics
from tests.conftest import base_settings, free_port

pytestmark = pytest.mark.unit


def _scope(authorization: bytes | None = None) -> dict[str, object]:
    headers = [] if authorization is None else [(b"authorization", authorization)]
    return {"type": "http", "path": "/metrics", "headers": headers}


def test_the_public_port_serves_metrics_only_with_the_token() -> None:
    metrics = Metrics()
    metrics.message_persisted(created=True)
    closed = base_settings()
    assert public_metrics(closed, metrics, _scope())[0] == 404
    assert public_metrics(closed, metrics, _scope(b"Bearer "))[0] == 404

    guarded = base_settings(gateway_metrics_token="m3trics")
    for header in (None, b"Bearer wrong", b"Basic m3trics", b"Bearer"):
        status, body, _ = public_metrics(guarded, metrics, _scope(header))
        assert status == 401 and b"m3trics" not in body
    status, body, content_type = public_metrics(guarded, metrics, _scope(b"Bearer m3trics"))
    assert status == 200 and content_type.startswith(b"text/plain")
    assert b"missive_messages_persisted_total" in body


async def test_the_metrics_listener_is_on_loopback_by_default() -> None:
    metrics = Metrics()
    port = free_port()
    settings = base_settings(gateway_metrics_port=port)
    assert settings.metrics_host == "127.0.0.1"
    async with AsyncExitStack() as stack:
        serve_metrics(settings, metrics, port, stack)
        url = f"http://127.0.0.1:{port}/metrics"
        body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read())
    assert b"missive_messages_persisted_total" in body
