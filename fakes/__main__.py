"""``python -m fakes``: the FCM and Twilio fakes as a process of their own (the compose stack's)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib

from fakes.fcm import FcmSink
from fakes.http import serve
from fakes.twilio import TwilioSink


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
    """``python -m fakes``: the FCM and Twilio sinks as a process of their own."""
    parser = argparse.ArgumentParser(prog="python -m fakes", description=main.__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--fcm-port", type=int, default=8791)
    parser.add_argument("--twilio-port", type=int, default=8792)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve_forever(args.host, args.fcm_port, args.twilio_port))


if __name__ == "__main__":
    main()
