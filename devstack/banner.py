"""The lines dev.py prints once everything is up: where each thing is."""

from __future__ import annotations

from devstack.console import say
from devstack.stack import Running


def banner(running: Running) -> None:
    """Where everything is, and how to get a token."""
    lines = [
        "Missive is running.",
        f"  Temporal Web UI  {running.ui_url}"
        if running.ui_url
        else f"  Temporal         {running.env['TEMPORAL_ADDRESS']} (not started here)",
        f"  Gateway          {running.gateway_url}  (Socket.IO, auth={{'token': ...}})",
        f"  Codec server     http://127.0.0.1:{running.env['CODEC_SERVER_PORT']}"
        " (Bearer CODEC_SERVER_TOKEN; the Web UI decodes through it)",
        "  A token          python -m starter token <user id>",
    ]
    lines.extend(running.sinks)
    if running.keys_file:
        lines.append(
            f"  Keys             {running.keys_file} (load it first: set -a; . {running.keys_file};"
            " set +a)"
        )
    lines.append("  Stop             Ctrl-C")
    for line in lines:
        say(line)
