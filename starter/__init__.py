"""Missive's client library and command line: ``from starter import MissiveClient``."""

from starter.client import (
    DEFAULT_TIMEOUT,
    MissiveClient,
    SendResult,
    lifecycle_workflow_id,
    receipt_input,
    send_input,
    to_domain_error,
)

__all__ = [
    "DEFAULT_TIMEOUT",
    "MissiveClient",
    "SendResult",
    "lifecycle_workflow_id",
    "receipt_input",
    "send_input",
    "to_domain_error",
]
