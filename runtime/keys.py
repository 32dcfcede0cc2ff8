"""Builds the key-rotation worker: workflows and activities on the maintenance task queue."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from temporalio.client import Client
from temporalio.worker import Worker

from activities.keys import KeyActivities
from missive.config import Settings
from missive.constants import TASK_QUEUE_MAINTENANCE
from missive.db import session_factory
from missive.services.keys import KeyService
from runtime.wiring import Core, workflow_runner
from workflows.key_rotation import KEY_WORKFLOWS


def key_activities(core: Core) -> KeyActivities:
    """The key activities over this process's engine and cipher."""
    return KeyActivities(KeyService(session_factory(core.engine), core.cipher))


def key_activity_methods(acts: KeyActivities) -> list[Callable[..., Any]]:
    """The bound activity methods a worker registers."""
    return [
        acts.rewrap_data_keys,
        acts.data_key_state,
        acts.create_data_key,
        acts.reencrypt_messages,
        acts.key_usage_report,
    ]


def key_worker(
    settings: Settings, client: Client, core: Core, *, task_queue: str = TASK_QUEUE_MAINTENANCE
) -> Worker:
    """The worker for key rotations and reports."""
    return Worker(
        client,
        task_queue=task_queue,
        workflows=KEY_WORKFLOWS,
        activities=key_activity_methods(key_activities(core)),
        workflow_runner=workflow_runner(settings),
        graceful_shutdown_timeout=timedelta(seconds=settings.graceful_shutdown_seconds),
    )
