"""Settings parsing and the choices made from them."""

from __future__ import annotations

import pytest
import socketio
from temporalio.worker import UnsandboxedWorkflowRunner
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

from missive.errors import InvalidInput
from missive.pubsub import BatchEmits, PostgresPubSubManager
from runtime.client import data_converter
from runtime.converter import InputCheckingRunner
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
    plain = workflow_runner(base_settings())
    sandboxed = workflow_runner(base_settings(workflow_sandbox=True))
    # Either way inside the runner that refuses a start with no input or several.
    assert isinstance(plain, InputCheckingRunner) and isinstance(sandboxed, InputCheckingRunner)
    assert isinstance(plain.inner, UnsandboxedWorkflowRunner)
    assert isinstance(sandboxed.inner, SandboxedWorkflowRunner)


def test_no_codec_keys_is_refused_unless_plaintext_is_allowed() -> None:
    with pytest.raises(InvalidInput, match=r"^CODEC_KEYS is not set: .*ALLOW_PLAINTEXT_PAYLOADS"):
        data_converter(base_settings(codec_keys=""))
    plain = data_converter(base_settings(codec_keys="", allow_plaintext_payloads=True))
    assert plain.payload_codec is None
    assert data_converter(base_settings()).payload_codec is not None
