"""A small async client of Typesense's REST API."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson

from missive.errors import ProviderUnavailable, SearchRejected


class TypesenseClient:
    """A small async client of Typesense's REST API (aiohttp, one session).

    Connection failures and 5xx answers raise ProviderUnavailable (retryable);
    4xx answers raise SearchRejected with Typesense's message, except those a
    caller accepts through ``ok``.
    """

    def __init__(self, url: str, api_key: str, *, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        """Base URL of the server."""
        self._api_key = api_key
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=self._timeout,
                connector=aiohttp.TCPConnector(limit=32, keepalive_timeout=30),
            )
        return self._session

    async def close(self) -> None:
        """Closes the HTTP session (a later call opens a new one)."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        body: Any = None,
        data: bytes | None = None,
        api_key: str | None = None,
        ok: Sequence[int] = (),
    ) -> tuple[int, Any]:
        """Sends one request; returns (status, parsed JSON or text).

        Raises:
            ProviderUnavailable: Typesense did not answer or answered 5xx.
            SearchRejected: a 4xx answer not listed in ``ok``.
        """
        headers = {"X-TYPESENSE-API-KEY": api_key or self._api_key}
        if data is not None:
            headers["Content-Type"] = "text/plain"
        try:
            async with self._http().request(
                method,
                f"{self.url}{path}",
                params=params,
                json=body if data is None else None,
                data=data,
                headers=headers,
            ) as response:
                raw = await response.text()
                status = response.status
        except (aiohttp.ClientError, OSError, TimeoutError) as err:
            raise ProviderUnavailable(
                f"Typesense at {self.url} did not answer: {type(err).__name__}: {err}"[:300]
            ) from None
        parsed: Any = raw
        if raw[:1] in ("{", "["):
            try:
                parsed = json.loads(raw)
            except ValueError:
                parsed = raw
        if status >= 500 or status == 503:
            raise ProviderUnavailable(f"Typesense at {self.url} answered {status}: {raw[:200]}")
        if status >= 400 and status not in ok:
            message = parsed.get("message") if isinstance(parsed, dict) else raw[:200]
            raise SearchRejected(f"Typesense refused {method} {path} ({status}): {message}")
        return status, parsed

    async def import_documents(self, collection: str, documents: Sequence[dict[str, Any]]) -> None:
        """Upserts documents in ONE import call.

        Raises:
            ProviderUnavailable: Typesense is down, or refused some documents
                (the whole batch is retried; upserts are idempotent).
        """
        if not documents:
            return
        payload = b"\n".join(map(orjson.dumps, documents))
        _, answer = await self.request(
            "POST",
            f"/collections/{quote(collection)}/documents/import",
            params={"action": "upsert"},
            data=payload,
        )
        lines = answer.splitlines() if isinstance(answer, str) else [json.dumps(answer)]
        failed = [line for line in lines if '"success":true' not in line.replace(" ", "")]
        if failed:
            raise ProviderUnavailable(
                f"Typesense refused {len(failed)} of {len(documents)} documents: {failed[0][:200]}"
            )

    async def delete_documents(self, collection: str, ids: Sequence[str]) -> int:
        """Removes documents by id in one call; absent ones are fine."""
        if not ids:
            return 0
        _, answer = await self.request(
            "DELETE",
            f"/collections/{quote(collection)}/documents",
            params={"filter_by": f"id:[{','.join(ids)}]", "batch_size": 500},
        )
        return int(answer.get("num_deleted", 0)) if isinstance(answer, dict) else 0

    async def export_ids(self, collection: str) -> AsyncIterator[tuple[str, str]]:
        """Every (document id, conversation id) of a collection, streamed."""
        headers = {"X-TYPESENSE-API-KEY": self._api_key}
        try:
            async with self._http().get(
                f"{self.url}/collections/{quote(collection)}/documents/export",
                params={"include_fields": "id,conversation_id"},
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=None, sock_read=60),
            ) as response:
                if response.status >= 400:
                    raise ProviderUnavailable(
                        f"Typesense export of {collection} answered {response.status}"
                    )
                async for line in response.content:
                    if line.strip():
                        doc = json.loads(line)
                        yield doc["id"], doc.get("conversation_id", "")
        except (aiohttp.ClientError, OSError, TimeoutError) as err:
            raise ProviderUnavailable(f"Typesense at {self.url} did not answer: {err}") from None
