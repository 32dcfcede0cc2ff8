"""Deadlines: asyncio.timeout's behaviour for many tasks, kept by one timer."""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.acks import Deadlines, error, guarded


async def test_a_block_past_its_deadline_raises_timeout_error_at_most_a_tick_late() -> None:
    deadlines = Deadlines(0.3)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        async with deadlines():
            await asyncio.sleep(5)
    took = time.monotonic() - started
    assert 0.3 <= took < 0.3 + 0.03 + 0.1  # its resolution (a tenth), and some slack


async def test_blocks_within_their_deadline_finish_and_leave_no_timer_behind() -> None:
    deadlines = Deadlines(0.5)

    async def quick(n: int) -> int:
        async with deadlines():
            await asyncio.sleep(0.01)
        return n

    assert await asyncio.gather(*(quick(n) for n in range(200))) == list(range(200))
    await asyncio.sleep(0.2)  # a sweep or two
    assert deadlines._timer is None and not deadlines._set


async def test_only_the_late_ones_of_many_are_cancelled() -> None:
    deadlines = Deadlines(0.2)

    async def one(seconds: float) -> str:
        try:
            async with deadlines():
                await asyncio.sleep(seconds)
        except TimeoutError:
            return "timeout"
        return "done"

    results = await asyncio.gather(*(one(0.05 if n % 2 else 2.0) for n in range(20)))
    assert results == ["timeout" if n % 2 == 0 else "done" for n in range(20)]


async def test_a_cancel_from_outside_stays_a_cancel() -> None:
    deadlines = Deadlines(5)

    async def held() -> None:
        async with deadlines():
            await asyncio.sleep(5)

    task = asyncio.create_task(held())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_an_error_inside_the_block_passes_through() -> None:
    deadlines = Deadlines(5)
    with pytest.raises(KeyError):
        async with deadlines():
            raise KeyError("x")


async def test_a_handler_past_its_deadline_is_acked_timeout() -> None:
    async def slow(sid: str, data: object) -> dict[str, object]:
        await asyncio.sleep(5)
        return {"ok": True}

    event = guarded("message:send", slow, timeout=0.2)
    answer = await event("sid-1", {})
    assert answer == error("Timeout", "no answer in time; sending it again is safe")


def test_deadlines_used_again_on_another_loop_still_fire() -> None:
    deadlines = Deadlines(0.2)

    async def held() -> str:
        try:
            async with deadlines():
                await asyncio.sleep(5)
        except TimeoutError:
            return "timeout"
        return "done"

    async def left_running() -> None:
        asyncio.get_running_loop().create_task(held())  # its loop closes with it in hand
        await asyncio.sleep(0.01)

    asyncio.run(left_running())
    assert asyncio.run(held()) == "timeout"
