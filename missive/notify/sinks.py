"""Local FCM v1 and Twilio Messages servers that record what they receive, for dev and tests."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
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


class _Sink:
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


class FcmSink(_Sink):
    """Speaks FCM HTTP v1 ``messages:send`` and the OAuth token endpoint."""

    def app(self) -> web.Application:
        """The aiohttp application."""
        app = web.Application()
        app.router.add_post("/token", self._token)
        app.router.add_post("/v1/projects/{project}/messages:send", self._send)
        app.router.add_get("/sink/messages", self._list)
        return app

    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        token = "ya29.sink-" + secrets.token_hex(8)
        return web.json_response(
            {"access_token": token, "expires_in": 3600, "token_type": "Bearer"}
        )

    async def _send(self, request: web.Request) -> web.Response:
        project = request.match_info["project"]
        if not request.headers.get("Authorization", "").startswith("Bearer "):
            return _fcm_error(401, "UNAUTHENTICATED", "Request is missing required authentication.")
        body = await request.json()
        message = body.get("message", {})
        token = str(message.get("token", ""))
        rule = self._rule(token)
        if rule is not None:
            return _fcm_failure(rule)
        name = f"projects/{project}/messages/{secrets.token_hex(8)}"
        auth = request.headers["Authorization"]
        self.received.append({"name": name, "project": project, "authorization": auth, **body})
        return web.json_response({"name": name})


def _fcm_error(
    status: int,
    code: str,
    text: str,
    details: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    payload = {"error": {"code": status, "message": text, "status": code, "details": details or []}}
    return web.json_response(payload, status=status, headers=headers)


def _fcm_failure(rule: Rule) -> web.Response:
    fcm = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
    if rule.failure is Failure.INVALID_RECIPIENT:
        return _fcm_error(
            404,
            "NOT_FOUND",
            "Requested entity was not found.",
            [{"@type": fcm, "errorCode": "UNREGISTERED"}],
        )
    if rule.failure is Failure.INVALID_ARGUMENT:
        return _fcm_error(
            400,
            "INVALID_ARGUMENT",
            "The registration token is not a valid FCM registration token",
            [
                {"@type": fcm, "errorCode": "INVALID_ARGUMENT"},
                {
                    "@type": "type.googleapis.com/google.rpc.BadRequest",
                    "fieldViolations": [
                        {"field": "message.token", "description": "Invalid registration token"}
                    ],
                },
            ],
        )
    if rule.failure is Failure.RATE_LIMITED:
        return _fcm_error(
            429,
            "RESOURCE_EXHAUSTED",
            "Quota exceeded for quota metric 'Send requests'.",
            [{"@type": fcm, "errorCode": "QUOTA_EXCEEDED"}],
            headers={"Retry-After": str(rule.retry_after)},
        )
    return _fcm_error(
        500, "INTERNAL", "Internal error encountered.", [{"@type": fcm, "errorCode": "INTERNAL"}]
    )


class TwilioSink(_Sink):
    """Speaks the Twilio Messages API (``/2010-04-01/Accounts/{sid}/Messages.json``)."""

    def app(self) -> web.Application:
        """The aiohttp application."""
        app = web.Application()
        path = "/2010-04-01/Accounts/{sid}/Messages.json"
        app.router.add_post(path, self._send)
        app.router.add_get(path, self._list)
        app.router.add_get("/sink/messages", self._list)
        return app

    async def _send(self, request: web.Request) -> web.Response:
        sid = request.match_info["sid"]
        if request.headers.get("Authorization") is None:
            return _twilio_error(401, 20003, "Authenticate")
        form = await request.post()
        to = str(form.get("To", ""))
        rule = self._rule(to)
        if rule is not None:
            return _twilio_failure(rule, to)
        message_sid = "SM" + secrets.token_hex(16)
        message = {
            "sid": message_sid,
            "account_sid": sid,
            "to": to,
            "from": form.get("From"),
            "messaging_service_sid": form.get("MessagingServiceSid"),
            "body": form.get("Body", ""),
            "status": "queued",
            "num_segments": "1",
            "direction": "outbound-api",
            "api_version": "2010-04-01",
            "uri": f"/2010-04-01/Accounts/{sid}/Messages/{message_sid}.json",
        }
        self.received.append(message)
        return web.json_response(message, status=201)


def _twilio_error(
    status: int, code: int, text: str, headers: dict[str, str] | None = None
) -> web.Response:
    payload = {
        "code": code,
        "message": text,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }
    return web.json_response(payload, status=status, headers=headers)


def _twilio_failure(rule: Rule, to: str) -> web.Response:
    if rule.failure is Failure.INVALID_RECIPIENT:
        return _twilio_error(400, 21211, f"The 'To' number {to} is not a valid phone number.")
    if rule.failure is Failure.INVALID_ARGUMENT:
        return _twilio_error(400, 21614, f"'To' number {to} is not a valid mobile number")
    if rule.failure is Failure.RATE_LIMITED:
        return _twilio_error(
            429, 20429, "Too Many Requests", headers={"Retry-After": str(rule.retry_after)}
        )
    return _twilio_error(500, 20500, "Internal Server Error")


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


async def _serve_forever(host: str, fcm_port: int, twilio_port: int) -> None:
    fcm, twilio = FcmSink(), TwilioSink()
    runners = [
        await serve(fcm.app(), host=host, port=fcm_port),
        await serve(twilio.app(), host=host, port=twilio_port),
    ]
    for (_, url), name in zip(runners, ("FCM", "Twilio"), strict=True):
        print(f"{name} sink listening on {url} (GET /sink/messages lists what arrived)")
    try:
        await asyncio.Event().wait()
    finally:
        for runner, _ in runners:
            await runner.cleanup()


def main() -> None:
    """``python -m missive.notify.sinks``: the FCM and Twilio sinks as a process of their own."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--fcm-port", type=int, default=8791)
    parser.add_argument("--twilio-port", type=int, default=8792)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve_forever(args.host, args.fcm_port, args.twilio_port))


if __name__ == "__main__":
    main()
