"""Missive's client library and command line: ``from starter import MissiveClient``."""

from runtime.messaging import to_domain_error
from starter.client import (
    DEFAULT_TIMEOUT,
    MissiveClient,
    SendResult,
    lifecycle_workflow_id,
    receipt_input,
    send_input,
)
from starter.sessions import revoke_tokens

__all__ = [
    "DEFAULT_TIMEOUT",
    "MissiveClient",
    "SendResult",
    "lifecycle_workflow_id",
    "receipt_input",
    "revoke_tokens",
    "send_input",
    "to_domain_error",
]
