"""The local-activity steps the short workflows share, each with its named policies.

A database write is retried as ``DB_RETRY`` says (a refusal fails the workflow at
once, typed the same); a live event is retried until ``BROADCAST_DEADLINE`` and
then given up, since clients catch up from history. Commands are exactly those
the workflows issued before this module existed, so recorded histories replay.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from workflows import policies
    from workflows.failures import reraise_refusal

A = TypeVar("A")
R = TypeVar("R")


async def write_locally(activity: Callable[[Any, A], Awaitable[R]], arg: A) -> R:
    """Runs a database write as a local activity; its refusal fails the workflow.

    Raises:
        ApplicationError: the activity's non-retryable refusal, typed the same.
    """
    try:
        return await workflow.execute_local_activity_method(
            activity,
            arg,
            start_to_close_timeout=policies.DB_WRITE_TIMEOUT,
            retry_policy=policies.DB_RETRY,
            local_retry_threshold=policies.LOCAL_RETRY_THRESHOLD,
        )
    except ActivityError as err:
        reraise_refusal(err)


async def announce_locally(
    activity: Callable[[Any, A], Awaitable[None]], arg: A, *, event: str
) -> bool:
    """Runs a live event's emit as a local activity; gives it up after BROADCAST_DEADLINE.

    Returns:
        Whether it went out (False: given up and logged; clients catch up by sync).
    """
    try:
        await workflow.execute_local_activity_method(
            activity,
            arg,
            start_to_close_timeout=policies.BROADCAST_TIMEOUT,
            schedule_to_close_timeout=policies.BROADCAST_DEADLINE,
            retry_policy=policies.BROADCAST_RETRY,
            local_retry_threshold=policies.LOCAL_RETRY_THRESHOLD,
        )
    except ActivityError:
        workflow.logger.warning("%s broadcast gave up", event)
        return False
    return True
