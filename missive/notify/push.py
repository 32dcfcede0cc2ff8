"""PushSender: one FCM HTTP v1 message per device token, through the pyfcm client."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from google.auth.credentials import Credentials
from google.oauth2 import service_account
from pyfcm import FCMNotification
from pyfcm.errors import FCMError
from requests.adapters import HTTPAdapter

from missive.config import Settings
from missive.errors import InvalidInput, InvalidRecipient, ProviderUnavailable
from missive.notify.endpoints import fcm_endpoint
from missive.notify.errors import fcm_error

FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging"


@dataclass(frozen=True)
class PushMessage:
    """One push to one device."""

    token: str
    """The device's FCM registration token."""

    title: str | None = None
    """Notification title; None with body None sends a data-only message."""

    body: str | None = None
    """Notification text (None for e2e conversations: no content)."""

    data: dict[str, str] = field(default_factory=dict)
    """Data payload for the app (string values only, as FCM requires)."""

    collapse_key: str | None = None
    """Android collapse key / APNs collapse id: a later push with the same key
    replaces this one on the device (used to clear a push already shown)."""


class _StaticSinkCredentials(Credentials):
    """Credentials for a local sink: a fixed bearer token, no OAuth round trip."""

    def __init__(self) -> None:
        super().__init__()
        self.token = "missive-dev-sink"

    def refresh(self, request: Any) -> None:
        self.token = "missive-dev-sink"


class _SingleShotFCM(FCMNotification):
    """pyfcm's client, sending each request exactly once.

    pyfcm's own ``send_request`` sleeps through ``Retry-After`` and its adapter
    retries 502/503; here the caller's retry policy decides when to try again, so
    the response (status, headers, body) comes back untouched.
    """

    def __init__(self, *, endpoint: str, **kwargs: Any) -> None:
        super().__init__(adapter=HTTPAdapter(max_retries=0), **kwargs)
        self.FCM_END_POINT_BASE = endpoint.rstrip("/") + "/v1/projects"

    def send_request(self, payload: Any = None, timeout: Any = None) -> requests.Response:
        response = self.requests_session.post(self.fcm_end_point, data=payload, timeout=timeout)
        if self._is_access_token_expired(response):
            self.thread_local.token_expiry = 0
            response = self.requests_session.post(self.fcm_end_point, data=payload, timeout=timeout)
        return response


class PushSender:
    """Sends FCM v1 pushes; built once per process and passed in.

    pyfcm is synchronous (requests): each send runs in a worker thread, and each
    thread keeps its own HTTP session (pyfcm's thread-local session).
    """

    def __init__(
        self,
        *,
        project_id: str,
        credentials: Credentials,
        endpoint: str = "https://fcm.googleapis.com",
        timeout: float = 10.0,
    ) -> None:
        """Builds the client.

        Args:
            project_id: The Firebase project id.
            credentials: Google credentials with the firebase.messaging scope.
            endpoint: Base URL of the FCM API (a local sink in dev and tests).
            timeout: Seconds one HTTP request may take.
        """
        if not project_id:
            raise InvalidInput("FCM_PROJECT_ID is required to send push notifications")
        self._client = _SingleShotFCM(
            endpoint=endpoint, project_id=project_id, credentials=credentials
        )
        self._timeout = timeout

    @classmethod
    def from_settings(cls, settings: Settings) -> PushSender:
        """Real FCM with FCM_CREDENTIALS_FILE; otherwise the local FCM sink.

        Raises:
            InvalidInput: the credentials file is missing or unreadable, or
                FCM_ENDPOINT names the real FCM without credentials.
        """
        endpoint = fcm_endpoint(settings)
        credentials: Credentials
        if settings.fcm_credentials_file is not None:
            credentials = load_service_account(settings.fcm_credentials_file)
        elif "googleapis.com" in endpoint:
            raise InvalidInput(f"FCM_CREDENTIALS_FILE is required to send through {endpoint}")
        else:
            credentials = _StaticSinkCredentials()
        return cls(project_id=settings.fcm_project_id, credentials=credentials, endpoint=endpoint)

    async def send(self, message: PushMessage) -> str:
        """Sends one push.

        Returns:
            FCM's message name (``projects/<id>/messages/<id>``).

        Raises:
            InvalidRecipient: the token is unregistered or invalid (delete it).
            RateLimited: FCM asked us to slow down (``retry_after`` from Retry-After).
            ProviderUnavailable: FCM or its OAuth server failed, timed out or
                refused our credentials.
            InvalidInput: FCM refused the message itself.
        """
        if not message.token or not message.token.strip():
            raise InvalidRecipient("push token is empty")
        return await asyncio.to_thread(self._send_blocking, message)

    def _send_blocking(self, message: PushMessage) -> str:
        client = self._client
        android: dict[str, Any] | None = None
        apns: dict[str, Any] | None = None
        if message.collapse_key:
            android = {"collapse_key": message.collapse_key}
            apns = {"headers": {"apns-collapse-id": message.collapse_key}}
        try:
            payload = client.parse_payload(
                fcm_token=message.token,
                notification_title=message.title,
                notification_body=message.body,
                data_payload=dict(message.data) or None,
                android_config=android,
                apns_config=apns,
            )
            response = client.send_request(payload, self._timeout)
        except FCMError as err:
            # pyfcm wraps a failed OAuth token refresh in InvalidDataError.
            raise ProviderUnavailable(f"FCM credentials could not be refreshed: {err}") from err
        except requests.RequestException as err:
            raise ProviderUnavailable(f"FCM did not answer: {type(err).__name__}: {err}") from err
        if response.status_code == 200:
            try:
                return str(response.json()["name"])
            except (ValueError, KeyError, TypeError) as err:
                raise ProviderUnavailable("FCM answered 200 without a message name") from err
        try:
            body: object = response.json()
        except ValueError:
            body = None
        raise fcm_error(
            response.status_code,
            body,
            token=message.token,
            retry_after=response.headers.get("Retry-After"),
        )


def load_service_account(path: Path) -> Credentials:
    """Reads a Google service-account JSON file, scoped for FCM.

    Raises:
        InvalidInput: naming the file and what is wrong with it.
    """
    try:
        info = json.loads(Path(path).read_text())
        return service_account.Credentials.from_service_account_info(info, scopes=[FCM_SCOPE])
    except OSError as err:
        raise InvalidInput(f"FCM_CREDENTIALS_FILE {path}: cannot be read ({err})") from err
    except ValueError as err:
        raise InvalidInput(f"FCM_CREDENTIALS_FILE {path}: not a service account ({err})") from err
