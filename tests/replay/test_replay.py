"""Replays recorded histories against the current workflow code, in the sandbox.

A change that is not deterministic against work already in flight fails here; guard
it with ``workflow.patched`` and re-record (``python -m tests.replay.record``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from runtime.wiring import WORKFLOWS

pytestmark = pytest.mark.unit

HISTORIES = {
    path.stem: path.read_text()
    for path in sorted((Path(__file__).resolve().parent / "histories").glob("*.json"))
}


def test_histories_are_recorded() -> None:
    assert set(HISTORIES) >= {
        "lifecycle_all_read",
        "lifecycle_window_elapsed",
        "lifecycle_refused",
        "receipt_read",
        # With notifications: the plan made by the broadcast, a dispatch after the
        # grace, the reader's settle.
        "lifecycle_notified",
        "receipt_read_notified",
    }


@pytest.mark.parametrize("name", sorted(HISTORIES))
async def test_current_code_replays_recorded_history(name: str) -> None:
    history = WorkflowHistory.from_json(name, HISTORIES[name])
    result = await Replayer(workflows=WORKFLOWS).replay_workflow(
        history, raise_on_replay_failure=True
    )
    assert result.replay_failure is None
