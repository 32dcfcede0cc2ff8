"""A receipt change given its message's counts keeps everything else it says."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

from missive.schemas import ReceiptChange, ReceiptStatus
from missive.services.receipts import _with_counts


def test_with_counts_is_replace_of_the_counts_only() -> None:
    change = ReceiptChange(
        message_id="m1",
        sender_id="s1",
        client_message_id="c1",
        seq=7,
        status=ReceiptStatus.READ,
        at=datetime(2026, 12, 8, tzinfo=UTC),
        within_window=False,
    )
    counted = _with_counts(change, {"m1": (5, 4, 3)})
    assert counted == dataclasses.replace(
        change, recipient_count=5, delivered_count=4, read_count=3
    )
    assert _with_counts(change, {}) == dataclasses.replace(
        change, recipient_count=0, delivered_count=0, read_count=0
    )
    # _with_counts names every field: one added to ReceiptChange must be added there.
    assert [f.name for f in dataclasses.fields(ReceiptChange)] == [
        "message_id",
        "sender_id",
        "client_message_id",
        "seq",
        "status",
        "at",
        "recipient_count",
        "delivered_count",
        "read_count",
        "within_window",
    ]
