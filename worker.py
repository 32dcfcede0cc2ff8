"""The worker: the one place where dependencies are built, run and closed.

Run it with ``python worker.py``. SIGTERM / SIGINT drain in-flight work.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from contextlib import AsyncExitStack, suppress
from datetime import timedelta

from temporalio.client import Client
from temporalio.worker import Worker

from missive.broadcast import Emitter
from missive.config import Settings
from missive.constants import TASK_QUEUE_MESSAGES
from missive.metrics import Metrics
from missive.notify.dispatch import ChannelSenders
from missive.search import SearchService
from runtime.batch_worker import batch_worker, ensure_retention_schedule, ensure_search_attributes
from runtime.client import connect
from runtime.keys import key_worker
from runtime.notify import notify_workers, open_notify, watch_overdue
from runtime.process import run_process
from runtime.search import open_search, search_worker, start_indexer
from runtime.telemetry import open_telemetry
from runtime.wiring import (
    WORKFLOWS,
    Core,
    activity_methods,
    client_manager,
    message_activities,
    open_core,
    workflow_runner,
)

log = logging.getLogger("missive.worker")


def build_workers(
    settings: Settings,
    client: Client,
    core: Core,
    manager: Emitter,
    *,
    search: SearchService | None = None,
    notify: ChannelSenders | None = None,
    metrics: Metrics | None = None,
) -> list[Worker]:
    """One Temporal worker per task queue this process serves.

    Each capability adds its task queue here; they share the client, the
    database engine and the broadcaster built once in ``run_worker``.
    """
    shutdown = timedelta(seconds=settings.graceful_shutdown_seconds)
    return [
        Worker(
            client,
            task_queue=TASK_QUEUE_MESSAGES,
            workflows=WORKFLOWS,
            activities=activity_methods(message_activities(core, manager, metrics=metrics)),
            workflow_runner=workflow_runner(settings),
            graceful_shutdown_timeout=shutdown,
        ),
        key_worker(settings, client, core),
        batch_worker(settings, client, core, manager, metrics=metrics),
        *([search_worker(settings, client, search, metrics=metrics)] if search is not None else []),
        *(
            notify_workers(settings, client, core, manager, notify, metrics=metrics)
            if notify is not None
            else []
        ),
    ]


async def run_worker(settings: Settings, *, stop: asyncio.Event | None = None) -> None:
    """Runs the worker until ``stop`` is set (or SIGTERM / SIGINT), then drains."""
    stop = stop or asyncio.Event()
    async with AsyncExitStack() as stack:
        telemetry = open_telemetry(
            settings,
            stack,
            service="missive-worker",
            sdk_metrics_port=settings.sdk_metrics_port,
            metrics_port=settings.metrics_port,
        )
        core = await open_core(settings, stack)
        client = await connect(
            settings, interceptors=telemetry.interceptors, runtime=telemetry.runtime
        )
        manager = client_manager(settings, write_only=True)
        if hasattr(manager, "close"):
            stack.push_async_callback(manager.close)
        search = open_search(settings, core, stack)
        notify = (
            open_notify(settings, core, stack, metrics=telemetry.metrics)
            if settings.notify_enabled
            else None
        )
        workers = build_workers(
            settings,
            client,
            core,
            manager,
            search=search,
            notify=notify,
            metrics=telemetry.metrics,
        )
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        async with AsyncExitStack() as running:
            for worker in workers:
                await running.enter_async_context(worker)
            await ensure_search_attributes(client)
            if settings.retention_schedule_on_start:
                await ensure_retention_schedule(client, settings)
            if search is not None:
                await start_indexer(client, settings)
            if notify is not None:
                watcher = asyncio.create_task(
                    watch_overdue(settings, core.notifications, telemetry.metrics)
                )
                running.push_async_callback(_cancel, watcher)
            log.info(
                "worker polling %s on %s (namespace %s)",
                ", ".join(w.task_queue for w in workers),
                settings.temporal_address,
                settings.temporal_namespace,
            )
            await stop.wait()
            log.info("draining in-flight work (up to %ss)", settings.graceful_shutdown_seconds)
        log.info("worker stopped")


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with suppress(asyncio.CancelledError):
        await task


def main() -> int:
    """Entry point: one line on stderr and exit 1 when a dependency is unreachable."""
    return run_process("worker", run_worker)


if __name__ == "__main__":
    sys.exit(main())
