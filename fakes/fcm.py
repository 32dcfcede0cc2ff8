"""A fake FCM: HTTP v1 ``messages:send`` and the OAuth token endpoint, recording each push."""

from __future__ import annotations

import secrets
from typing import Any

from aiohttp import web

from fakes.http import Failure, Rule, Sink


class FcmSink(Sink):
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
