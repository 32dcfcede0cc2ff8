"""``python -m codec_server``: serves /encode and /decode until SIGTERM / SIGINT."""

from __future__ import annotations

import asyncio
import signal
import sys

from aiohttp import web

from codec_server.app import MAX_LINE_BYTES, RefusingRequestHandler, create_app
from missive.config import Settings
from missive.errors import InvalidInput
from runtime.process import run_process


async def serve(settings: Settings, *, stop: asyncio.Event | None = None) -> None:
    """Serves the codec server on CODEC_SERVER_HOST:CODEC_SERVER_PORT until stopped.

    Raises:
        InvalidInput: CODEC_SERVER_TOKEN or CODEC_KEYS is not set, or the port is taken.
    """
    stop = stop or asyncio.Event()
    app = create_app(settings)
    runner = web.AppRunner(app)
    await runner.setup()
    assert runner.server is not None  # setup() built it
    manager = runner.server
    loop = asyncio.get_running_loop()

    def connection() -> RefusingRequestHandler:
        # What a TCPSite would build (aiohttp's RequestHandler), refusing unparsable
        # requests without echoing them. No access log: a browser's token may sit in the path.
        return RefusingRequestHandler(
            manager,
            loop=loop,
            access_log=None,  # type: ignore[arg-type]  # aiohttp reads None as off
            max_line_size=MAX_LINE_BYTES,
            max_field_size=MAX_LINE_BYTES,
        )

    listening: asyncio.Server | None = None
    try:
        try:
            listening = await loop.create_server(
                connection, settings.codec_server_host, settings.codec_server_port
            )
        except OSError as err:
            raise InvalidInput(
                f"cannot listen on {settings.codec_server_host}:{settings.codec_server_port}: "
                f"{err.strerror or err}"
            ) from None
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        print(
            f"codec server on http://{settings.codec_server_host}:{settings.codec_server_port}",
            file=sys.stderr,
            flush=True,
        )
        await stop.wait()
    finally:
        if listening is not None:
            listening.close()
        # Closes the open connections too: each handler registered with the manager.
        await runner.cleanup()


def main() -> int:
    """Entry point: one line on stderr and exit 1 on a missing setting."""
    return run_process("codec_server", serve)


if __name__ == "__main__":
    sys.exit(main())
