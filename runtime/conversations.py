"""Membership changes, edits, deletes and user provisioning over Temporal, shared by the
gateway and the starter: each runs its workflow and returns its result.

Workflow ids come from the request (missive.constants), so a resend while the
first is running joins it; after it completed, a resend runs again and, the
change being made already, reports ``changed`` False with the same answer.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, TypeVar

from temporalio.client import Client, WorkflowFailureError
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy

from missive.constants import (
    TASK_QUEUE_MESSAGES,
    delete_workflow_id,
    edit_workflow_id,
    membership_workflow_id,
    user_workflow_id,
)
from missive.schemas import (
    DeleteMessageInput,
    DeleteMessageResult,
    EditMessageInput,
    EditMessageResult,
    MembershipAction,
    MembershipInput,
    MembershipResult,
    UserProfile,
    UserProfileInput,
)
from runtime.messaging import to_domain_error
from workflows.delete_message import DeleteMessageWorkflow
from workflows.edit_message import EditMessageWorkflow
from workflows.membership import MembershipWorkflow
from workflows.user_profile import UserProfileWorkflow

R = TypeVar("R")


async def change_membership(
    client: Client,
    input: MembershipInput,
    *,
    eager: bool = False,
    rpc_timeout: timedelta | None = None,
) -> MembershipResult:
    """Runs MembershipWorkflow for one change.

    Raises:
        PermanentError: the change was refused (the subclass names why).
    """
    subjects = sorted(input.user_ids)
    if input.action is MembershipAction.CREATE:
        subjects += [
            str(input.kind),
            str(input.encryption_mode),
            input.client_conversation_id or "",
            input.title or "",
        ]
    if input.action is MembershipAction.SET_ROLE:
        subjects.append(str(input.role))
    workflow_id = membership_workflow_id(
        input.action.value, input.actor_id or "service", input.conversation_id or "", *subjects
    )
    return await _run(client, MembershipWorkflow.run, input, workflow_id, eager, rpc_timeout)


async def edit_message(
    client: Client,
    input: EditMessageInput,
    *,
    eager: bool = False,
    rpc_timeout: timedelta | None = None,
) -> EditMessageResult:
    """Runs EditMessageWorkflow (a resend of the same text joins or re-answers it)."""
    workflow_id = edit_workflow_id(input.message_id, input.body)
    return await _run(client, EditMessageWorkflow.run, input, workflow_id, eager, rpc_timeout)


async def delete_message(
    client: Client,
    input: DeleteMessageInput,
    *,
    eager: bool = False,
    rpc_timeout: timedelta | None = None,
) -> DeleteMessageResult:
    """Runs DeleteMessageWorkflow (deleting again answers the first ``deleted_at``)."""
    workflow_id = delete_workflow_id(input.message_id)
    return await _run(client, DeleteMessageWorkflow.run, input, workflow_id, eager, rpc_timeout)


async def apply_user_profile(
    client: Client,
    input: UserProfileInput,
    *,
    eager: bool = False,
    rpc_timeout: timedelta | None = None,
) -> UserProfile:
    """Runs UserProfileWorkflow: creates (``user_id`` None) or updates a user."""
    key = input.user_id or (f"client:{input.client_user_id}" if input.client_user_id else None)
    if key is None:  # an anonymous create: each call is a user of its own
        key = f"new:{uuid.uuid4()}"
    workflow_id = user_workflow_id(key)
    return await _run(client, UserProfileWorkflow.run, input, workflow_id, eager, rpc_timeout)


async def _run(
    client: Client,
    run: Callable[[Any, Any], Awaitable[R]],
    input: Any,
    workflow_id: str,
    eager: bool,
    rpc_timeout: timedelta | None,
) -> R:
    try:
        return await client.execute_workflow(
            run,  # type: ignore[arg-type]
            input,
            id=workflow_id,
            task_queue=TASK_QUEUE_MESSAGES,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
            request_eager_start=eager,
            rpc_timeout=rpc_timeout,
        )
    except WorkflowFailureError as err:
        raise to_domain_error(err) from None
