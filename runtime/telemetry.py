"""Per-process telemetry: the SDK runtime with Prometheus, project metrics, tracing interceptors."""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import start_http_server
from temporalio.client import Interceptor
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

from missive.config import Settings
from missive.errors import InvalidInput, ProviderUnavailable
from missive.metrics import CONTENT_TYPE, Metrics

log = logging.getLogger("missive.telemetry")

OTEL_EXTRA_HINT = "pip install -e '.[otel]'"


@dataclass
class Telemetry:
    """What one process hands to ``runtime.client.connect`` and its activities."""

    metrics: Metrics
    """The project's metrics of this process."""
    runtime: Runtime | None = None
    """The SDK runtime exporting the SDK's metrics, or None for the default runtime."""
    interceptors: list[Interceptor] = field(default_factory=list)
    """Client (and so worker) interceptors: the tracing one when configured."""


def sdk_runtime(settings: Settings, port: int | None) -> Runtime | None:
    """A Temporal runtime serving the SDK's Prometheus metrics on ``port``; None when unset.

    Raises:
        ProviderUnavailable: the port cannot be bound (the message names it).
    """
    if port is None:
        return None
    address = f"{settings.metrics_host}:{port}"
    try:
        return Runtime(
            telemetry=TelemetryConfig(
                metrics=PrometheusConfig(bind_address=address, counters_total_suffix=False)
            )
        )
    except Exception as err:  # the core SDK reports a bind failure as a plain exception
        reason = str(err).splitlines()[0][:160]
        raise ProviderUnavailable(f"cannot serve SDK metrics on {address}: {reason}") from None


def serve_metrics(settings: Settings, metrics: Metrics, port: int, stack: AsyncExitStack) -> None:
    """Serves ``metrics`` at ``http://<METRICS_HOST>:<port>/metrics`` until ``stack`` closes.

    Raises:
        ProviderUnavailable: the port cannot be bound (the message names it).
    """
    try:
        server, thread = start_http_server(
            port, addr=settings.metrics_host, registry=metrics.registry
        )
    except OSError as err:
        raise ProviderUnavailable(
            f"cannot serve metrics on {settings.metrics_host}:{port}: {err.strerror or err}"
        ) from None

    async def _stop() -> None:
        server.shutdown()
        server.server_close()
        await asyncio.to_thread(thread.join, 5)

    stack.push_async_callback(_stop)


def public_metrics(
    settings: Settings, metrics: Metrics, scope: Mapping[str, Any]
) -> tuple[int, bytes, bytes]:
    """The gateway's answer to ``GET /metrics`` on its public port: (status, body, type).

    404 unless GATEWAY_METRICS_TOKEN is set (the metrics then live on their own
    listener, GATEWAY_METRICS_PORT on METRICS_HOST); 401 without the bearer token.
    """
    token = settings.gateway_metrics_token
    if not token:
        return 404, b'{"status": "not found"}', b"application/json"
    sent = b""
    for name, value in scope.get("headers", ()):
        if name.lower() == b"authorization":
            scheme, _, credential = bytes(value).partition(b" ")
            if scheme.lower() == b"bearer":
                sent = credential.strip()
    if not hmac.compare_digest(sent, token.encode()):
        return 401, b'{"status": "a bearer token is required"}', b"application/json"
    return 200, metrics.render(), CONTENT_TYPE.encode()


def tracing_interceptors(
    settings: Settings,
    *,
    service: str,
    stack: AsyncExitStack | None = None,
    tracer_provider: Any = None,
) -> list[Interceptor]:
    """The SDK's OpenTelemetry interceptor, when OTEL_EXPORTER_OTLP_ENDPOINT is set.

    Args:
        settings: OTEL_EXPORTER_OTLP_ENDPOINT switches tracing on.
        service: The ``service.name`` of this process's spans.
        stack: Flushes and shuts the exporter down when it closes.
        tracer_provider: A ready ``TracerProvider`` (tests pass one with an
            in-memory exporter); it is used whether or not the endpoint is set.

    Raises:
        InvalidInput: tracing is configured but the OpenTelemetry packages are
            not installed (the message says how to install them).
    """
    if tracer_provider is None and not settings.otel_exporter_otlp_endpoint:
        return []
    try:
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from temporalio.contrib.opentelemetry import TracingInterceptor
    except ImportError as err:
        raise InvalidInput(
            "OTEL_EXPORTER_OTLP_ENDPOINT is set but OpenTelemetry is not installed "
            f"({err.name or err}): {OTEL_EXTRA_HINT}"
        ) from None
    provider = tracer_provider
    if provider is None:
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError as err:
            raise InvalidInput(
                "OTEL_EXPORTER_OTLP_ENDPOINT is set but the OTLP exporter is not installed "
                f"({err.name or err}): {OTEL_EXTRA_HINT}"
            ) from None
        endpoint = str(settings.otel_exporter_otlp_endpoint).rstrip("/")
        provider = TracerProvider(
            resource=Resource.create({SERVICE_NAME: service}), shutdown_on_exit=stack is None
        )
        provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces"))
        )
        if stack is not None:
            stack.callback(provider.shutdown)
        log.info("tracing to %s as %s", endpoint, service)
    return [TracingInterceptor(provider.get_tracer("missive"))]


def open_telemetry(
    settings: Settings,
    stack: AsyncExitStack,
    *,
    service: str,
    sdk_metrics_port: int | None,
    metrics_port: int | None = None,
    metrics: Metrics | None = None,
) -> Telemetry:
    """Builds this process's telemetry once: metrics (served when a port is given),
    the SDK runtime and the tracing interceptors.

    Raises:
        ProviderUnavailable: a metrics port cannot be bound.
        InvalidInput: tracing is configured but its packages are missing.
    """
    interceptors = tracing_interceptors(settings, service=service, stack=stack)
    metrics = metrics if metrics is not None else Metrics()
    runtime = sdk_runtime(settings, sdk_metrics_port)
    if metrics_port is not None:
        serve_metrics(settings, metrics, metrics_port, stack)
    return Telemetry(metrics=metrics, runtime=runtime, interceptors=interceptors)
