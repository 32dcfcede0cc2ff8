"""``python -m gateway``: serves the Socket.IO gateway with uvicorn until SIGTERM / SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import math
import signal
import sys

import uvicorn

from gateway.app import create_app
from missive.config import Settings
from runtime.process import run_process


async def serve(settings: Settings) -> None:
    """Starts the gateway, serves until SIGTERM / SIGINT, then drains and closes it.

    A signal during startup abandons it (closing what was opened) and returns.

    Raises:
        MessagingError: PostgreSQL or Temporal is unreachable (a one-line message).
    """
    app = create_app(settings)
    gateway = app.gateway
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        # uvicorn swaps in its own handlers while it serves and restores these after.
        loop.add_signal_handler(sig, stop.set)

    starting = asyncio.create_task(gateway.start())
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if not starting.done():
        starting.cancel()  # start() closes whatever it had opened
        with contextlib.suppress(asyncio.CancelledError):
            await starting
        return
    starting.result()

    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=settings.gateway_host,
            port=settings.gateway_port,
            lifespan="off",  # the gateway is started above, so failures are one line
            log_config=None,
            access_log=False,
            ws_per_message_deflate=settings.gateway_ws_compression,
            timeout_graceful_shutdown=math.ceil(settings.graceful_shutdown_seconds),
        )
    )
    try:
        if not stop.is_set():
            await server.serve()
    finally:
        await gateway.stop()


def main() -> int:
    """Entry point: one line on stderr and exit 1 when a dependency is unreachable."""
    return run_process("gateway", serve)


if __name__ == "__main__":
    sys.exit(main())
