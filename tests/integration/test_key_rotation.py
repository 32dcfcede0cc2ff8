"""Key rotation end to end: real PostgreSQL, the Temporal dev server, the key worker."""

from __future__ import annotations

import asyncio
import base64
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass

import pytest
from sqlalchemy import text
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from missive.config import Settings
from missive.crypto import MessageCipher
from missive.errors import ConversationNotFound, InvalidInput, KeyVersionMissing
from missive.models import ConversationKind
from missive.schemas import (
    DataKeyRotationInput,
    KeyRotationProgress,
    MasterKeyRotationInput,
    PersistMessageInput,
)
from missive.services.directory import NewUser
from runtime.keys import key_worker
from runtime.wiring import Core, open_core
from starter.keys import key_report, rotate_data_key, rotate_master_key
from tests.conftest import SESSION_KEYS, base_settings
from workflows.key_rotation import DataKeyRotationWorkflow, MasterKeyRotationWorkflow

pytestmark = pytest.mark.integration

WAIT = 120.0
"""Upper bound for a rotation of a few hundred rows on a busy 2-core machine."""


@dataclass
class Keys:
    """A key worker on the test's task queue over a core with two master keys."""

    core: Core
    task_queue: str
    settings: Settings


def _key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


@pytest.fixture
async def keys(
    settings: Settings, dev_env: WorkflowEnvironment, task_queue: str
) -> AsyncIterator[Keys]:
    """Master keys 1 (the session's) and 2 (current); a key worker on ``task_queue``."""
    rotated = base_settings(
        database_url=settings.database_url,
        master_keys=f"{SESSION_KEYS['master_keys']},2:{_key()}",
        graceful_shutdown_seconds=2,
    )
    async with AsyncExitStack() as stack:
        core = await open_core(rotated, stack, pool_size=4)
        async with key_worker(rotated, dev_env.client, core, task_queue=task_queue):
            yield Keys(core, task_queue, rotated)


async def _people(core: Core, n: int) -> list[str]:
    return [
        await core.directory.create_user(NewUser(handle=f"k{i}-{uuid.uuid4().hex[:6]}"))
        for i in range(n)
    ]


async def _send(core: Core, conversation: str, sender: str, tag: str) -> str:
    result = await core.messages.persist(
        PersistMessageInput(
            conversation_id=conversation,
            sender_id=sender,
            client_message_id=tag,
            body=f"body {tag}",
        )
    )
    return result.message_id


async def _rows(core: Core, sql: str, **params: object) -> list[tuple[object, ...]]:
    async with core.engine.connect() as conn:
        return [tuple(r) for r in await conn.execute(text(sql), params)]


def _refusal(err: pytest.ExceptionInfo[WorkflowFailureError]) -> ApplicationError:
    cause: BaseException | None = err.value.cause
    while cause is not None and not isinstance(cause, ApplicationError):
        cause = getattr(cause, "cause", None)
    assert isinstance(cause, ApplicationError), err.value
    return cause


async def test_messages_sent_during_a_data_key_rotation_all_decrypt_afterwards(
    keys: Keys, dev_env: WorkflowEnvironment
) -> None:
    core = keys.core  # knows master 2, which wraps the new data key
    ana, ben = await _people(core, 2)
    conversation = await core.directory.create_conversation(
        kind=ConversationKind.DIRECT, members=[ana, ben]
    )
    before = [await _send(core, conversation, ana, f"old-{i}") for i in range(120)]

    handle = await dev_env.client.start_workflow(
        DataKeyRotationWorkflow.run,
        DataKeyRotationInput(
            conversation_id=conversation, chunk_size=25, chunks_per_activity=2, settle_seconds=1
        ),
        id=f"rotation-{uuid.uuid4()}",
        task_queue=keys.task_queue,
    )
    # Keep sending while it runs.
    during: list[str] = []
    for i in range(40):
        during.append(await _send(core, conversation, ben, f"during-{i}"))
        await asyncio.sleep(0.02)
        if i == 20:
            progress: KeyRotationProgress = await handle.query(DataKeyRotationWorkflow.progress)
            assert progress.phase in {"starting", "creating_key", "reencrypting", "settling"}
    result = await asyncio.wait_for(handle.result(), WAIT)
    assert result.key_version == 2
    assert result.reencrypted >= len(before)
    final: KeyRotationProgress = await handle.query(DataKeyRotationWorkflow.progress)
    assert (final.phase, final.remaining, final.done) == ("done", 0, result.reencrypted)

    versions = await _rows(
        core,
        "SELECT key_version, count(*) FROM messages WHERE conversation_id = :c GROUP BY 1",
        c=conversation,
    )
    assert versions == [(2, len(before) + len(during))]
    for message_id in before + during:
        loaded = await core.messages.load(message_id)
        assert loaded.body.startswith("body ")
    after = await _send(core, conversation, ana, "after")
    assert (await _rows(core, "SELECT key_version FROM messages WHERE id = :m", m=after)) == [(2,)]

    report = await key_report(dev_env.client, task_queue=keys.task_queue)
    assert report.conversations_with_old_messages == 0
    assert [(d.version, d.messages) for d in report.data_keys] == [(2, len(before) + 41)]


async def test_master_rotation_rewraps_every_key_and_the_old_master_can_go(
    core: Core, keys: Keys, dev_env: WorkflowEnvironment, settings: Settings
) -> None:
    people = await _people(core, 3)
    conversations = [
        await core.directory.create_conversation(kind=ConversationKind.GROUP, members=people)
        for _ in range(7)
    ]
    messages = [await _send(core, c, people[0], f"m-{i}") for i, c in enumerate(conversations)]
    assert await _rows(core, "SELECT DISTINCT master_key_version FROM conversation_keys") == [(1,)]

    before = await key_report(dev_env.client, task_queue=keys.task_queue)
    assert [(m.version, m.data_keys) for m in before.master_keys] == [(1, 7)]
    assert before.removable_master_key_versions == []

    handle = await dev_env.client.start_workflow(
        MasterKeyRotationWorkflow.run,
        MasterKeyRotationInput(master_key_version=2, chunk_size=3, chunks_per_activity=1),
        id=f"master-{uuid.uuid4()}",
        task_queue=keys.task_queue,
    )
    result = await asyncio.wait_for(handle.result(), WAIT)
    assert (result.master_key_version, result.rewrapped) == (2, 7)
    assert await _rows(core, "SELECT DISTINCT master_key_version FROM conversation_keys") == [(2,)]

    after = await key_report(dev_env.client, task_queue=keys.task_queue)
    assert after.removable_master_key_versions == [1]
    # Drop master 1: every message still decrypts with master 2 alone.
    only_new = MessageCipher({2: keys.settings.master_keyring[2]})
    async with AsyncExitStack() as stack:
        core2 = await open_core(
            base_settings(
                database_url=settings.database_url,
                master_keys=f"2:{base64.b64encode(keys.settings.master_keyring[2]).decode()}",
            ),
            stack,
            pool_size=2,
        )
        assert core2.cipher.master_versions == only_new.master_versions == [2]
        for message_id in messages:
            assert (await core2.messages.load(message_id)).body.startswith("body m-")

    # Running it again finds nothing to do; a worker on another version refuses.
    again = await rotate_master_key(
        dev_env.client, master_key_version=2, task_queue=keys.task_queue
    )
    assert again.rewrapped == 0
    with pytest.raises(InvalidInput, match="MASTER_KEY_VERSION is 2"):
        await rotate_master_key(dev_env.client, master_key_version=3, task_queue=keys.task_queue)


async def test_a_tampered_body_stops_the_rotation_non_retryably(
    core: Core, keys: Keys, dev_env: WorkflowEnvironment
) -> None:
    ana, ben = await _people(core, 2)
    conversation = await core.directory.create_conversation(
        kind=ConversationKind.DIRECT, members=[ana, ben]
    )
    good = await _send(core, conversation, ana, "good")
    bad = await _send(core, conversation, ana, "bad")
    async with core.engine.begin() as conn:
        await conn.execute(
            text(
                # Every bit of byte 20 flipped (0xff written over a 0xff changed nothing).
                "UPDATE messages SET body_ciphertext = set_byte(body_ciphertext, 19,"
                " get_byte(body_ciphertext, 19) # 255) WHERE id = :m"
            ),
            {"m": bad},
        )
    with pytest.raises(WorkflowFailureError) as failed:
        await asyncio.wait_for(
            dev_env.client.execute_workflow(
                DataKeyRotationWorkflow.run,
                DataKeyRotationInput(conversation_id=conversation, settle_seconds=0),
                id=f"rotation-{uuid.uuid4()}",
                task_queue=keys.task_queue,
            ),
            WAIT,
        )
    refusal = _refusal(failed)
    assert refusal.type == "DecryptionFailed" and refusal.non_retryable
    assert bad in refusal.message and "tampered" in refusal.message
    # Nothing half-done: the untouched message still decrypts under its old key.
    assert (await core.messages.load(good)).body == "body good"


async def test_missing_key_versions_are_named(
    core: Core, keys: Keys, dev_env: WorkflowEnvironment
) -> None:
    ana, ben = await _people(core, 2)
    conversation = await core.directory.create_conversation(
        kind=ConversationKind.DIRECT, members=[ana, ben]
    )
    message = await _send(core, conversation, ana, "lost")
    async with core.engine.begin() as conn:
        await conn.execute(
            text("UPDATE messages SET key_version = 0 WHERE id = :m"), {"m": message}
        )
    with pytest.raises(WorkflowFailureError) as failed:
        await asyncio.wait_for(rotate_and_fail(dev_env, keys, conversation), WAIT)
    refusal = _refusal(failed)
    assert refusal.type == "KeyVersionMissing" and refusal.non_retryable
    assert f"data key version 0 of conversation {conversation}" in refusal.message

    # A data key wrapped by a master version no worker has.
    other = await core.directory.create_conversation(
        kind=ConversationKind.DIRECT, members=[ana, ben]
    )
    async with core.engine.begin() as conn:
        await conn.execute(
            text("UPDATE conversation_keys SET master_key_version = 9 WHERE conversation_id = :c"),
            {"c": other},
        )
    report = await key_report(dev_env.client, task_queue=keys.task_queue)
    assert report.missing_master_key_versions == [9]
    with pytest.raises(KeyVersionMissing, match="master key version 9 is not configured"):
        await asyncio.wait_for(rotate_master_key(dev_env.client, task_queue=keys.task_queue), WAIT)


async def rotate_and_fail(dev_env: WorkflowEnvironment, keys: Keys, conversation: str) -> None:
    """Runs a data-key rotation that is expected to fail."""
    await dev_env.client.execute_workflow(
        DataKeyRotationWorkflow.run,
        DataKeyRotationInput(conversation_id=conversation, settle_seconds=0),
        id=f"rotation-{uuid.uuid4()}",
        task_queue=keys.task_queue,
    )


async def test_rotating_an_unknown_conversation_is_refused(
    keys: Keys, dev_env: WorkflowEnvironment
) -> None:
    with pytest.raises(ConversationNotFound):
        await asyncio.wait_for(
            rotate_data_key(dev_env.client, str(uuid.uuid4()), task_queue=keys.task_queue), WAIT
        )
