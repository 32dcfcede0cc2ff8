"""Key rotation from the starter: start a rotation, wait for it, print the key report.

python -m starter keys report
python -m starter keys rotate-master [--master-version N]
python -m starter keys rotate-data --conversation C
"""

from __future__ import annotations

import argparse
import uuid
from typing import Any

from temporalio.client import Client, WorkflowFailureError
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy

from missive.constants import (
    KEY_REPORT_PREFIX,
    TASK_QUEUE_MAINTENANCE,
    data_key_rotation_workflow_id,
    master_key_rotation_workflow_id,
)
from missive.errors import InvalidInput
from missive.schemas import (
    DataKeyRotationInput,
    DataKeyRotationResult,
    KeyReportInput,
    KeyUsageReport,
    MasterKeyRotationInput,
    MasterKeyRotationResult,
)
from missive.validation import require_uuid
from runtime.messaging import to_domain_error
from workflows.key_rotation import (
    DataKeyRotationWorkflow,
    KeyReportWorkflow,
    MasterKeyRotationWorkflow,
)


async def rotate_master_key(
    client: Client,
    *,
    master_key_version: int | None = None,
    task_queue: str = TASK_QUEUE_MAINTENANCE,
) -> MasterKeyRotationResult:
    """Re-wraps every data key under the workers' current master key; waits for it.

    A rotation to the same version already running is joined, not repeated.

    Raises:
        PermanentError: the rotation failed (the subclass names why: KeyVersionMissing, ...).
    """
    if master_key_version is not None and master_key_version < 1:
        raise InvalidInput(f"master_key_version must be positive, got {master_key_version}")
    handle = await client.start_workflow(
        MasterKeyRotationWorkflow.run,
        MasterKeyRotationInput(master_key_version=master_key_version),
        id=master_key_rotation_workflow_id(master_key_version),
        task_queue=task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
    )
    try:
        return await handle.result()
    except WorkflowFailureError as err:
        raise to_domain_error(err) from None


async def rotate_data_key(
    client: Client,
    conversation_id: str,
    *,
    settle_seconds: float = 20.0,
    task_queue: str = TASK_QUEUE_MAINTENANCE,
) -> DataKeyRotationResult:
    """Gives a conversation a new data key and re-encrypts its messages; waits for it.

    Raises:
        InvalidInput: a malformed conversation id.
        PermanentError: the rotation failed (ConversationNotFound, DecryptionFailed, ...).
    """
    cid = require_uuid(conversation_id, "conversation_id")
    handle = await client.start_workflow(
        DataKeyRotationWorkflow.run,
        DataKeyRotationInput(conversation_id=cid, settle_seconds=settle_seconds),
        id=data_key_rotation_workflow_id(cid),
        task_queue=task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
    )
    try:
        return await handle.result()
    except WorkflowFailureError as err:
        raise to_domain_error(err) from None


async def key_report(client: Client, *, task_queue: str = TASK_QUEUE_MAINTENANCE) -> KeyUsageReport:
    """Which master and data key versions are in use, and which are removable."""
    try:
        return await client.execute_workflow(
            KeyReportWorkflow.run,
            KeyReportInput(),
            id=f"{KEY_REPORT_PREFIX}-{uuid.uuid4()}",
            task_queue=task_queue,
        )
    except WorkflowFailureError as err:
        raise to_domain_error(err) from None


def add_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    """Adds ``keys report | rotate-master | rotate-data`` to the CLI."""
    keys = commands.add_parser("keys", help="key rotation and the key usage report")
    actions = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    actions.add_parser("report", parents=[common], help="which key versions are in use")
    master = actions.add_parser(
        "rotate-master", parents=[common], help="re-wrap every data key under the current master"
    )
    master.add_argument("--master-version", type=int, metavar="N", help="assert the target")
    data = actions.add_parser(
        "rotate-data", parents=[common], help="new data key for a conversation, re-encrypt it"
    )
    data.add_argument("--conversation", required=True, metavar="C", help="conversation id")


async def run(args: argparse.Namespace, client: Client) -> tuple[object, str]:
    """Runs one ``keys`` action; returns the result and its one-paragraph description."""
    if args.keys_command == "report":
        report = await key_report(client)
        return report, describe_report(report)
    if args.keys_command == "rotate-master":
        done = await rotate_master_key(client, master_key_version=args.master_version)
        return done, (
            f"every data key is wrapped by master key version {done.master_key_version} "
            f"({done.rewrapped} re-wrapped)"
        )
    rotated = await rotate_data_key(client, args.conversation)
    return rotated, (
        f"conversation {rotated.conversation_id} uses data key version {rotated.key_version} "
        f"({rotated.reencrypted} message(s) re-encrypted)"
    )


def describe_report(report: KeyUsageReport) -> str:
    """The report as an operator reads it."""
    lines = [
        f"master key: current {report.current_master_key_version}, configured "
        f"{', '.join(map(str, report.configured_master_key_versions)) or '-'}",
    ]
    for usage in report.master_keys:
        lines.append(f"  master {usage.version}: wraps {usage.data_keys} data key(s)")
    if report.removable_master_key_versions:
        removable = ", ".join(map(str, report.removable_master_key_versions))
        lines.append(f"  removable from MASTER_KEYS: {removable}")
    if report.missing_master_key_versions:
        missing = ", ".join(map(str, report.missing_master_key_versions))
        lines.append(f"  MISSING from MASTER_KEYS (cannot unwrap): {missing}")
    lines.append("data keys:")
    for data in report.data_keys:
        lines.append(
            f"  version {data.version}: current in {data.conversations} conversation(s), "
            f"{data.messages} message(s)"
        )
    lines.append(
        f"conversations with messages under an older data key: "
        f"{report.conversations_with_old_messages}"
    )
    return "\n".join(lines)
