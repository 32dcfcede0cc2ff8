"""Settings parsing and the choices made from them."""

from __future__ import annotations

import pytest
import socketio
from temporalio.worker import UnsandboxedWorkflowRunner
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

from missive.pubsub import BatchEmits, PostgresPubSubManager
from runtime.wiring import client_manager, workflow_runner
from tests.conftest import base_settings

pytestmark = pytest.mark.unit


def test_database_url_gets_the_asyncpg_driver() -> None:
    settings = base_settings(database_url="postgresql://u@db:5432/missive")
    assert settings.database_url == "postgresql+asyncpg://u@db:5432/missive"


def test_cors_origins_default_to_same_origin_only() -> None:
    assert base_settings().cors_origins is None
    assert base_settings(gateway_cors_origins="*").cors_origins == "*"
    assert base_settings(
        gateway_cors_origins="https://a.example, https://b.example"
    ).cors_origins == [
        "https://a.example",
        "https://b.example",
    ]


def test_broadcasts_cross_processes_through_redis_when_set_else_postgres() -> None:
    with_redis = client_manager(
        base_settings(redis_url="redis://127.0.0.1:6379/0", database_url="postgresql://x/y"),
        write_only=True,
    )
    assert isinstance(with_redis, socketio.AsyncRedisManager)
    without = client_manager(base_settings(database_url="postgresql://x/y"), write_only=True)
    assert isinstance(without, PostgresPubSubManager)
    # Either one publishes a group's notifications as batches.
    assert isinstance(with_redis, BatchEmits) and isinstance(without, BatchEmits)


def test_sandbox_is_a_setting() -> None:
    assert isinstance(workflow_runner(base_settings()), UnsandboxedWorkflowRunner)
    assert isinstance(
        workflow_runner(base_settings(workflow_sandbox=True)), SandboxedWorkflowRunner
    )
