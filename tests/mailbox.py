"""A real SMTP server for tests: aiosmtpd with a handler that keeps what it accepted."""

from __future__ import annotations

from email import message_from_bytes, policy
from email.message import EmailMessage

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session


class Inbox:
    """aiosmtpd handler recording every accepted email."""

    def __init__(self) -> None:
        self.emails: list[tuple[Envelope, EmailMessage]] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        self.emails.append((envelope, message_from_bytes(raw, policy=policy.default)))  # type: ignore[arg-type]
        return "250 Message accepted"

    def to(self, address: str) -> list[EmailMessage]:
        """The emails delivered to ``address``."""
        return [mail for envelope, mail in self.emails if address in envelope.rcpt_tos]


def start_smtp(handler: Inbox, port: int) -> Controller:
    """Serves SMTP on 127.0.0.1:``port`` with ``handler``; the caller stops it."""
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    return controller
