"""Key activities: re-wrap data keys, rotate a conversation's data key, report key usage."""

from __future__ import annotations

import dataclasses

from temporalio import activity

from activities.errors import translate_errors
from missive.errors import InvalidInput
from missive.schemas import (
    ConversationKeyInput,
    ConversationKeyState,
    KeyReportInput,
    KeyUsageReport,
    ReencryptMessagesInput,
    ReencryptMessagesResult,
    RewrapDataKeysInput,
    RewrapDataKeysResult,
)
from missive.services.keys import KeyService, Progress


def _resumed_count() -> int:
    """How many the previous attempt of this activity committed (its last heartbeat)."""
    details = activity.info().heartbeat_details
    if details and isinstance(details[0], int):
        return details[0]
    return 0


def _heartbeat(before: int) -> Progress:
    """A progress callback that heartbeats the running count and the cursor."""

    def beat(done: int, cursor: object) -> None:
        activity.heartbeat(before + done, cursor)

    return beat


class KeyActivities:
    """Thin activities over KeyService; long ones heartbeat after every committed chunk.

    A retried attempt resumes for free (it only finds rows not yet in their
    target state) and adds the count its predecessor heartbeated.
    """

    def __init__(self, keys: KeyService):
        self._keys = keys

    @activity.defn
    @translate_errors
    async def rewrap_data_keys(self, input: RewrapDataKeysInput) -> RewrapDataKeysResult:
        """Re-wraps data keys under the current master key, in chunks."""
        before = _resumed_count()
        result = await self._keys.rewrap_data_keys(input, progress=_heartbeat(before))
        return dataclasses.replace(result, rewrapped=before + result.rewrapped)

    @activity.defn
    @translate_errors
    async def data_key_state(self, input: ConversationKeyInput) -> ConversationKeyState:
        """The conversation's current data key version (read only)."""
        return await self._keys.key_state(input.conversation_id)

    @activity.defn
    @translate_errors
    async def create_data_key(self, input: ConversationKeyInput) -> ConversationKeyState:
        """Creates data key ``version`` and switches the conversation to it (idempotent)."""
        if input.version is None:
            raise InvalidInput("create_data_key needs a version")
        return await self._keys.create_data_key(input.conversation_id, input.version)

    @activity.defn
    @translate_errors
    async def reencrypt_messages(self, input: ReencryptMessagesInput) -> ReencryptMessagesResult:
        """Re-encrypts a conversation's messages under older data keys, in chunks."""
        before = _resumed_count()
        result = await self._keys.reencrypt_messages(input, progress=_heartbeat(before))
        return dataclasses.replace(result, reencrypted=before + result.reencrypted)

    @activity.defn
    @translate_errors
    async def key_usage_report(self, input: KeyReportInput) -> KeyUsageReport:
        """Which master and data key versions are in use."""
        return await self._keys.usage_report()
