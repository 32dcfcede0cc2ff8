"""The one place domain errors become Temporal errors."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import ParamSpec, TypeVar

from temporalio.exceptions import ApplicationError, ApplicationErrorCategory

from missive.errors import PermanentError, RateLimited

P = ParamSpec("P")
T = TypeVar("T")


def to_application_error(err: Exception) -> Exception:
    """Maps a domain error to what Temporal should do with it.

    Permanent errors become non-retryable ApplicationErrors typed by their class
    name; a rate limit asks for the provider's delay; anything else is returned
    unchanged, so the retry policy retries it.
    """
    if isinstance(err, PermanentError):
        # BENIGN: a refused request is an answer, not an incident; the SDK logs
        # it at DEBUG instead of a warning with two stack traces.
        return ApplicationError(
            str(err),
            type=err.type,
            non_retryable=True,
            category=ApplicationErrorCategory.BENIGN,
        )
    if isinstance(err, RateLimited):
        return ApplicationError(
            str(err),
            type=err.type,
            next_retry_delay=(
                timedelta(seconds=err.retry_after) if err.retry_after is not None else None
            ),
        )
    return err


def translate_errors(fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """Decorates an activity so domain errors leave it as Temporal errors."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await fn(*args, **kwargs)
        except (PermanentError, RateLimited) as err:
            raise to_application_error(err) from err

    return wrapper
