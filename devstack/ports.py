"""Whether a port is free, and whether a server answers on one."""

from __future__ import annotations

import asyncio
import socket
from contextlib import suppress

from temporalio.client import Client

from devstack.console import DevError


def port_free(host: str, port: int) -> bool:
    """Whether a TCP port can be bound on host."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def require_free(host: str, port: int, what: str, hint: str) -> None:
    """Raises DevError naming the port when it is taken."""
    if not port_free(host, port):
        raise DevError(f"port {port} ({what}) is already in use on {host}; {hint}")


async def accepts(host: str, port: int) -> bool:
    """Whether something accepts TCP connections at host:port."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 2)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with suppress(OSError):
        await writer.wait_closed()
    return True


async def temporal_answers(address: str, namespace: str) -> bool:
    """Whether a Temporal frontend answers at address."""
    try:
        await asyncio.wait_for(Client.connect(address, namespace=namespace), 5)
    except (RuntimeError, OSError, TimeoutError):
        return False
    return True
