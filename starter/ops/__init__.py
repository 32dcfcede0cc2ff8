"""Operating Missive: health, failure analysis, stuck activities and notifications, retries.

One private module per tool (``_health``, ``_failures``, ``_stuck``, ``_retry``) over a
shared history helper (``_history``), every public name re-exported here: ``from starter
import ops`` and ``ops.health(...)`` keep working, and no module is shadowed by the
function of the same name.
"""

from starter.ops._failures import (
    EXAMPLES_PER_GROUP,
    FAILED_STATUSES,
    FailureCause,
    FailureGroup,
    FailureReport,
    failure_cause,
    failures,
    failures_query,
    group_failures,
)
from starter.ops._health import (
    ACTIVITY_ONLY_QUEUES,
    CHECK_TIMEOUT,
    POLLER_STALE_AFTER,
    DependencyHealth,
    HealthReport,
    QueueHealth,
    health,
    task_queues,
)
from starter.ops._history import (
    DEFAULT_CONCURRENCY,
    Execution,
    NothingMatched,
    RetryRefused,
    UnknownWorkflow,
    close_event,
    list_executions,
    parse_duration,
    rpc_errors,
)
from starter.ops._retry import ResetPoint, RetryItem, RetryMode, RetryReport, retry
from starter.ops._stuck import OVERDUE_EXAMPLES, StuckActivity, overdue_notifications, stuck

__all__ = [
    "ACTIVITY_ONLY_QUEUES",
    "CHECK_TIMEOUT",
    "DEFAULT_CONCURRENCY",
    "EXAMPLES_PER_GROUP",
    "FAILED_STATUSES",
    "OVERDUE_EXAMPLES",
    "POLLER_STALE_AFTER",
    "DependencyHealth",
    "Execution",
    "FailureCause",
    "FailureGroup",
    "FailureReport",
    "HealthReport",
    "NothingMatched",
    "QueueHealth",
    "ResetPoint",
    "RetryItem",
    "RetryMode",
    "RetryRefused",
    "RetryReport",
    "StuckActivity",
    "UnknownWorkflow",
    "close_event",
    "failure_cause",
    "failures",
    "failures_query",
    "group_failures",
    "health",
    "list_executions",
    "overdue_notifications",
    "parse_duration",
    "retry",
    "rpc_errors",
    "stuck",
    "task_queues",
]
