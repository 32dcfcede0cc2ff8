"""What an event handler may use of its gateway: settings, the socket's user, the services."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from temporalio.client import Client

from gateway.admission import Admission
from missive.broadcast import Broadcaster
from missive.config import Settings
from missive.search import SearchService
from runtime.receipt_batcher import ReceiptBatcher
from runtime.wiring import Core


@dataclass(frozen=True)
class Services:
    """What a started gateway has open; none of it exists before ``start``."""

    core: Core
    """The database-backed services."""
    client: Client
    """The Temporal client."""
    receipts: ReceiptBatcher
    """The process's receipt batcher."""
    broadcaster: Broadcaster
    """Emits to rooms through the Socket.IO server (and so to every gateway process)."""
    search: SearchService | None
    """Search over Typesense, when TYPESENSE_URL is set."""


class Context(Protocol):
    """The gateway as its event handlers see it."""

    settings: Settings
    admission: Admission

    def services(self) -> Services:
        """The open services.

        Raises:
            ProviderUnavailable: the gateway is not started (or stopping).
        """
        ...

    async def user_of(self, sid: str) -> str:
        """The socket's user, once its token is known to hold (``Connections.user_of``)."""
        ...
