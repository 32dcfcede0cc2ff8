"""EmailSender: multipart text + HTML email over SMTP, one Message-ID per notification."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime

import aiosmtplib

from missive.config import Settings
from missive.errors import InvalidInput, InvalidRecipient, ProviderUnavailable
from missive.notify.endpoints import smtp_server
from missive.notify.errors import smtp_reply_error


@dataclass(frozen=True)
class Email:
    """One email to one recipient."""

    notification_id: str
    """The caller's id for this notification; the Message-ID derives from it, so a
    resend of the same notification carries the same Message-ID."""

    to: str
    """The recipient's address (``user@example.com``)."""

    subject: str
    """Subject line."""

    text: str
    """Plain-text body."""

    html: str
    """HTML body (the alternative part mail clients prefer)."""

    to_name: str = ""
    """Display name of the recipient, if any."""

    sent_at: datetime | None = None
    """Value of the Date header; None: now."""


def parse_address(address: str, *, what: str) -> Address:
    """Parses one bare address (no display name).

    Raises:
        InvalidRecipient: naming the address and what is wrong with it.
    """
    if not address or not address.strip():
        raise InvalidRecipient(f"{what} is empty")
    try:
        parsed = Address(addr_spec=address.strip())
    except (ValueError, IndexError) as err:  # HeaderParseError is a ValueError
        raise InvalidRecipient(f"{what} {address!r} is not a valid address: {err}") from err
    if not parsed.username or not parsed.domain or "." not in parsed.domain.strip("."):
        if parsed.domain != "localhost":
            raise InvalidRecipient(f"{what} {address!r} has no valid domain")
    return parsed


def message_id(notification_id: str, domain: str) -> str:
    """The deterministic Message-ID of a notification: ``<missive.<hash>@<domain>>``."""
    digest = hashlib.sha256(notification_id.encode()).hexdigest()[:40]
    return f"<missive.{digest}@{domain}>"


class EmailSender:
    """Sends notification emails through one SMTP server; built once and passed in."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        sender: str,
        username: str | None = None,
        password: str | None = None,
        starttls: bool = False,
        timeout: float = 30.0,
    ) -> None:
        """Checks the configuration.

        Args:
            host: SMTP server host.
            port: SMTP server port.
            sender: The From header, ``"Name <addr@domain>"`` or a bare address.
            username: SMTP login, if the server wants one.
            password: SMTP password.
            starttls: Upgrade the connection with STARTTLS (required to be offered).
            timeout: Seconds each SMTP step may take.

        Raises:
            InvalidInput: the sender address is malformed.
        """
        name, _, rest = sender.rpartition("<")
        bare = rest.rstrip(">").strip() if rest.endswith(">") else sender.strip()
        try:
            address = parse_address(bare, what="EMAIL_FROM")
        except InvalidRecipient as err:
            raise InvalidInput(str(err)) from err
        self._from = Address(display_name=name.strip().strip('"'), addr_spec=address.addr_spec)
        self._host = host
        self._port = port
        self._username = username or None
        self._password = password or None
        self._starttls = starttls
        self._timeout = timeout

    @classmethod
    def from_settings(cls, settings: Settings) -> EmailSender:
        """The sender the SMTP_* and EMAIL_FROM settings describe (dev sink if SMTP_HOST unset)."""
        host, port = smtp_server(settings)
        return cls(
            host=host,
            port=port,
            sender=settings.email_from,
            username=settings.smtp_username,
            password=settings.smtp_password,
            starttls=settings.smtp_starttls,
        )

    def build(self, email: Email) -> EmailMessage:
        """The MIME message: multipart/alternative, text then HTML.

        Raises:
            InvalidRecipient: the recipient address is malformed.
        """
        to = parse_address(email.to, what="email address")
        message = EmailMessage()
        message["From"] = self._from
        message["To"] = Address(display_name=email.to_name, addr_spec=to.addr_spec)
        message["Subject"] = email.subject
        message["Date"] = format_datetime(email.sent_at or datetime.now(UTC))
        message["Message-ID"] = message_id(email.notification_id, self._from.domain)
        message["Auto-Submitted"] = "auto-generated"
        message.set_content(email.text)
        message.add_alternative(email.html, subtype="html")
        return message

    async def send(self, email: Email) -> str:
        """Sends one email.

        Returns:
            The Message-ID header sent.

        Raises:
            InvalidRecipient: the address is malformed or the server refused it (5xx).
            ProviderUnavailable: the server is unreachable, timed out, deferred (4xx)
                or refused our login.
            InvalidInput: the server refused the message itself (5xx at MAIL/DATA).
        """
        message = self.build(email)
        to = message["To"].addresses[0].addr_spec
        try:
            await aiosmtplib.send(
                message,
                hostname=self._host,
                port=self._port,
                username=self._username,
                password=self._password,
                start_tls=self._starttls,
                timeout=self._timeout,
            )
        except aiosmtplib.SMTPRecipientsRefused as err:
            refused = err.recipients[0]
            raise smtp_reply_error(refused.code, refused.message, stage="RCPT", to=to) from err
        except aiosmtplib.SMTPAuthenticationError as err:
            raise ProviderUnavailable(
                f"SMTP server {self._host}:{self._port} refused our login: {err.code} {err.message}"
            ) from err
        except aiosmtplib.SMTPSenderRefused as err:
            raise smtp_reply_error(err.code, err.message, stage="MAIL", to=to) from err
        except aiosmtplib.SMTPDataError as err:
            raise smtp_reply_error(err.code, err.message, stage="DATA", to=to) from err
        except aiosmtplib.SMTPResponseException as err:
            raise ProviderUnavailable(
                f"SMTP server {self._host}:{self._port} answered {err.code} {err.message}"
            ) from err
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as err:
            raise ProviderUnavailable(
                f"SMTP server {self._host}:{self._port} unreachable: {type(err).__name__}: {err}"
            ) from err
        return str(message["Message-ID"])
