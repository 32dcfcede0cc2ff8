"""Key rotation workflows: re-wrap data keys under a new master key, rotate a data key, report."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.keys import KeyActivities
    from missive.schemas import (
        ConversationKeyInput,
        DataKeyRotationInput,
        DataKeyRotationResult,
        KeyReportInput,
        KeyRotationProgress,
        KeyUsageReport,
        MasterKeyRotationInput,
        MasterKeyRotationResult,
        ReencryptMessagesInput,
        RewrapDataKeysInput,
    )
    from workflows import policies


@workflow.defn
class MasterKeyRotationWorkflow:
    """Re-wraps every conversation's data keys under the current master key.

    Start it after adding the new version to MASTER_KEYS and making it
    MASTER_KEY_VERSION on every worker. No message is touched. Once it
    completes, the key report lists the old master version as removable.
    """

    def __init__(self) -> None:
        self._progress = KeyRotationProgress()

    @workflow.run
    async def run(self, input: MasterKeyRotationInput) -> MasterKeyRotationResult:
        """Loops chunked re-wrap runs until no data key uses another master version."""
        self._progress.phase = "rewrapping"
        self._progress.key_version = input.master_key_version
        self._progress.done = input.rewrapped
        while True:
            result = await workflow.execute_activity_method(
                KeyActivities.rewrap_data_keys,
                RewrapDataKeysInput(
                    master_key_version=input.master_key_version,
                    chunk_size=input.chunk_size,
                    max_chunks=input.chunks_per_activity,
                ),
                start_to_close_timeout=policies.KEY_ROTATION_TIMEOUT,
                heartbeat_timeout=policies.KEY_ROTATION_HEARTBEAT,
                retry_policy=policies.KEY_ROTATION_RETRY,
            )
            self._progress.key_version = result.master_key_version
            self._progress.done += result.rewrapped
            self._progress.remaining = result.remaining
            if result.remaining == 0:
                break
            if workflow.info().is_continue_as_new_suggested():
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(
                    MasterKeyRotationInput(
                        master_key_version=result.master_key_version,
                        chunk_size=input.chunk_size,
                        chunks_per_activity=input.chunks_per_activity,
                        rewrapped=self._progress.done,
                    )
                )
        self._progress.phase = "done"
        return MasterKeyRotationResult(
            master_key_version=result.master_key_version, rewrapped=self._progress.done
        )

    @workflow.query
    def progress(self) -> KeyRotationProgress:
        """Data keys re-wrapped so far and how many remain."""
        return self._progress


@workflow.defn
class DataKeyRotationWorkflow:
    """Gives one conversation a new data key and re-encrypts its older messages.

    The conversation switches to the new version first, so new messages use it
    at once; older ones are re-encrypted in chunks, and keep decrypting under
    their old version until their chunk commits.
    """

    def __init__(self) -> None:
        self._progress = KeyRotationProgress()

    @workflow.run
    async def run(self, input: DataKeyRotationInput) -> DataKeyRotationResult:
        """Creates the key (once), re-encrypts until nothing is left, settles, sweeps."""
        to_version = input.to_version
        self._progress.done = input.reencrypted
        if to_version is None:
            self._progress.phase = "creating_key"
            state = await workflow.execute_activity_method(
                KeyActivities.data_key_state,
                ConversationKeyInput(conversation_id=input.conversation_id),
                start_to_close_timeout=policies.DB_WRITE_TIMEOUT,
                retry_policy=policies.KEY_ROTATION_RETRY,
            )
            to_version = state.key_version + 1
            await workflow.execute_activity_method(
                KeyActivities.create_data_key,
                ConversationKeyInput(conversation_id=input.conversation_id, version=to_version),
                start_to_close_timeout=policies.DB_WRITE_TIMEOUT,
                retry_policy=policies.KEY_ROTATION_RETRY,
            )
        self._progress.key_version = to_version
        swept = input.swept
        while True:
            self._progress.phase = "reencrypting"
            result = await workflow.execute_activity_method(
                KeyActivities.reencrypt_messages,
                ReencryptMessagesInput(
                    conversation_id=input.conversation_id,
                    to_version=to_version,
                    chunk_size=input.chunk_size,
                    max_chunks=input.chunks_per_activity,
                ),
                start_to_close_timeout=policies.KEY_ROTATION_TIMEOUT,
                heartbeat_timeout=policies.KEY_ROTATION_HEARTBEAT,
                retry_policy=policies.KEY_ROTATION_RETRY,
            )
            self._progress.done += result.reencrypted
            self._progress.remaining = result.remaining
            if result.remaining == 0:
                if swept:
                    break
                # A send that read the old version just before the switch commits
                # within its activity timeout; sweep once more after that.
                self._progress.phase = "settling"
                await workflow.sleep(timedelta(seconds=input.settle_seconds))
                swept = True
                continue
            if workflow.info().is_continue_as_new_suggested():
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(
                    DataKeyRotationInput(
                        conversation_id=input.conversation_id,
                        chunk_size=input.chunk_size,
                        chunks_per_activity=input.chunks_per_activity,
                        settle_seconds=input.settle_seconds,
                        to_version=to_version,
                        reencrypted=self._progress.done,
                        swept=swept,
                    )
                )
        self._progress.phase = "done"
        return DataKeyRotationResult(
            conversation_id=input.conversation_id,
            key_version=to_version,
            reencrypted=self._progress.done,
        )

    @workflow.query
    def progress(self) -> KeyRotationProgress:
        """The new version, messages re-encrypted so far and how many remain."""
        return self._progress


@workflow.defn
class KeyReportWorkflow:
    """Reports which master and data key versions are in use (for the starter's CLI)."""

    @workflow.run
    async def run(self, input: KeyReportInput) -> KeyUsageReport:
        """Runs the report activity once."""
        return await workflow.execute_activity_method(
            KeyActivities.key_usage_report,
            input,
            start_to_close_timeout=policies.KEY_REPORT_TIMEOUT,
            retry_policy=policies.KEY_REPORT_RETRY,
        )


KEY_WORKFLOWS = [MasterKeyRotationWorkflow, DataKeyRotationWorkflow, KeyReportWorkflow]
"""The workflows the maintenance worker registers."""
