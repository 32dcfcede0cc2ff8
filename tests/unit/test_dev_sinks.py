"""devstack/sinks.py: a sink port already taken stops dev.py with one line, never reused."""

from __future__ import annotations

import socket
from contextlib import AsyncExitStack, suppress
from pathlib import Path

import pytest

from devstack.console import DevError
from devstack.options import Options
from devstack.sinks import start_notify_sinks
from tests.conftest import base_settings

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("port", "name", "setting"),
    [(8791, "FCM sink", "FCM_ENDPOINT"), (8792, "Twilio sink", "TWILIO_BASE_URL")],
)
# The other sink is pointed elsewhere, so only the one under test is started.
async def test_a_sink_port_in_use_is_one_line_naming_the_setting(
    port: int, name: str, setting: str, tmp_path: Path
) -> None:
    opts = Options(tmp_path, 7233, 8233, False, None)
    with socket.socket() as taken:
        # If another process holds it already, that is the same situation.
        with suppress(OSError):
            taken.bind(("127.0.0.1", port))
            taken.listen()
        async with AsyncExitStack() as stack:
            with pytest.raises(DevError) as refused:
                other = "twilio_base_url" if port == 8791 else "fcm_endpoint"
                settings = base_settings(**{other: "http://127.0.0.1:9"})
                await start_notify_sinks(opts, settings, stack)
    message = str(refused.value)
    assert message == (
        f"port {port} ({name}) is already in use on 127.0.0.1; "
        f"stop what listens there, or set {setting}"
    )
