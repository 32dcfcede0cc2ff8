"""Everything dev.py starts, in order, and what is up once it has."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path

from devstack.children import Child, start_child, wait_ready
from devstack.console import DevError, say
from devstack.keys import load_keys
from devstack.options import ROOT, Options
from devstack.ports import accepts, require_free
from devstack.servers import plan_temporal, start_database, start_temporal
from devstack.sinks import start_notify_sinks
from missive.config import Settings
from missive.errors import MessagingError
from runtime.embedded_search import start_embedded_typesense


@dataclass
class Running:
    """What is up, for the banner and the demo."""

    settings: Settings
    """The children's settings (database URL, keys, addresses)."""
    env: dict[str, str]
    """The children's environment."""
    children: list[Child] = field(default_factory=list)
    """Temporal (when started here), the worker and the gateway."""
    ui_url: str | None = None
    """The Temporal Web UI, when dev.py started Temporal."""
    keys_file: Path | None = None
    """Where generated keys live, when they were not in the environment."""
    embedded_postgres: bool = False
    """Whether dev.py started PostgreSQL (DATABASE_URL was unset)."""
    sinks: list[str] = field(default_factory=list)
    """Banner lines of the local notification sinks started here."""

    @property
    def stop_order(self) -> list[str]:
        """What dev.py stops, in order."""
        servers = ["Temporal"] if self.ui_url else []
        return [
            "the gateway",
            "the worker",
            "the codec server",
            *servers,
            *(["PostgreSQL"] * self.embedded_postgres),
        ]

    @property
    def gateway_host(self) -> str:
        """A host that reaches the gateway from this machine."""
        host = self.settings.gateway_host
        return "127.0.0.1" if host in ("0.0.0.0", "") else host

    @property
    def gateway_url(self) -> str:
        """The gateway's URL from this machine."""
        return f"http://{self.gateway_host}:{self.settings.gateway_port}"


def child_env(database_url: str, temporal_address: str, keys: Mapping[str, str]) -> dict[str, str]:
    """This process's environment plus what the worker and the gateway need."""
    return {
        **os.environ,
        **keys,
        "DATABASE_URL": database_url,
        "TEMPORAL_ADDRESS": temporal_address,
        "PYTHONUNBUFFERED": "1",
    }


async def start_stack(opts: Options, stack: AsyncExitStack, stop: asyncio.Event) -> Running:
    """Starts everything in order, registering each stop on ``stack``."""
    opts.data_dir.mkdir(parents=True, exist_ok=True)
    keys, keys_file = load_keys(opts.data_dir, os.environ)
    base = Settings()
    require_free(base.gateway_host, base.gateway_port, "gateway", "set GATEWAY_PORT")
    require_free("127.0.0.1", opts.codec_server_port, "codec server", "pass --codec-port")
    external = await plan_temporal(opts, base)
    database_url = await start_database(opts, stack, stop)
    children: list[Child] = []
    if external:
        say(f"using the Temporal server at {external}")
    else:
        children.append(
            await start_temporal(opts, base, stack, stop, codec_token=keys["CODEC_SERVER_TOKEN"])
        )
    address = external or f"127.0.0.1:{opts.temporal_port}"
    env = child_env(database_url, address, keys)
    env["CODEC_SERVER_HOST"] = "127.0.0.1"
    env["CODEC_SERVER_PORT"] = str(opts.codec_server_port)
    env.setdefault(
        "CODEC_SERVER_CORS_ORIGINS",
        f"http://127.0.0.1:{opts.ui_port},http://localhost:{opts.ui_port}",
    )
    if not env.get("TYPESENSE_URL"):
        try:
            url, key = await start_embedded_typesense(opts.data_dir, stack)
        except MessagingError as err:
            raise DevError(str(err)) from None
        env["TYPESENSE_URL"], env["TYPESENSE_API_KEY"] = url, key
        say(f"Typesense is up at {url} (data in {opts.data_dir / 'typesense'})")
    sinks = await start_notify_sinks(opts, base, stack)
    running = Running(
        sinks=sinks,
        settings=Settings(
            database_url=database_url,
            temporal_address=address,
            master_keys=keys["MASTER_KEYS"],
            codec_keys=keys["CODEC_KEYS"],
            gateway_secret=keys["GATEWAY_SECRET"],
        ),
        env=env,
        children=children,
        ui_url=None if external else f"http://127.0.0.1:{opts.ui_port}",
        keys_file=keys_file,
        embedded_postgres=not base.database_url,
    )
    shutdown = running.settings.graceful_shutdown_seconds + 10
    for name, argv in (
        ("codec server", [sys.executable, "-m", "codec_server"]),
        ("worker", [sys.executable, str(ROOT / "worker.py")]),
        ("gateway", [sys.executable, "-m", "gateway"]),
    ):
        child = await start_child(name, argv, env)
        stack.push_async_callback(child.stop, shutdown)
        children.append(child)
    host, port = running.gateway_host, running.settings.gateway_port
    await wait_ready("the gateway", lambda: accepts(host, port), stop, child=children[-1])
    return running
