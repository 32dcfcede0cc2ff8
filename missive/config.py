"""Settings read from the environment (pydantic-settings); each one is in the README."""

from __future__ import annotations

import base64
from functools import cached_property
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from missive.constants import TASK_QUEUE_SEARCH
from missive.errors import InvalidInput
from missive.validation import (
    MAX_LIFECYCLE_WINDOW_SECONDS,
    MAX_NOTIFY_SECONDS,
    MAX_RECEIPT_DETAIL_RECIPIENTS,
)


def parse_keyring(spec: str, *, name: str) -> dict[int, bytes]:
    """Parses ``"1:<base64 32 bytes>,2:<...>"`` into ``{version: key}``.

    Raises:
        InvalidInput: naming the setting and the bad entry.
    """
    ring: dict[int, bytes] = {}
    for raw in (part.strip() for part in spec.split(",")):
        if not raw:
            continue
        version, sep, encoded = raw.partition(":")
        if not sep or not version.isdigit():
            raise InvalidInput(f"{name}: entry {version!r} is not '<version>:<base64 key>'")
        try:
            key = base64.b64decode(encoded, validate=True)
        except ValueError as err:
            raise InvalidInput(f"{name}: key version {version} is not valid base64") from err
        if len(key) != 32:
            raise InvalidInput(f"{name}: key version {version} must be 32 bytes, got {len(key)}")
        ring[int(version)] = key
    return ring


class Settings(BaseSettings):
    """Everything a Missive process reads from its environment.

    Field names are the environment variable names (case-insensitive).
    """

    model_config = SettingsConfigDict(env_file=None, extra="ignore", frozen=True)

    database_url: str | None = None
    """PostgreSQL URL (``postgresql+asyncpg://...``). Unset: the dev command
    starts an embedded PostgreSQL; the worker and gateway require it."""

    temporal_address: str = "localhost:7233"
    """host:port of the Temporal frontend."""

    temporal_namespace: str = "default"
    """Temporal namespace for every workflow."""

    redis_url: str | None = None
    """Redis URL for Socket.IO's cross-process manager. Unset: PostgreSQL
    LISTEN/NOTIFY carries broadcasts between processes instead."""

    master_keys: str = ""
    """Key-encryption keys, ``"<version>:<base64 32 bytes>,..."``; they wrap each
    conversation's data key. Required."""

    master_key_version: int | None = None
    """Which master key wraps new data keys; default the highest version."""

    codec_keys: str = ""
    """Payload-codec keys for Temporal payloads, same format as master_keys.
    Required unless ALLOW_PLAINTEXT_PAYLOADS (the dev command always sets them)."""

    codec_key_version: int | None = None
    """Which codec key encodes new payloads; default the highest version."""

    allow_plaintext_payloads: bool = False
    """Let a process without CODEC_KEYS start anyway, its Temporal payloads (message
    bodies among them) in clear. False: the worker, the gateway and the starter
    refuse to start without CODEC_KEYS."""

    gateway_secret: str = ""
    """HMAC key that signs gateway connection tokens. Required by the gateway
    and by whoever issues tokens."""

    gateway_host: str = "127.0.0.1"
    """Interface the Socket.IO gateway listens on."""

    gateway_port: int = 8800
    """Port of the Socket.IO gateway."""

    gateway_cors_origins: str = ""
    """Comma-separated origins allowed to open a socket from a browser (``*`` for
    any). Empty: only the gateway's own origin."""

    gateway_token_ttl_seconds: int = 3600
    """Lifetime of a token issued by ``python -m starter token``."""

    gateway_max_message_bytes: int = Field(default=1_000_000, gt=0)
    """Largest WebSocket message (or polling request body) the gateway reads; a larger
    event is answered InvalidInput, a larger connect packet connect_error."""

    gateway_ws_compression: bool = True
    """Negotiate permessage-deflate on WebSockets: a catch-up page is a third of its size
    on a phone's network, for CPU on both ends (see the README's catch-up benchmark)."""

    max_body_bytes: int = Field(default=16_384, gt=0)
    """Largest message body accepted, in UTF-8 bytes."""

    message_edit_window_seconds: float = Field(default=0, ge=0)
    """How long after sending its sender may edit a message; 0 (the default) for always,
    as Slack and Zulip allow by default (a deployment that wants WhatsApp's 15 minutes
    sets 900). Deletes have no window."""

    lifecycle_window_seconds: int = Field(default=86_400, gt=0, le=MAX_LIFECYCLE_WINDOW_SECONDS)
    """How long a message's lifecycle follows receipts before it ends unread."""

    receipt_detail_max_recipients: int = Field(default=32, ge=0, le=MAX_RECEIPT_DETAIL_RECIPIENTS)
    """Up to this many recipients, the lifecycle workflow is told of every
    receipt and its query shows each recipient; above it (large groups) it is
    told only of milestones (all delivered, all read), keeping history small."""

    # --- the gateway under real client traffic: receipts, limits, admission ---
    receipt_batch_window_ms: int = Field(default=40, ge=0, le=1_000)
    """The gateway's receipt batcher writes a batch this long after its oldest
    receipt arrived, for others to join it (then one statement applies them all;
    while a batch is being written, the next one gathers anyway). 40 ms rather than 10: in
    6-member groups the bigger batches cost a tenth less CPU per message and the
    sends' p50 while receipts flow was 1.25-1.43x the p50 without instead of
    1.53-1.83x (bench/chat_mix.py), for acks about 30 ms later that no reader sees."""

    receipt_batch_max: int = Field(default=2_000, gt=0, le=50_000)
    """Most receipts one batch applies."""

    receipt_queue_max: int = Field(default=20_000, gt=0)
    """Receipts waiting for a batch in one gateway process; past it a receipt is
    answered ProviderUnavailable at once (send it again after retry_after_ms)."""

    receipt_signal_window_ms: int = Field(default=3_000, ge=0, le=60_000)
    """How long the gateway gathers one lifecycle's receipt changes before it
    signals them (all in one signal); a change that makes everyone have read
    it is signalled at once. A delivered and a read receipt of the same message
    within this window cost the lifecycle one workflow task, not two; so does a
    recipient whose phone drops off for a moment and reads on coming back (with
    1 s, in 6-member groups where one member a second dropped off for 1 s, each
    lifecycle took 1.79 signals and 2.79 workflow tasks; with 3 s, 1.00 and 2.02).
    The price: ``status`` shows partial progress up to this late."""

    send_rate_per_second: float = Field(default=5.0, gt=0)
    """Messages per second a user may send through the gateways, sustained (the
    token bucket's refill rate, shared by every gateway process): a person typing
    never meets it; a script or a stuck client does."""

    send_burst: int = Field(default=10, ge=1)
    """Messages a user may send at once before the rate applies (the bucket's size):
    a pasted list, a few quick replies."""

    send_max_in_flight_per_socket: int = Field(default=4, ge=1)
    """Sends one socket may have waiting for their ack; past it RateLimited at once
    (a client that waits for acks never has more than a few in flight)."""

    gateway_max_events_per_socket: int = Field(default=16, ge=1)
    """Events of one socket being handled at once; past it the gateway reads no
    further from that socket until one is answered (a flooding client waits on its
    own connection instead of delaying everyone else's events)."""

    gateway_socket_events_per_second: float = Field(default=100.0, gt=0)
    """Events per second the gateway reads from one socket, sustained (sends,
    receipts and the rest; an app in a busy group acks a few dozen a second); a
    socket sending faster is read at this pace, so it slows only itself. Every
    Socket.IO packet counts, a malformed one as much as an event."""

    gateway_socket_events_burst: int = Field(default=200, ge=1)
    """Events one socket may send at once before that pace applies."""

    gateway_socket_refusals_per_second: float = Field(default=500.0, ge=0)
    """Events past a socket's pace that are answered RateLimited at once, from their
    header (nothing decoded or done), instead of waiting to be read: a flooding
    client hears "slow down" in milliseconds. Past this too, the socket is paced."""

    gateway_socket_refusals_burst: int = Field(default=1_000, ge=0)
    """Refusals one socket may get at once before their pace applies (0: none; every
    event past the pace waits to be read)."""

    gateway_max_in_flight: int = Field(default=512, ge=1)
    """Sends and other workflow calls one gateway process has in flight; past it
    ProviderUnavailable at once (nothing started), so an overloaded gateway answers
    in milliseconds rather than holding sockets until a timeout."""

    gateway_ack_timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    """Longest an event waits for its answer before acking Timeout (the send may
    still be stored: sending it again with the same client_message_id is safe)."""

    workflow_sandbox: bool = False
    """Run workflows in the SDK's sandbox in the worker and the gateway. Off by
    default: on the send path the sandbox costs about a third of the gateway's
    throughput (bench/send_latency.py). The tests always run every workflow in
    the sandbox, so a non-deterministic call still fails CI."""

    graceful_shutdown_seconds: float = Field(default=20.0, gt=0)
    """How long SIGTERM/SIGINT lets in-flight activities finish."""

    data_dir: Path = Path(".missive")
    """Where the dev command keeps Temporal's and PostgreSQL's state and keys."""

    log_level: str = "INFO"
    """Python logging level for every process."""

    # --- encryption: codec server, key rotation, e2e ---
    codec_server_host: str = "127.0.0.1"
    """Interface the codec server (``python -m codec_server``) listens on."""

    codec_server_port: int = 8234
    """Port of the codec server."""

    codec_server_token: str = ""
    """Bearer token every /encode and /decode request must carry. Required by
    the codec server; ``dev.py`` generates one into ``.missive/keys.env``."""

    codec_server_cors_origins: str = "http://127.0.0.1:8233,http://localhost:8233"
    """Comma-separated browser origins (the Temporal Web UI) allowed to call the
    codec server; ``*`` for any."""

    # --- batch and retention ---
    batch_chunk_size: int = Field(default=2_000, gt=0, le=50_000)
    """Items per chunk activity of a batch (each chunk is one activity)."""

    batch_max_concurrent_chunks: int = Field(default=4, gt=0, le=64)
    """Chunks of one batch running at once (the sliding window)."""

    batch_failure_threshold: float = Field(default=0.0, ge=0.0, le=1.0)
    """Default share of a batch's items that may fail permanently before the
    whole batch fails (0: any failed item fails the batch, at its end)."""

    batch_report_limit: int = Field(default=100, gt=0)
    """How many failed items (line number and reason) a batch report lists."""

    retention_default_days: int | None = Field(default=None, gt=0)
    """Retention of conversations whose retention_days is NULL. Unset: they
    keep their messages forever."""

    retention_restore_window_days: int = Field(default=30, gt=0)
    """How long archived (expired) messages can be restored before they are purged."""

    retention_chunk_size: int = Field(default=5_000, gt=0, le=100_000)
    """Messages moved or purged per transaction by the cleanup workflow."""

    retention_schedule_cron: str = "17 3 * * *"
    """When the missive-retention Schedule runs the cleanup (cron, UTC)."""

    retention_schedule_on_start: bool = True
    """Whether ``python worker.py`` creates the missive-retention Schedule
    (idempotent: an existing one is left as it is)."""

    # --- search ---
    typesense_url: str | None = None
    """Typesense URL (``http://host:8108``). Unset: search is off in the worker and
    the gateway (``dev.py`` starts an embedded Typesense and sets it)."""

    typesense_api_key: str = ""
    """Typesense admin API key; the worker creates the collection and the parent
    search-only key with it. Required when TYPESENSE_URL is set."""

    typesense_collection: str = "missive_messages"
    """The alias searches go through; it points at ``<alias>_v<N>`` collections,
    so a rebuild fills a new one and swaps the alias."""

    search_key_ttl_seconds: int = Field(default=60, gt=0)
    """Lifetime of a per-user scoped search key."""

    search_batch_size: int = Field(default=500, gt=0, le=10_000)
    """Most messages the indexer sends to Typesense in one import."""

    search_task_queue: str = TASK_QUEUE_SEARCH
    """Task queue of the search indexer, rebuild, check and key workflows."""

    # --- operations: metrics, tracing, search attributes ---
    metrics_host: str = "127.0.0.1"
    """Interface the worker's metrics endpoints and every SDK metrics endpoint bind to."""

    metrics_port: int | None = Field(default=None, gt=0, lt=65_536)
    """Port where ``worker.py`` serves the project's Prometheus metrics
    (``/metrics``). Unset: off. The gateway's: GATEWAY_METRICS_PORT."""

    sdk_metrics_port: int | None = Field(default=None, gt=0, lt=65_536)
    """Port where ``worker.py`` serves the Temporal SDK's Prometheus metrics
    (task latencies, failures, slots). Unset: off."""

    gateway_metrics_port: int | None = Field(default=None, gt=0, lt=65_536)
    """Port where the gateway serves the project's metrics (``/metrics``) on its own
    listener at METRICS_HOST (default loopback). Unset: off."""

    gateway_metrics_token: str = ""
    """Bearer token for ``/metrics`` on the gateway's public port. Empty: the public
    port answers ``/metrics`` with 404 (use GATEWAY_METRICS_PORT)."""

    gateway_sdk_metrics_port: int | None = Field(default=None, gt=0, lt=65_536)
    """Port where the gateway serves the Temporal SDK's Prometheus metrics; a
    setting of its own so a worker and a gateway on one host do not collide. Unset: off."""

    otel_exporter_otlp_endpoint: str | None = None
    """OTLP/HTTP collector URL (``http://host:4318``): when set, the worker, the
    gateway and the starter trace workflows and activities through the SDK's
    OpenTelemetry interceptor (needs ``pip install -e '.[otel]'``). Unset: off."""

    workflow_search_attributes: bool = True
    """Set MissiveKind / MissiveConversationId on the workflows Missive starts.
    They must be registered on the namespace (``dev.py`` and the tests do; on a
    cluster see the README); switch off where they are not."""

    # --- notifications ---
    fcm_project_id: str = "missive-dev"
    """Firebase project id that pushes are sent for."""

    fcm_credentials_file: Path | None = None
    """Google service-account JSON file for FCM. Unset: pushes go to the local
    FCM sink (FCM_ENDPOINT's default), never to Google."""

    fcm_endpoint: str | None = None
    """Base URL of the FCM HTTP v1 API. Unset: https://fcm.googleapis.com when
    FCM_CREDENTIALS_FILE is set, else the dev FCM sink http://127.0.0.1:8791."""

    smtp_host: str | None = None
    """SMTP server for notification emails. Unset: the dev SMTP sink at
    127.0.0.1:8025 (and ``starter health`` does not check SMTP)."""

    smtp_port: int = Field(default=25, gt=0, lt=65536)
    """Port of SMTP_HOST (ignored while SMTP_HOST is unset)."""

    smtp_username: str | None = None
    """SMTP login; unset: no AUTH."""

    smtp_password: str | None = None
    """SMTP password."""

    smtp_starttls: bool = False
    """Upgrade the SMTP connection with STARTTLS (the server must offer it)."""

    email_from: str = "Missive <notifications@missive.localhost>"
    """From header of notification emails; its domain is also the Message-ID's."""

    twilio_account_sid: str = "ACmissivedev"
    """Twilio account SID (any value for the dev sink)."""

    twilio_auth_token: str = ""
    """Twilio auth token. Unset: SMS go to the local Twilio sink, never to Twilio."""

    twilio_from: str = "+15005550006"
    """Sending number (E.164) or messaging service SID (MG...)."""

    twilio_base_url: str | None = None
    """Base URL of the Twilio REST API. Unset: https://api.twilio.com when
    TWILIO_AUTH_TOKEN is set, else the dev Twilio sink http://127.0.0.1:8792."""

    notify_enabled: bool = True
    """Whether each new message's lifecycle notifies its recipients (the sender's
    setting, carried in the send); a worker with it off serves no notification queues."""

    notify_grace_seconds: int = Field(default=60, ge=0, le=MAX_NOTIFY_SECONDS)
    """Push goes to a recipient whose delivery is still not "delivered" this long
    after the message (in-app notifications are created at once)."""

    notify_email_delay_seconds: int = Field(default=900, ge=0, le=MAX_NOTIFY_SECONDS)
    """An email digest goes to a recipient who has still not read the message
    this long after it."""

    notify_sms_delay_seconds: int = Field(default=3_600, ge=0, le=MAX_NOTIFY_SECONDS)
    """An SMS digest goes to a recipient who opted in to SMS and has still not
    read the message this long after it."""

    notify_digest_window_seconds: int = Field(default=300, ge=0, le=MAX_NOTIFY_SECONDS)
    """An email or SMS digest gathers a recipient's messages for this long after
    the first one, then sends one notification for all still unread."""

    notify_push_deadline_seconds: int = Field(default=600, gt=0, le=MAX_NOTIFY_SECONDS)
    """Push retries transient FCM failures this long, then falls back to email."""

    notify_email_deadline_seconds: int = Field(default=1_800, gt=0, le=MAX_NOTIFY_SECONDS)
    """Email retries transient SMTP failures this long, then falls back to SMS."""

    notify_sms_deadline_seconds: int = Field(default=1_800, gt=0, le=MAX_NOTIFY_SECONDS)
    """SMS retries transient Twilio failures this long, then gives up (recorded)."""

    notify_push_per_second: float = Field(default=500.0, gt=0)
    """Most push notifications per second this deployment sends, across every worker
    (the account's quota; a notification goes to each of its recipient's devices)."""

    notify_email_per_second: float = Field(default=20.0, gt=0)
    """Most emails per second handed to the SMTP server, across every worker."""

    notify_sms_per_second: float = Field(default=1.0, gt=0)
    """Most SMS per second across every worker (Twilio allows 1/s per long-code number
    by default)."""

    notify_push_batch_size: int = Field(default=100, gt=0, le=1_000)
    """Most push notifications one send activity takes (a large group's message is
    split into activities of this many). The quota is counted in notifications, not
    activities (missive/notify/quota.py)."""

    notify_overdue_seconds: int = Field(default=3_600, gt=0)
    """A notification row still open (pending, queued, sending) this long after its
    due time is overdue: ``starter stuck`` lists it and the worker's
    ``missive_notifications_overdue`` gauge counts it. Longer than a channel's
    deadline plus the digest window, so a row waiting out a provider outage is not."""

    notify_overdue_check_seconds: float = Field(default=30.0, gt=0)
    """How often the worker counts overdue notification rows for its metrics."""

    @field_validator("database_url")
    @classmethod
    def _asyncpg_driver(cls, value: str | None) -> str | None:
        if value and value.startswith(("postgresql://", "postgres://")):
            return "postgresql+asyncpg://" + value.split("://", 1)[1]
        return value

    @cached_property
    def master_keyring(self) -> dict[int, bytes]:
        """master_keys parsed into ``{version: key}``."""
        return parse_keyring(self.master_keys, name="MASTER_KEYS")

    @cached_property
    def codec_keyring(self) -> dict[int, bytes]:
        """codec_keys parsed into ``{version: key}``."""
        return parse_keyring(self.codec_keys, name="CODEC_KEYS")

    @property
    def cors_origins(self) -> list[str] | str | None:
        """gateway_cors_origins as python-socketio takes it.

        None keeps its same-origin default (an empty list would switch the check off).
        """
        origins = [o.strip() for o in self.gateway_cors_origins.split(",") if o.strip()]
        if not origins:
            return None
        return "*" if origins == ["*"] else origins

    def require_payload_codec(self) -> None:
        """Refuses plaintext Temporal payloads unless ALLOW_PLAINTEXT_PAYLOADS says so.

        Raises:
            InvalidInput: CODEC_KEYS is not set and ALLOW_PLAINTEXT_PAYLOADS is not true.
        """
        if not self.codec_keys and not self.allow_plaintext_payloads:
            raise InvalidInput(
                "CODEC_KEYS is not set: Temporal payloads (message bodies) would be stored "
                "in clear; set CODEC_KEYS, or ALLOW_PLAINTEXT_PAYLOADS=true to allow that"
            )

    def require_database_url(self) -> str:
        """The database URL, or a clear error when it is unset."""
        if not self.database_url:
            raise InvalidInput("DATABASE_URL is not set")
        return self.database_url
