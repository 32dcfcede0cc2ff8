"""Where each channel sends: the real provider with credentials, the local dev sink without."""

from __future__ import annotations

from missive.config import Settings

DEV_FCM_SINK_URL = "http://127.0.0.1:8791"
"""Where the dev command's FCM sink listens."""

DEV_TWILIO_SINK_URL = "http://127.0.0.1:8792"
"""Where the dev command's Twilio sink listens."""

DEV_SMTP_SINK = ("127.0.0.1", 8025)
"""Where the dev command's SMTP sink listens (aiosmtpd's default port)."""

FCM_URL = "https://fcm.googleapis.com"
TWILIO_URL = "https://api.twilio.com"


def fcm_endpoint(settings: Settings) -> str:
    """FCM_ENDPOINT if set; else real FCM with credentials, the dev sink without."""
    if settings.fcm_endpoint:
        return settings.fcm_endpoint
    return FCM_URL if settings.fcm_credentials_file is not None else DEV_FCM_SINK_URL


def twilio_base_url(settings: Settings) -> str:
    """TWILIO_BASE_URL if set; else real Twilio with an auth token, the dev sink without."""
    if settings.twilio_base_url:
        return settings.twilio_base_url
    return TWILIO_URL if settings.twilio_auth_token else DEV_TWILIO_SINK_URL


def smtp_server(settings: Settings) -> tuple[str, int]:
    """(SMTP_HOST, SMTP_PORT) if SMTP_HOST is set; else the dev SMTP sink."""
    if settings.smtp_host:
        return settings.smtp_host, settings.smtp_port
    return DEV_SMTP_SINK
