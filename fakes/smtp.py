"""Fake SMTP for aiosmtpd: an in-memory inbox (tests) and a folder of .eml files (dev.py).

aiosmtpd is imported only where a server starts, so ``import fakes`` works without it
(the container image installs no extras).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import SMTP, Envelope, Session


def _parse(envelope: Envelope) -> tuple[bytes, EmailMessage]:
    raw = envelope.original_content or b""
    return raw, message_from_bytes(raw, policy=policy.default)  # type: ignore[return-value]


class Inbox:
    """aiosmtpd handler recording every accepted email."""

    def __init__(self) -> None:
        self.emails: list[tuple[Envelope, EmailMessage]] = []
        """(envelope, parsed message) of every accepted email, in arrival order."""

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        """Records one accepted email."""
        self.emails.append((envelope, _parse(envelope)[1]))
        return "250 Message accepted"

    def to(self, address: str) -> list[EmailMessage]:
        """The emails delivered to ``address``."""
        return [mail for envelope, mail in self.emails if address in envelope.rcpt_tos]


class MailFolder:
    """aiosmtpd handler writing each accepted email to ``<folder>/<n>.eml``."""

    def __init__(
        self,
        folder: Path,
        on_saved: Callable[[Envelope, EmailMessage, Path], None] | None = None,
    ) -> None:
        self.folder = folder
        """Where the .eml files go."""
        self.on_saved = on_saved
        """Called with each email once it is written (dev.py says one line)."""
        folder.mkdir(parents=True, exist_ok=True)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        """Writes one accepted email."""
        raw, mail = _parse(envelope)
        path = self.folder / f"{uuid.uuid4().hex[:12]}.eml"
        path.write_bytes(raw)
        if self.on_saved is not None:
            self.on_saved(envelope, mail, path)
        return "250 Message accepted"


def start_smtp(handler: Inbox | MailFolder, port: int) -> Controller:
    """Serves SMTP on 127.0.0.1:``port`` with ``handler``; the caller stops it."""
    from aiosmtpd.controller import Controller

    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    return controller
