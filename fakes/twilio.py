"""A fake Twilio: the Messages API, recording each SMS."""

from __future__ import annotations

import secrets

from aiohttp import web

from fakes.http import Failure, Rule, Sink


class TwilioSink(Sink):
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
