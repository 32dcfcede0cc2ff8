"""History's integer check: what a seq and a page limit may be."""

from __future__ import annotations

import pytest

from missive.services.history import SYNC_DEFAULT_LIMIT, SYNC_MAX_LIMIT, _is_int

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("value", "low", "high", "expected"),
    [
        (0, 0, None, True),
        (10**15, 0, None, True),  # no upper bound
        (-1, 0, None, False),
        (1, 1, SYNC_MAX_LIMIT, True),
        (SYNC_MAX_LIMIT, 1, SYNC_MAX_LIMIT, True),  # both bounds inclusive
        (SYNC_MAX_LIMIT + 1, 1, SYNC_MAX_LIMIT, False),
        (0, 1, SYNC_MAX_LIMIT, False),
    ],
)
def test_integers_in_range(value: int, low: int, high: int | None, expected: bool) -> None:
    assert _is_int(value, low=low, high=high) is expected


@pytest.mark.parametrize("value", [True, False, 1.0, "1", None, [1]])
def test_only_ints_that_are_not_bools_count(value: object) -> None:
    assert _is_int(value, low=0) is False
    assert _is_int(value, low=0, high=10) is False


def test_the_default_page_is_a_valid_limit() -> None:
    assert _is_int(SYNC_DEFAULT_LIMIT, low=1, high=SYNC_MAX_LIMIT)
    assert (SYNC_DEFAULT_LIMIT, SYNC_MAX_LIMIT) == (100, 500)
