"""How a workflow turns an activity's refusal into its own failure."""

from __future__ import annotations

from typing import NoReturn

from temporalio.exceptions import ActivityError, ApplicationError


def reraise_refusal(err: ActivityError) -> NoReturn:
    """Fails the workflow with the activity's non-retryable error, typed the same.

    Any other activity failure is re-raised as it is (it already exhausted its
    retry policy, which for database writes never happens).
    """
    cause = err.cause
    if isinstance(cause, ApplicationError) and cause.non_retryable:
        raise ApplicationError(cause.message, type=cause.type, non_retryable=True) from None
    raise err
