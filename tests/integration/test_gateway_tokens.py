"""Tokens on open sockets: expiry, refresh, revocation (logout everywhere), nothing in the logs."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import aiohttp
import pytest
import socketio
from sqlalchemy import text
from temporalio.testing import WorkflowEnvironment

import gateway.sessions as gateway_sessions
from missive.config import Settings
from missive.constants import (
    EVENT_NOTIFICATION_LIST,
    EVENT_SESSION_CLOSED,
    EVENT_TOKEN_REFRESH,
)
from missive.errors import UserNotFound
from missive.services.directory import NewUser
from missive.tokens import issue_token
from runtime.wiring import Core
from starter import revoke_tokens
from tests.conftest import ROOT, process_env
from tests.integration import test_gateway as gateway_tests
from tests.integration.test_gateway import (
    QUIET,
    WAIT,
    Peer,
    RunningGateway,
    gateway_settings,
    serve_gateway,
)

pytestmark = pytest.mark.integration

gateway = gateway_tests.gateway
"""The gateway fixture of test_gateway (uvicorn, the test's database, the dev server)."""
connect = gateway_tests.connect
"""Connects a Socket.IO client as a user; closed at teardown."""


class Watched:
    """A Socket.IO client that records ``session:closed`` and its disconnect reason."""

    def __init__(self) -> None:
        self.client = socketio.AsyncClient(reconnection=False)
        self.closed: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.gone = asyncio.Event()
        self.client.on(EVENT_SESSION_CLOSED, self.closed.put_nowait)
        self.client.on("disconnect", lambda *_: self.gone.set())

    async def connect(self, url: str, token: str) -> Watched:
        await self.client.connect(
            url, auth={"token": token}, transports=["websocket"], wait_timeout=WAIT
        )
        return self

    async def call(self, event: str, data: object) -> dict[str, Any]:
        return dict(await self.client.call(event, data, timeout=WAIT))

    async def closed_because(self, reason: str) -> None:
        """Waits for ``session:closed`` with ``reason`` and the disconnect after it."""
        closed = await asyncio.wait_for(self.closed.get(), WAIT)
        assert closed == {"reason": reason}, closed
        await asyncio.wait_for(self.gone.wait(), WAIT)
        assert not self.client.connected


async def _user(core: Core) -> str:
    return await core.directory.create_user(NewUser(handle=f"u-{uuid.uuid4().hex[:8]}"))


def _token(gateway: RunningGateway, user_id: str, ttl: int = 60) -> str:
    return issue_token(gateway.settings.gateway_secret, user_id, ttl_seconds=ttl)


async def _refused(url: str, token: str, reason: str) -> None:
    client = socketio.AsyncClient(reconnection=False)
    refusals: list[Any] = []
    client.on("connect_error", refusals.append)
    with pytest.raises(socketio.exceptions.ConnectionError):
        await client.connect(
            url, auth={"token": token}, transports=["websocket"], wait_timeout=WAIT
        )
    assert refusals and reason in refusals[-1]["message"], refusals


async def _next_second() -> None:
    """Tokens carry whole seconds: one issued in a revocation's second is refused too."""
    await asyncio.sleep(1.05 - time.time() % 1)


async def test_an_expired_token_closes_its_socket_and_refuses_its_events(
    gateway: RunningGateway, core: Core
) -> None:
    ana = await _user(core)
    short = await Watched().connect(gateway.url, _token(gateway, ana, ttl=2))
    assert (await short.call(EVENT_NOTIFICATION_LIST, {}))["ok"] is True
    await short.closed_because("token expired")

    # An event read after the expiry, before the socket is closed: TokenExpired.
    open_one = await Watched().connect(gateway.url, _token(gateway, ana, ttl=60))
    server = gateway.app.gateway.sio
    sid = open_one.client.get_sid()
    session = await server.get_session(sid)
    await server.save_session(sid, {**session, "expires_at": int(time.time()) - 1})
    refused = await open_one.call(EVENT_NOTIFICATION_LIST, {})
    assert refused["ok"] is False and refused["error"]["type"] == "TokenExpired", refused
    assert EVENT_TOKEN_REFRESH in refused["error"]["message"]
    # token:refresh still works on it, and the socket carries on.
    fresh = await open_one.call(EVENT_TOKEN_REFRESH, {"token": _token(gateway, ana, ttl=120)})
    assert fresh["ok"] is True, fresh
    assert (await open_one.call(EVENT_NOTIFICATION_LIST, {}))["ok"] is True
    await open_one.client.disconnect()


async def test_token_refresh_keeps_a_socket_open_past_its_first_token(
    gateway: RunningGateway, core: Core
) -> None:
    ana, ben = await _user(core), await _user(core)
    socket = await Watched().connect(gateway.url, _token(gateway, ana, ttl=2))
    secret = gateway.settings.gateway_secret
    for payload, match in (
        ({"token": _token(gateway, ben)}, "another user"),
        ({"token": issue_token("another secret", ana, ttl_seconds=60)}, "signature invalid"),
        ({"token": issue_token(secret, ana, ttl_seconds=60, now=time.time() - 120)}, "expired"),
        ({}, "token missing"),
        ("not an object", "must be an object"),
    ):
        ack = await socket.call(EVENT_TOKEN_REFRESH, payload)
        assert ack["ok"] is False and ack["error"]["type"] == "InvalidInput", (payload, ack)
        assert match in ack["error"]["message"], (payload, ack)

    before = time.time()
    ack = await socket.call(EVENT_TOKEN_REFRESH, {"token": _token(gateway, ana, ttl=60)})
    assert ack["ok"] is True, ack
    expires = datetime.fromisoformat(ack["expires_at"])
    assert before + 58 < expires.timestamp() <= time.time() + 60
    await asyncio.sleep(3)  # past the first token's expiry
    assert socket.client.connected and socket.closed.empty()
    assert (await socket.call(EVENT_NOTIFICATION_LIST, {}))["ok"] is True
    await socket.client.disconnect()


async def test_revoking_a_users_tokens_closes_their_sockets_on_every_gateway(
    gateway: RunningGateway,
    core: Core,
    settings: Settings,
    dev_env: WorkflowEnvironment,
) -> None:
    ana, ben = await _user(core), await _user(core)
    async with serve_gateway(gateway_settings(settings, dev_env)) as other:
        old = _token(gateway, ana)
        here = await Watched().connect(gateway.url, old)
        there = await Watched().connect(other.url, old)
        bystander = await Watched().connect(other.url, _token(gateway, ben))

        done = await revoke_tokens(gateway.settings, ana)
        assert done.user_id == ana
        assert abs(done.tokens_valid_after.timestamp() - time.time()) < 5
        await here.closed_because("token revoked")
        await there.closed_because("token revoked")
        assert bystander.client.connected and bystander.closed.empty()
        assert (await bystander.call(EVENT_NOTIFICATION_LIST, {}))["ok"] is True

        await _refused(gateway.url, old, "token revoked")
        await _next_second()
        renewed = await Watched().connect(other.url, _token(gateway, ana))
        assert (await renewed.call(EVENT_NOTIFICATION_LIST, {}))["ok"] is True
        # A revocation read on an event when the push was missed (no NOTIFY here).
        monkey = pytest.MonkeyPatch()
        monkey.setattr(gateway_sessions, "TOKEN_RECHECK_SECONDS", 0.0)
        try:
            async with core.engine.begin() as conn:
                await conn.execute(
                    text(
                        "UPDATE users SET tokens_valid_after = now() + interval '5 seconds'"
                        " WHERE id = :id"
                    ),
                    {"id": ana},
                )
            refused = await renewed.call(EVENT_NOTIFICATION_LIST, {})
            assert refused["ok"] is False and refused["error"]["type"] == "TokenRevoked"
            await renewed.closed_because("token revoked")
        finally:
            monkey.undo()
        await bystander.client.disconnect()

    with pytest.raises(UserNotFound):
        await revoke_tokens(gateway.settings, str(uuid.uuid4()))


def _cli(*args: str, settings: Settings) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "starter", *args],
        cwd=ROOT,
        env=process_env(
            DATABASE_URL=settings.database_url or "", GATEWAY_SECRET=settings.gateway_secret
        ),
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_the_cli_revokes_tokens(gateway: RunningGateway, core: Core) -> None:
    ana = await _user(core)
    socket = await Watched().connect(gateway.url, _token(gateway, ana))
    done = await asyncio.to_thread(_cli, "revoke-tokens", ana, "--json", settings=gateway.settings)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["user_id"] == ana
    await socket.closed_because("token revoked")
    async with core.engine.connect() as conn:
        stored = (
            await conn.execute(
                text("SELECT tokens_valid_after FROM users WHERE id = :id"), {"id": ana}
            )
        ).scalar_one()
    assert stored is not None and abs(stored.timestamp() - time.time()) < 30

    unknown = await asyncio.to_thread(
        _cli, "revoke-tokens", str(uuid.uuid4()), settings=gateway.settings
    )
    assert unknown.returncode == 2 and "UserNotFound" in unknown.stderr, unknown.stderr
    bad = await asyncio.to_thread(_cli, "revoke-tokens", "ana", settings=gateway.settings)
    assert bad.returncode == 2 and "user_id" in bad.stderr, bad.stderr


async def test_no_token_reaches_a_log(
    gateway: RunningGateway, core: Core, caplog: pytest.LogCaptureFixture
) -> None:
    ana = await _user(core)
    token = _token(gateway, ana)
    caplog.set_level(logging.DEBUG)
    # A token in the query string is refused (and redacted from uvicorn's "[accepted]" line).
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(
            f"{gateway.url}/socket.io/?EIO=4&transport=websocket&token={token}"
        ) as ws:
            assert (await ws.receive_str(timeout=WAIT)).startswith("0{")
            await ws.send_str("40")
            refused = await ws.receive_str(timeout=WAIT)
            assert refused.startswith("44"), refused
            assert "token in the query string" in json.loads(refused[2:])["message"]
    # The token in auth, where it belongs: connected, and not logged either.
    socket = await Watched().connect(gateway.url, token)
    assert (await socket.call(EVENT_TOKEN_REFRESH, {"token": _token(gateway, ana)}))["ok"]
    await socket.client.disconnect()
    await asyncio.sleep(QUIET)

    accepted = [r for r in caplog.records if "[accepted]" in r.getMessage()]
    assert accepted, "uvicorn's websocket line was not captured: the test would prove nothing"
    assert any("token=***" in r.getMessage() for r in accepted), accepted[0].getMessage()
    leaked = [r.getMessage() for r in caplog.records if token in r.getMessage()]
    signature = token.rsplit(".", 1)[1]
    leaked += [r.getMessage() for r in caplog.records if signature in r.getMessage()]
    assert not leaked, leaked


async def test_connect_refuses_a_revoked_token_of_the_older_form(
    gateway: RunningGateway, core: Core, connect: Callable[[str], Awaitable[Peer]]
) -> None:
    ana = await _user(core)
    payload = f"{ana}.{int(time.time()) + 60}"
    sig = hmac.new(gateway.settings.gateway_secret.encode(), payload.encode(), hashlib.sha256)
    legacy = f"{payload}.{base64.urlsafe_b64encode(sig.digest()).rstrip(b'=').decode()}"
    accepted = await Watched().connect(gateway.url, legacy)  # never revoked: still accepted
    await revoke_tokens(gateway.settings, ana)
    await accepted.closed_because("token revoked")
    await _refused(gateway.url, legacy, "token revoked")
    await _next_second()  # a token issued after the revocation's second works
    peer = await connect(ana)
    assert (await peer.call(EVENT_NOTIFICATION_LIST, {}))["ok"] is True
