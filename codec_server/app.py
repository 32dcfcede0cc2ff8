"""An aiohttp app with ``POST /encode`` and ``POST /decode`` over Missive's payload codec.

The Temporal Web UI (and ``temporal --codec-endpoint``) posts a payload list,
``{"payloads": [{"metadata": {...}, "data": "<base64>"}]}``, and gets the same
shape back, decoded or encoded. Every request carries the bearer token from
``CODEC_SERVER_TOKEN``: in the ``Authorization`` header, or, for a browser that
cannot add headers (the Web UI pointed at ``--ui-codec-endpoint``), as the first
path segment (``/<token>/decode``). Bad requests get a 4xx with a reason that
never quotes the body or the token; the server never answers 500. That holds for
requests aiohttp refuses before the app sees them too (a header or request line over
``MAX_LINE_BYTES``), once served through ``RefusingRequestHandler``.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMethod, LineTooLong
from google.protobuf import json_format
from temporalio.api.common.v1 import Payload, Payloads

from missive.config import Settings
from missive.errors import InvalidInput
from runtime.codec import EncryptionCodec, PayloadDecryptionError

log = logging.getLogger("missive.codec_server")

MAX_BODY_BYTES = 8 * 1024 * 1024
"""Largest request accepted; a workflow history page of payloads fits easily."""

MAX_LINE_BYTES = 8190
"""Longest request line or header aiohttp reads (its default): a bearer token is far shorter."""

ALLOWED_HEADERS = "Authorization, Content-Type, X-Namespace"
"""What the Web UI sends: X-Namespace names the namespace of the payloads."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_CODEC = web.AppKey("codec", EncryptionCodec)
_TOKEN = web.AppKey("token", str)
_ORIGINS = web.AppKey("origins", frozenset)


class BadRequest(Exception):
    """A request the server refuses; the message is safe to send back."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        """The HTTP status to answer with."""


def parse_origins(spec: str) -> frozenset[str]:
    """CODEC_SERVER_CORS_ORIGINS as a set (``*`` stays a single entry)."""
    return frozenset(o.strip().rstrip("/") for o in spec.split(",") if o.strip())


def parse_payloads(raw: bytes) -> list[Payload]:
    """The payloads of a request body.

    Raises:
        BadRequest: the body is not JSON, not ``{"payloads": [...]}``, or an
            entry is not a payload; the reason names the entry, never its content.
    """
    try:
        document = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise BadRequest(400, "the body is not JSON") from None
    except RecursionError:
        raise BadRequest(400, "the body's JSON is nested too deeply to read") from None
    except ValueError:  # Python reads at most 4,300 digits of one integer
        raise BadRequest(400, "the body's JSON holds a number too long to read") from None
    if not isinstance(document, dict) or not isinstance(document.get("payloads"), list):
        raise BadRequest(400, 'the body must be a payload list: {"payloads": [...]}')
    payloads = []
    for index, entry in enumerate(document["payloads"]):
        if not isinstance(entry, dict):
            raise BadRequest(400, f"payloads[{index}] is not an object")
        payload = Payload()
        try:
            json_format.ParseDict(entry, payload)
        except (json_format.ParseError, TypeError, ValueError):
            raise BadRequest(
                400,
                f"payloads[{index}] is not a Temporal payload "
                "(metadata: map of base64 strings, data: base64)",
            ) from None
        payloads.append(payload)
    return payloads


def payloads_json(payloads: list[Payload]) -> dict[str, Any]:
    """The JSON form of a payload list, as the Web UI reads it."""
    return json_format.MessageToDict(Payloads(payloads=payloads))


def _bearer(request: web.Request) -> str | None:
    path_token = request.match_info.get("token")
    if path_token is not None:
        return path_token
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def _cors_headers(request: web.Request) -> dict[str, str]:
    origin = request.headers.get("Origin")
    allowed = request.app[_ORIGINS]
    if origin is None or not ("*" in allowed or origin.rstrip("/") in allowed):
        return {}
    return {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Allow-Credentials": "true",
        "Vary": "Origin",
    }


@web.middleware
async def _guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """CORS on every answer; auth on every POST; refusals as JSON, never a 500."""
    cors = _cors_headers(request)
    if request.method == "OPTIONS":
        # A preflight never carries credentials: answer it for allowed origins only.
        if not cors:
            return web.json_response({"error": "origin not allowed"}, status=403)
        return web.Response(
            status=204,
            headers={
                **cors,
                "Access-Control-Allow-Methods": "POST, OPTIONS",
                "Access-Control-Allow-Headers": ALLOWED_HEADERS,
                "Access-Control-Max-Age": "600",
            },
        )
    try:
        token = _bearer(request)
        if token is None:
            raise BadRequest(401, "a bearer token is required (Authorization: Bearer <token>)")
        if not hmac.compare_digest(token.encode(), request.app[_TOKEN].encode()):
            raise BadRequest(401, "the bearer token is not valid")
        response = await handler(request)
    except BadRequest as err:
        response = web.json_response({"error": str(err)}, status=err.status)
        if err.status == 401:
            response.headers["WWW-Authenticate"] = "Bearer"
    except web.HTTPException as err:
        # aiohttp's own refusals (405, 413, ...) keep their status, without HTML.
        response = web.json_response({"error": err.reason}, status=err.status)
    except Exception as err:
        # Never a 500 and never the payloads in a log: the type names the problem.
        log.warning("%s %s refused: %s", request.method, request.path, type(err).__name__)
        response = web.json_response({"error": "the payloads could not be processed"}, status=400)
    response.headers.update(cors)
    return response


class RefusingRequestHandler(web.RequestHandler):
    """aiohttp's connection handler, answering requests it cannot parse in one short line.

    aiohttp refuses an oversized or malformed request before any middleware runs, and
    its own answer quotes the first 100 bytes of the offending line (a header such as
    ``Authorization: Bearer <token>...``, or a path that starts with the token) and logs
    a traceback for it. The client's mistake deserves neither: this answers a JSON
    reason that quotes nothing and logs one line naming the exception type.
    """

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """The answer to a request aiohttp could not parse; anything else as aiohttp does.

        A 500 or a 504 is the app's own failure (the guard turns every exception of a
        handler into a 4xx, so one means a bug), and keeps aiohttp's traceback.
        """
        if status != 400 or exc is None:
            return super().handle_error(request, status, exc, message)
        if isinstance(exc, BadHttpMethod):
            # TLS or another protocol sent to this port: noise, as aiohttp treats it.
            log.debug("refused a request that is not HTTP: %s", type(exc).__name__)
        else:
            log.warning("refused a request aiohttp could not read: %s", type(exc).__name__)
        if request.writer.output_size > 0:
            raise ConnectionError("a response was already sent on this connection")
        if isinstance(exc, LineTooLong):
            # The request line and headers share one limit, so one answer names both.
            status, reason = 431, f"the request line or a header is over {MAX_LINE_BYTES} bytes"
        else:
            reason = "the request is not valid HTTP/1.1"
        response = web.json_response({"error": reason}, status=status)
        # aiohttp stopped reading this connection mid-request: it cannot carry another.
        response.force_close()
        return response


async def _read(request: web.Request) -> list[Payload]:
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise BadRequest(413, f"the body is larger than {MAX_BODY_BYTES} bytes") from None
    return parse_payloads(raw)


async def decode(request: web.Request) -> web.Response:
    """``POST /decode``: payloads this codec encrypted come back in the clear."""
    payloads = await _read(request)
    try:
        decoded = await request.app[_CODEC].decode(payloads)
    except PayloadDecryptionError as err:
        # The reason quotes at most 16 characters of the requested key id.
        raise BadRequest(422, err.message) from None
    return web.json_response(payloads_json(decoded))


async def encode(request: web.Request) -> web.Response:
    """``POST /encode``: payloads come back encrypted with the current codec key."""
    payloads = await _read(request)
    return web.json_response(payloads_json(await request.app[_CODEC].encode(payloads)))


def create_app(settings: Settings) -> web.Application:
    """Builds the codec server's app.

    Raises:
        InvalidInput: CODEC_SERVER_TOKEN or CODEC_KEYS is not set, or a key is malformed.
    """
    if not settings.codec_server_token:
        raise InvalidInput("CODEC_SERVER_TOKEN is not set: the codec server needs a bearer token")
    if not settings.codec_keys:
        raise InvalidInput("CODEC_KEYS is not set: payloads are not encrypted, nothing to decode")
    try:
        codec = EncryptionCodec(settings.codec_keyring, current_version=settings.codec_key_version)
    except ValueError as err:
        raise InvalidInput(str(err)) from None
    app = web.Application(middlewares=[_guard], client_max_size=MAX_BODY_BYTES)
    app[_CODEC] = codec
    app[_TOKEN] = settings.codec_server_token
    app[_ORIGINS] = parse_origins(settings.codec_server_cors_origins)
    for prefix in ("", "/{token}"):
        app.router.add_post(f"{prefix}/decode", decode)
        app.router.add_post(f"{prefix}/encode", encode)
        for name in ("decode", "encode"):
            app.router.add_route("OPTIONS", f"{prefix}/{name}", _unreachable)
    return app


async def _unreachable(request: web.Request) -> web.Response:
    """OPTIONS routes exist so the guard sees preflights; it answers them itself."""
    return web.Response(status=204)
