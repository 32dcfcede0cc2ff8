"""Metrics and tracing after real work: the worker's and the gateway's endpoints, OTel spans."""

from __future__ import annotations

import asyncio
import socket
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from typing import Any

import aiohttp
import pytest
import socketio
import uvicorn
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from gateway import create_app
from missive.config import Settings
from missive.constants import EVENT_MESSAGE_NEW, EVENT_MESSAGE_READ, EVENT_MESSAGE_SEND
from missive.errors import InvalidInput, NotAMember
from missive.metrics import Metrics
from missive.models import ConversationKind
from missive.services.directory import NewUser
from missive.tokens import issue_token
from runtime.client import connect
from runtime.process import run_process
from runtime.telemetry import tracing_interceptors
from runtime.wiring import WORKFLOWS, Core, activity_methods, message_activities
from starter.client import MissiveClient
from tests.conftest import ROOT, base_settings, free_port, process_env
from worker import run_worker

pytestmark = pytest.mark.integration

WAIT = 30.0
"""Upper bound for counts to show up; the work itself takes milliseconds."""


def _address(dev_env: WorkflowEnvironment) -> str:
    return dev_env.client.service_client.config.target_host


async def _people(core: Core, n: int) -> list[str]:
    return [
        await core.directory.create_user(NewUser(handle=f"m{i}-{uuid.uuid4().hex[:6]}"))
        for i in range(n)
    ]


async def _scrape(url: str) -> str:
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        assert response.status == 200, url
        return await response.text()


def _sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in a Prometheus exposition (0 when absent)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


async def _until(url: str, check: Callable[[str], bool]) -> str:
    """Scrapes ``url`` until ``check`` holds (counts land just after the acks)."""
    text = ""
    async with asyncio.timeout(WAIT):
        while True:
            try:
                text = await _scrape(url)
            except aiohttp.ClientError:
                text = ""
            if text and check(text):
                return text
            await asyncio.sleep(0.2)


def _project_counts(text: str) -> dict[str, float]:
    return {
        "created": _sample(text, "missive_messages_persisted_total", outcome="created"),
        "duplicate": _sample(text, "missive_messages_persisted_total", outcome="duplicate"),
        "message:new": _sample(text, "missive_broadcasts_total", event=EVENT_MESSAGE_NEW),
        "message:receipt": _sample(text, "missive_broadcasts_total", event="message:receipt"),
        "receipts read": _sample(text, "missive_receipts_applied_total", status="read"),
        "moved read": _sample(text, "missive_deliveries_moved_total", status="read"),
        "NotAMember": _sample(
            text, "missive_refusals_total", activity="persist_message", error="NotAMember"
        ),
    }


async def test_worker_serves_project_and_sdk_metrics_after_real_work(
    settings: Settings, core: Core, dev_env: WorkflowEnvironment
) -> None:
    ana, ben, outsider = await _people(core, 3)
    conversation = await core.directory.create_conversation(
        kind=ConversationKind.GROUP, members=[ana, ben]
    )
    metrics_port, sdk_port = free_port(), free_port()
    worker = await asyncio.create_subprocess_exec(
        sys.executable,
        "worker.py",
        cwd=ROOT,
        env=process_env(
            DATABASE_URL=str(settings.database_url),
            TEMPORAL_ADDRESS=_address(dev_env),
            METRICS_PORT=str(metrics_port),
            SDK_METRICS_PORT=str(sdk_port),
            RETENTION_SCHEDULE_ON_START="false",
            LOG_LEVEL="WARNING",
        ),
    )
    try:
        missive = MissiveClient(dev_env.client, settings)
        first = await missive.send(conversation, ana, "c-1", "one")
        await missive.send(conversation, ana, "c-2", "two")
        # A resend while the lifecycle runs joins it: nothing is persisted again.
        assert (await missive.send(conversation, ana, "c-1", "one")).seq == first.seq
        with pytest.raises(NotAMember):
            await missive.send(conversation, outsider, "c-3", "not mine")
        read = await missive.mark_read(ben, conversation, up_to_seq=2)
        assert read.changed == 2

        project = f"http://127.0.0.1:{metrics_port}/metrics"
        expected = {
            "created": 2.0,
            "duplicate": 0.0,
            "message:new": 2.0,
            "message:receipt": 2.0,
            "receipts read": 1.0,
            "moved read": 2.0,
            "NotAMember": 1.0,
        }
        try:
            await _until(project, lambda text: _project_counts(text) == expected)
        except TimeoutError:
            assert _project_counts(await _scrape(project)) == expected
        sdk = await _until(
            f"http://127.0.0.1:{sdk_port}/metrics",
            lambda text: "temporal_workflow_completed" in text,
        )
        assert "temporal_request" in sdk
        assert "temporal_activity_execution_latency" in sdk or "local_activity" in sdk
    finally:
        worker.terminate()
        assert await asyncio.wait_for(worker.wait(), 60) == 0


@pytest.fixture
async def gateway_url(
    settings: Settings, dev_env: WorkflowEnvironment
) -> AsyncIterator[tuple[str, int, int]]:
    """The gateway under uvicorn with its metrics and the SDK's on ports of their own."""
    sdk_port, metrics_port = free_port(), free_port()
    app = create_app(
        base_settings(
            database_url=settings.database_url,
            temporal_address=_address(dev_env),
            graceful_shutdown_seconds=2,
            gateway_sdk_metrics_port=sdk_port,
            gateway_metrics_port=metrics_port,
        )
    )
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, lifespan="on", log_config=None, access_log=False))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(60):
            while not server.started:
                assert not task.done(), app.startup_error
                await asyncio.sleep(0.02)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", sdk_port, metrics_port
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 60)
        sock.close()


async def test_gateway_serves_metrics_after_sends_and_a_receipt(
    settings: Settings, core: Core, gateway_url: tuple[str, int, int]
) -> None:
    url, sdk_port, metrics_port = gateway_url
    ana, ben = await _people(core, 2)
    conversation = await core.directory.create_conversation(
        kind=ConversationKind.GROUP, members=[ana, ben]
    )
    async with AsyncExitStack() as stack:

        async def connected(user: str) -> socketio.AsyncClient:
            client = socketio.AsyncClient(reconnection=False)
            token = issue_token(settings.gateway_secret, user, ttl_seconds=60)
            await client.connect(url, auth={"token": token}, transports=["websocket"])
            stack.push_async_callback(client.disconnect)
            return client

        sender, reader = await connected(ana), await connected(ben)
        for number in (1, 2):
            send = {"conversation_id": conversation, "client_message_id": f"g-{number}"}
            ack = await sender.call(EVENT_MESSAGE_SEND, {**send, "body": f"hi {number}"})
            assert ack["ok"] is True, ack
        ack = await reader.call(
            EVENT_MESSAGE_READ, {"conversation_id": conversation, "up_to_seq": 2}
        )
        assert ack == {"ok": True, "changed": 2, "up_to_seq": 2}

    def done(text: str) -> bool:
        counts = _project_counts(text)
        return counts["created"] == 2 and counts["moved read"] == 2

    text = await _until(f"http://127.0.0.1:{metrics_port}/metrics", done)
    counts = _project_counts(text)
    async with aiohttp.ClientSession() as http, http.get(f"{url}/metrics") as response:
        assert response.status == 404  # not on the public socket port
    assert (counts["message:new"], counts["receipts read"], counts["duplicate"]) == (2, 1, 0)
    sdk = await _until(
        f"http://127.0.0.1:{sdk_port}/metrics", lambda t: "temporal_workflow_completed" in t
    )
    assert "temporal_request" in sdk


async def test_tracing_interceptor_records_a_lifecycle_and_its_activities(
    settings: Settings, core: Core, dev_env: WorkflowEnvironment
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    traced = base_settings(database_url=settings.database_url, temporal_address=_address(dev_env))
    interceptors = tracing_interceptors(traced, service="test", tracer_provider=provider)
    client = await connect(traced, interceptors=interceptors)
    ana, ben = await _people(core, 2)
    conversation = await core.directory.create_conversation(
        kind=ConversationKind.GROUP, members=[ana, ben]
    )
    broadcast = asyncio.Event()

    class Recorder:
        async def emit(self, event: str, data: Any, *, room: str | None = None) -> None:
            if event == EVENT_MESSAGE_NEW:
                broadcast.set()

    metrics = Metrics()
    acts = message_activities(core, Recorder(), metrics=metrics)
    async with Worker(
        client,
        task_queue="missive-messages",
        workflows=WORKFLOWS,
        activities=activity_methods(acts),
    ):
        sent = await MissiveClient(client, traced).send(conversation, ana, "t-1", "traced")
        await asyncio.wait_for(broadcast.wait(), WAIT)
    provider.force_flush()
    spans = exporter.get_finished_spans()
    names = {span.name for span in spans}
    for expected in (
        "StartWorkflow:MessageLifecycleWorkflow",
        "RunWorkflow:MessageLifecycleWorkflow",
        "StartActivity:persist_message",
        "RunActivity:persist_message",
        "RunActivity:broadcast_message",
    ):
        assert expected in names, sorted(names)
    # The start, the run and its activities are one trace.
    [start] = [span for span in spans if span.name == "StartWorkflow:MessageLifecycleWorkflow"]
    lifecycle = [span for span in spans if span.name.endswith((":persist_message", "Workflow"))]
    assert {span.context.trace_id for span in lifecycle} == {start.context.trace_id}
    assert sent.seq == 1
    assert metrics.messages_persisted.labels(outcome="created")._value.get() == 1


def test_tracing_configured_without_opentelemetry_is_one_line_and_exit_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A module set to None in sys.modules fails to import, as when it is not installed.
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.trace", None)
    settings = base_settings(otel_exporter_otlp_endpoint="http://127.0.0.1:4318")
    with pytest.raises(InvalidInput, match=r"pip install -e '\.\[otel\]'"):
        tracing_interceptors(settings, service="worker")
    assert tracing_interceptors(base_settings(), service="worker") == []

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    # run_process tunes the interpreter (runtime.process.tune_interpreter): not pytest's.
    monkeypatch.setattr("runtime.process.tune_interpreter", lambda: None)
    assert run_process("worker", run_worker) == 1
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("worker: OTEL_EXPORTER_OTLP_ENDPOINT is set but OpenTelemetry")


def test_metrics_render_counts_in_the_exposition_format() -> None:
    metrics = Metrics()
    metrics.message_persisted(created=True)
    metrics.message_persisted(created=False)
    metrics.batch_chunk(stored=5, failed=1)
    metrics.cleanup("archived", 7)
    metrics.notification("email", "sent")
    metrics.observe_index_lag(pending=3, oldest_age_seconds=12.5)
    text = metrics.render().decode()
    assert _sample(text, "missive_messages_persisted_total", outcome="duplicate") == 1
    assert _sample(text, "missive_batch_items_total", outcome="failed") == 1
    assert _sample(text, "missive_cleanup_rows_total", step="archived") == 7
    assert _sample(text, "missive_notifications_total", channel="email", outcome="sent") == 1
    assert _sample(text, "missive_index_lag_seconds") == 12.5
    metrics.observe_index_lag(pending=0, oldest_age_seconds=99)
    assert _sample(metrics.render().decode(), "missive_index_lag_seconds") == 0
    # Each Metrics has its own registry: nothing leaks between processes' objects.
    assert _sample(Metrics().render().decode(), "missive_batch_items_total", outcome="stored") == 0
