"""The interpreter settings every long-running process starts with."""

from __future__ import annotations

import gc
import sys
from collections.abc import Iterator

import pytest

from runtime.process import SWITCH_INTERVAL_SECONDS, tune_interpreter


@pytest.fixture
def restored() -> Iterator[None]:
    interval = sys.getswitchinterval()
    yield
    sys.setswitchinterval(interval)
    gc.unfreeze()


def _seen_by_collector(obj: object) -> bool:
    return any(o is obj for o in gc.get_objects())


def test_tune_interpreter_shortens_handoffs_and_freezes_the_startup_heap(restored: None) -> None:
    gc.unfreeze()
    at_startup: dict[str, list[int]] = {"made": []}
    assert _seen_by_collector(at_startup)

    tune_interpreter()

    assert sys.getswitchinterval() == pytest.approx(SWITCH_INTERVAL_SECONDS)
    assert SWITCH_INTERVAL_SECONDS < 0.005  # shorter than Python's default
    assert gc.get_freeze_count() > 1000  # the imports' objects with it
    assert not _seen_by_collector(at_startup)  # a full collection no longer walks it
    made_later: dict[str, list[int]] = {"made": []}
    assert _seen_by_collector(made_later)  # what the process makes since is collected
