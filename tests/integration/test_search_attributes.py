"""MissiveKind and MissiveConversationId: set on starts, filterable in visibility and the CLI."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from typing import Any

import pytest
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from missive.config import Settings
from missive.errors import NotAMember
from missive.models import ConversationKind
from missive.services.directory import NewUser
from runtime.search_attributes import (
    CONVERSATION_ID_KEY,
    KIND_KEY,
    KIND_MESSAGE,
    start_attributes,
)
from runtime.wiring import WORKFLOWS, Core, activity_methods, message_activities
from starter.client import MissiveClient
from tests.conftest import ROOT, base_settings, process_env

pytestmark = pytest.mark.integration

WAIT = 30.0
"""Visibility is eventually consistent: how long a listing may take to catch up."""


class _Quiet:
    async def emit(self, event: str, data: Any, *, room: str | None = None) -> None:
        return None


async def _ids(env: WorkflowEnvironment, query: str, count: int) -> list[str]:
    async with asyncio.timeout(WAIT):
        while True:
            ids = sorted([w.id async for w in env.client.list_workflows(query)])
            if len(ids) >= count:
                return ids
            await asyncio.sleep(0.3)


async def test_starts_carry_kind_and_conversation_and_the_cli_filters_by_them(
    settings: Settings, core: Core, dev_env: WorkflowEnvironment
) -> None:
    ana, ben, outsider = [
        await core.directory.create_user(NewUser(handle=f"s{i}-{uuid.uuid4().hex[:6]}"))
        for i in range(3)
    ]
    conversation = await core.directory.create_conversation(
        kind=ConversationKind.GROUP, members=[ana, ben]
    )
    missive = MissiveClient(dev_env.client, settings)
    async with Worker(
        dev_env.client,
        task_queue="missive-messages",
        workflows=WORKFLOWS,
        activities=activity_methods(message_activities(core, _Quiet())),
    ):
        await missive.send(conversation, ana, "a-1", "hello")
        with pytest.raises(NotAMember):
            await missive.send(conversation, outsider, "o-1", "let me in")
        await missive.mark_read(ben, conversation, up_to_seq=1)

    where = f"MissiveConversationId = '{conversation}'"
    messages = await _ids(dev_env, f"MissiveKind = 'message' AND {where}", 2)
    assert len(messages) == 2 and all(i.startswith("message-") for i in messages)
    [receipt] = await _ids(dev_env, f"MissiveKind = 'receipt' AND {where}", 1)
    described = await dev_env.client.get_workflow_handle(receipt).describe()
    assert described.typed_search_attributes.get(KIND_KEY) == "receipt"
    assert described.typed_search_attributes.get(CONVERSATION_ID_KEY) == conversation

    address = dev_env.client.service_client.config.target_host
    done = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            *("-m", "starter", "failures", "--json"),
            *("--query", f"MissiveKind = 'message' AND {where}"),
        ],
        cwd=ROOT,
        env=process_env(TEMPORAL_ADDRESS=address),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["total"] == 1
    [group] = report["groups"]
    assert group["error_type"] == "NotAMember"


def test_search_attributes_can_be_switched_off() -> None:
    on = start_attributes(base_settings(), KIND_MESSAGE, conversation_id="c")
    assert on is not None
    assert (on.get(KIND_KEY), on.get(CONVERSATION_ID_KEY)) == ("message", "c")
    off = base_settings(workflow_search_attributes=False)
    assert start_attributes(off, KIND_MESSAGE, conversation_id="c") is None
