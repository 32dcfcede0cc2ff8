"""The codec server over HTTP (aiohttp's test server): auth, CORS, round trips, bad bodies."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestClient, TestServer

from codec_server import create_app
from missive.errors import InvalidInput
from tests.conftest import SESSION_KEYS, base_settings

pytestmark = pytest.mark.unit

TOKEN = "s3cret-codec-token"
UI = "http://127.0.0.1:8233"
PLAIN = {"metadata": {"encoding": base64.b64encode(b"json/plain").decode()}}
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _plain(text: str) -> dict[str, object]:
    return {**PLAIN, "data": base64.b64encode(json.dumps(text).encode()).decode()}


@pytest.fixture
async def http() -> AsyncIterator[TestClient]:
    app = create_app(base_settings(codec_server_token=TOKEN, codec_server_cors_origins=UI))
    async with TestClient(TestServer(app)) as client:
        yield client


async def test_round_trip_hides_the_text_and_restores_it(http: TestClient) -> None:
    body = {"payloads": [_plain("call ana@example.com at +1 555 0100")]}
    encoded = await http.post("/encode", json=body, headers=AUTH)
    assert encoded.status == 200
    sealed = await encoded.json()
    assert "ana@example.com" not in base64.b64decode(sealed["payloads"][0]["data"]).decode(
        "latin-1"
    )
    assert base64.b64decode(sealed["payloads"][0]["metadata"]["encoding"]) == b"binary/encrypted"

    decoded = await http.post("/decode", json=sealed, headers={**AUTH, "X-Namespace": "default"})
    assert decoded.status == 200
    assert await decoded.json() == body

    # The browser form: the token as the first path segment.
    by_path = await http.post(f"/{TOKEN}/decode", json=sealed)
    assert by_path.status == 200
    assert await by_path.json() == body


async def test_requests_without_the_right_token_are_refused(http: TestClient) -> None:
    body = {"payloads": [_plain("x")]}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
        answer = await http.post("/decode", json=body, headers=headers)
        assert answer.status == 401, headers
        text = await answer.text()
        assert TOKEN not in text and "wrong" not in text
        assert answer.headers["WWW-Authenticate"] == "Bearer"
    assert (await http.post("/wrong-token/encode", json=body)).status == 401


async def test_bodies_that_are_not_payload_lists_get_400_naming_the_problem(
    http: TestClient,
) -> None:
    cases = [
        (b"not json at all", "not JSON"),
        (b"[1, 2]", "payload list"),
        (b'{"payloads": "ana@example.com"}', "payload list"),
        (b'{"payloads": [42]}', "payloads[0] is not an object"),
        (b'{"payloads": [{"data": "***ana@example.com***"}]}', "payloads[0] is not a Temporal"),
        (b'{"payloads": [{"metadata": {"encoding": 5}}]}', "payloads[0] is not a Temporal"),
    ]
    for raw, reason in cases:
        answer = await http.post("/decode", data=raw, headers=AUTH)
        assert answer.status == 400, raw
        error = (await answer.json())["error"]
        assert reason in error and "ana@example.com" not in error, (raw, error)


async def test_unknown_key_id_and_truncated_ciphertext_are_refused_by_name(
    http: TestClient,
) -> None:
    sealed = await (
        await http.post("/encode", json={"payloads": [_plain("x")]}, headers=AUTH)
    ).json()
    payload = sealed["payloads"][0]
    unknown = {**payload, "metadata": {**payload["metadata"], "encryption-key-id": "Nw=="}}
    answer = await http.post("/decode", json={"payloads": [unknown]}, headers=AUTH)
    assert answer.status == 422
    assert "unknown codec key id '7'" in (await answer.json())["error"]

    truncated = {**payload, "data": base64.b64encode(b"short").decode()}
    answer = await http.post("/decode", json={"payloads": [truncated]}, headers=AUTH)
    assert answer.status == 422
    assert "failed authentication" in (await answer.json())["error"]


async def test_a_huge_requested_key_id_is_not_echoed(http: TestClient) -> None:
    sealed = await (
        await http.post("/encode", json={"payloads": [_plain("x")]}, headers=AUTH)
    ).json()
    payload = sealed["payloads"][0]
    cases = [
        (b"A" * 200_000, "unknown codec key id 'AAAAAAAAAAAAAAAA'... (200000 bytes)"),
        (b"\xff\xfe" * 1000, "unknown codec key id '\ufffd\ufffd"),  # not UTF-8: no 500
    ]
    for key_id, reason in cases:
        metadata = {**payload["metadata"], "encryption-key-id": base64.b64encode(key_id).decode()}
        answer = await http.post(
            "/decode", json={"payloads": [{**payload, "metadata": metadata}]}, headers=AUTH
        )
        assert answer.status == 422
        assert len(await answer.read()) < 300
        assert reason in (await answer.json())["error"]


async def test_cors_preflight_is_answered_for_the_web_ui_only(http: TestClient) -> None:
    preflight = {
        "Origin": UI,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type,x-namespace",
    }
    answer = await http.options("/decode", headers=preflight)
    assert answer.status == 204
    assert answer.headers["Access-Control-Allow-Origin"] == UI
    assert "POST" in answer.headers["Access-Control-Allow-Methods"]
    assert "Authorization" in answer.headers["Access-Control-Allow-Headers"]
    assert "X-Namespace" in answer.headers["Access-Control-Allow-Headers"]

    other = await http.options("/decode", headers={**preflight, "Origin": "https://evil.test"})
    assert other.status == 403
    assert "Access-Control-Allow-Origin" not in other.headers

    # The actual request carries the CORS header too (also on a refusal).
    refused = await http.post("/decode", json={"payloads": []}, headers={"Origin": UI})
    assert refused.status == 401
    assert refused.headers["Access-Control-Allow-Origin"] == UI


def test_the_server_will_not_start_without_a_token_or_codec_keys() -> None:
    with pytest.raises(InvalidInput, match="CODEC_SERVER_TOKEN is not set"):
        create_app(base_settings())
    with pytest.raises(InvalidInput, match="CODEC_KEYS is not set"):
        create_app(base_settings(codec_server_token=TOKEN, codec_keys=""))
    assert SESSION_KEYS["codec_keys"]  # the fixture settings do encrypt
