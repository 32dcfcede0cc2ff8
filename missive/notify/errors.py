"""Maps each provider's failures into Missive's permanent / transient error hierarchy."""

from __future__ import annotations

import time
from email.utils import parsedate_to_datetime

from missive.errors import (
    InvalidInput,
    InvalidRecipient,
    PermanentError,
    ProviderUnavailable,
    RateLimited,
    TransientError,
)

__all__ = [
    "FCM_INVALID_TOKEN_CODES",
    "TWILIO_INVALID_NUMBER_CODES",
    "InvalidInput",
    "InvalidRecipient",
    "PermanentError",
    "ProviderUnavailable",
    "RateLimited",
    "fcm_error",
    "parse_retry_after",
    "smtp_reply_error",
    "twilio_error",
]

FCM_INVALID_TOKEN_CODES = frozenset({"UNREGISTERED", "INVALID_ARGUMENT", "SENDER_ID_MISMATCH"})
"""FCM v1 ``errorCode`` values that mean this device token will never work again."""

TWILIO_INVALID_NUMBER_CODES = frozenset(
    {
        21211,  # invalid 'To' phone number
        21214,  # 'To' phone number cannot be reached
        21217,  # phone number does not appear to be valid
        21407,  # this phone number type does not support SMS
        21408,  # permission to send to this region is not enabled
        21610,  # the recipient replied STOP (unsubscribed)
        21612,  # the 'To' number is not reachable by this route
        21614,  # 'To' number is not a valid mobile number
    }
)
"""Twilio error codes that mean this phone number cannot receive our SMS."""


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date).

    Returns:
        The delay (never negative), or None when the header is absent or unreadable.
    """
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def fcm_error(
    status: int, body: object, *, token: str, retry_after: str | None
) -> PermanentError | TransientError:
    """The domain error for an FCM v1 ``messages:send`` error response.

    Args:
        status: HTTP status of the response.
        body: The decoded JSON body (``{"error": {"status", "message", "details"}}``),
            or anything else when the body was not JSON.
        token: The device token the message was addressed to (named in the error,
            shortened).
        retry_after: The response's ``Retry-After`` header, if any.
    """
    error = body.get("error", {}) if isinstance(body, dict) else {}
    error = error if isinstance(error, dict) else {}
    message = str(error.get("message") or f"HTTP {status}")
    raw_details = error.get("details")
    details: list[object] = raw_details if isinstance(raw_details, list) else []
    code = str(error.get("status") or "")
    fields: list[str] = []
    for detail in details:
        if not isinstance(detail, dict):
            continue
        if detail.get("@type", "").endswith("FcmError") and detail.get("errorCode"):
            code = str(detail["errorCode"])
        for violation in detail.get("fieldViolations") or []:
            if isinstance(violation, dict) and violation.get("field"):
                fields.append(str(violation["field"]))
    short = token[:12] + "..." if len(token) > 12 else token
    if status == 429 or code in {"QUOTA_EXCEEDED", "RESOURCE_EXHAUSTED"}:
        return RateLimited(
            f"FCM rate limit ({code or status}): {message}",
            retry_after=parse_retry_after(retry_after),
        )
    if status >= 500 or code in {"UNAVAILABLE", "INTERNAL"}:
        return ProviderUnavailable(f"FCM unavailable (HTTP {status} {code}): {message}")
    if status in (401, 403) and code not in FCM_INVALID_TOKEN_CODES:
        # Rejected credentials (THIRD_PARTY_AUTH_ERROR, PERMISSION_DENIED) are fixed by
        # an operator, not by the recipient: transient, so the channel falls back.
        return ProviderUnavailable(f"FCM refused our credentials (HTTP {status} {code}): {message}")
    if code == "INVALID_ARGUMENT" and any(f != "message.token" for f in fields):
        return InvalidInput(f"FCM refused the message ({', '.join(fields)}): {message}")
    if code in FCM_INVALID_TOKEN_CODES or status == 404:
        return InvalidRecipient(f"push token {short} is invalid ({code or status}): {message}")
    return InvalidInput(f"FCM refused the message (HTTP {status} {code}): {message}")


def twilio_error(
    status: int, code: int | None, message: str, *, to: str
) -> PermanentError | TransientError:
    """The domain error for a Twilio REST error (HTTP status, Twilio error code)."""
    if status == 429 or code == 20429:
        return RateLimited(f"Twilio rate limit ({code}): {message}")
    if status >= 500:
        return ProviderUnavailable(f"Twilio unavailable (HTTP {status}, code {code}): {message}")
    if status in (401, 403) and code not in TWILIO_INVALID_NUMBER_CODES:
        return ProviderUnavailable(f"Twilio refused our credentials (code {code}): {message}")
    if code in TWILIO_INVALID_NUMBER_CODES:
        return InvalidRecipient(f"phone number {to} is invalid for SMS (Twilio {code}): {message}")
    return InvalidInput(f"Twilio refused the message (HTTP {status}, code {code}): {message}")


def smtp_reply_error(
    code: int, message: str, *, stage: str, to: str
) -> PermanentError | TransientError:
    """The domain error for an SMTP reply code at a stage (``RCPT``, ``MAIL``, ``DATA``)."""
    if 400 <= code < 500 or code < 400:
        return ProviderUnavailable(f"SMTP server deferred {stage} for {to}: {code} {message}")
    if stage == "RCPT":
        return InvalidRecipient(f"email address {to} was refused: {code} {message}")
    return InvalidInput(f"SMTP server refused the email to {to} at {stage}: {code} {message}")
