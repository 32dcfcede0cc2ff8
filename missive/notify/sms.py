"""SmsSender: one SMS per notification through the Twilio Messages API (twilio client, async)."""

from __future__ import annotations

from typing import Any

import aiohttp
from twilio.base.exceptions import TwilioRestException, TwilioServiceException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.http.response import Response
from twilio.rest import Client

from missive.config import Settings
from missive.errors import InvalidInput, InvalidRecipient, ProviderUnavailable, RateLimited
from missive.notify.endpoints import twilio_base_url
from missive.notify.errors import parse_retry_after, twilio_error
from missive.validation import E164

DEV_SINK_AUTH_TOKEN = "missive-dev-sink"
"""Auth token sent to a local Twilio sink (twilio.com needs TWILIO_AUTH_TOKEN)."""


class _HttpClient(AsyncTwilioHttpClient):
    """Twilio's aiohttp client, turning a 429 into RateLimited with its Retry-After.

    Twilio's exceptions drop the response headers, so the delay is read here.
    """

    async def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Response:
        # The twilio client (9.13) turns ``auth`` into aiohttp's BasicAuth, deprecated
        # since aiohttp 3.14: the same credentials go as the header aiohttp asks for.
        auth = kwargs.pop("auth", None)
        if auth is not None:
            login, password = auth
            kwargs["headers"] = {
                **(kwargs.get("headers") or {}),
                "Authorization": aiohttp.encode_basic_auth(login, password),
            }
        try:
            response = await super().request(method, url, *args, **kwargs)
        except (aiohttp.ClientError, TimeoutError) as err:
            raise ProviderUnavailable(
                f"Twilio did not answer: {type(err).__name__}: {err}"
            ) from err
        if response.status_code == 429:
            raise RateLimited(
                f"Twilio rate limit: {response.text[:200]}",
                retry_after=parse_retry_after(response.headers.get("Retry-After")),
            )
        return response


class SmsSender:
    """Sends SMS through Twilio; built once per process, closed with ``close()``."""

    def __init__(
        self,
        *,
        account_sid: str,
        auth_token: str,
        from_number: str,
        base_url: str = "https://api.twilio.com",
        timeout: float = 10.0,
    ) -> None:
        """Builds the client.

        Args:
            account_sid: Twilio account SID (``AC...``).
            auth_token: Twilio auth token.
            from_number: The sending number (E.164) or messaging service SID (``MG...``).
            base_url: Base URL of the Twilio REST API (a local sink in dev and tests).
            timeout: Seconds one HTTP request may take.

        Raises:
            InvalidInput: a setting is missing or malformed.
        """
        if not account_sid:
            raise InvalidInput("TWILIO_ACCOUNT_SID is required to send SMS")
        if not (E164.match(from_number) or from_number.startswith("MG")):
            raise InvalidInput(
                f"TWILIO_FROM {from_number!r} is neither an E.164 number nor a messaging service"
            )
        self._http = _HttpClient(timeout=timeout)
        self._client = Client(account_sid, auth_token, http_client=self._http)
        self._client.api.base_url = base_url.rstrip("/")
        self._account_sid = account_sid
        self._from = from_number

    @classmethod
    def from_settings(cls, settings: Settings) -> SmsSender:
        """Real Twilio with TWILIO_AUTH_TOKEN; otherwise the local Twilio sink."""
        base_url = twilio_base_url(settings)
        if "twilio.com" in base_url and not settings.twilio_auth_token:
            raise InvalidInput(f"TWILIO_AUTH_TOKEN is required to send through {base_url}")
        return cls(
            account_sid=settings.twilio_account_sid,
            # The twilio client sends no Authorization header with an empty token,
            # and a sink (like Twilio) answers 401 without one.
            auth_token=settings.twilio_auth_token or DEV_SINK_AUTH_TOKEN,
            from_number=settings.twilio_from,
            base_url=base_url,
        )

    async def send(self, *, to: str, body: str) -> str:
        """Sends one SMS.

        Returns:
            Twilio's message SID.

        Raises:
            InvalidRecipient: the number is malformed or Twilio calls it invalid.
            RateLimited: Twilio answered 429 (``retry_after`` from Retry-After).
            ProviderUnavailable: Twilio failed (5xx), timed out or refused our credentials.
            InvalidInput: Twilio refused the message itself.
        """
        if not E164.match(to):
            raise InvalidRecipient(f"phone number {to!r} is not in E.164 form (+<country><number>)")
        messages = self._client.api.v2010.accounts(self._account_sid).messages
        try:
            kwargs: dict[str, Any] = {"to": to, "body": body}
            if self._from.startswith("MG"):
                kwargs["messaging_service_sid"] = self._from
            else:
                kwargs["from_"] = self._from
            message = await messages.create_async(**kwargs)
        except TwilioServiceException as err:
            raise twilio_error(err.status, err.code, err.detail or err.title, to=to) from err
        except TwilioRestException as err:
            code = err.code if isinstance(err.code, int) else None
            raise twilio_error(err.status, code, err.msg, to=to) from err
        return str(message.sid)

    async def close(self) -> None:
        """Closes the HTTP session."""
        await self._http.close()
