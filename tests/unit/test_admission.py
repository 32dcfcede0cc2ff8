"""The gateway's front door without servers: caps, the Temporal breaker, honest RPC answers."""

from __future__ import annotations

import asyncio

import pytest
from temporalio.service import RPCError, RPCStatusCode

from gateway.acks import rpc_answer
from gateway.admission import BREAKER_FAILURES, Admission
from missive.config import Settings
from missive.errors import ProviderUnavailable, RateLimited
from missive.metrics import Metrics
from missive.ratelimit import SendLimiter, retry_after


def _settings(**overrides: object) -> Settings:
    return Settings(**overrides)  # type: ignore[arg-type]


async def _unavailable() -> None:
    raise RPCError("connection refused", RPCStatusCode.UNAVAILABLE, b"")


async def test_a_socket_at_its_in_flight_cap_is_refused_and_others_are_not() -> None:
    admission = Admission(_settings(send_max_in_flight_per_socket=2), None, None)
    async with admission.admit("s1", "u"), admission.admit("s1", "u"):
        with pytest.raises(RateLimited, match="waiting for their ack") as refused:
            async with admission.admit("s1", "u"):
                pass
        assert refused.value.retry_after is not None
        async with admission.admit("s2", "u"):
            assert admission.in_flight == 3
    assert admission.in_flight == 0
    async with admission.admit("s1", "u"):  # places are given back
        pass


async def test_a_process_at_its_cap_answers_unavailable() -> None:
    admission = Admission(_settings(gateway_max_in_flight=1), None, None)
    async with admission.admit("s1", "u"):
        with pytest.raises(ProviderUnavailable, match="at capacity"):
            async with admission.admit("s2", "v"):
                pass


async def test_the_breaker_opens_after_temporal_is_unavailable_and_closes_on_success() -> None:
    admission = Admission(_settings(), None, None)
    for _ in range(BREAKER_FAILURES):
        with pytest.raises(RPCError):
            await admission.temporal_call(_unavailable())
    with pytest.raises(ProviderUnavailable, match="Temporal is unavailable") as refused:
        async with admission.admit("s1", "u"):
            pass
    assert 0 < (refused.value.retry_after or 0) <= 2.0
    admission._open_until = 0.0  # the open period is over
    assert await admission.temporal_call(asyncio.sleep(0, "ok")) == "ok"
    async with admission.admit("s1", "u"):
        pass


def test_rpc_failures_become_timeout_or_unavailable_never_internal_error() -> None:
    def answer(status: RPCStatusCode, message: str = "x") -> str | None:
        ack = rpc_answer(RPCError(message, status, b""))
        return None if ack is None else ack["error"]["type"]

    assert answer(RPCStatusCode.DEADLINE_EXCEEDED) == "Timeout"
    assert answer(RPCStatusCode.CANCELLED) == "Timeout"
    assert answer(RPCStatusCode.UNAVAILABLE) == "ProviderUnavailable"
    assert answer(RPCStatusCode.RESOURCE_EXHAUSTED) == "ProviderUnavailable"
    assert answer(RPCStatusCode.FAILED_PRECONDITION, "Workflow Task in failed state.") == (
        "ProviderUnavailable"
    )
    assert answer(RPCStatusCode.INVALID_ARGUMENT) is None  # a bug: InternalError


class _Counting:
    """A bucket store in memory that counts how often it is asked."""

    def __init__(self, tokens: float) -> None:
        self.full, self.calls = tokens, 0
        self.tokens: dict[str, float] = {}

    async def take(self, user_id: str, *, rate: float, burst: int) -> tuple[bool, float]:
        self.calls += 1
        left = self.tokens.get(user_id, self.full)
        if left >= 1:
            self.tokens[user_id] = left - 1
            return True, left - 1
        return False, left


async def test_a_refused_user_is_answered_from_memory_until_their_bucket_refills() -> None:
    store = _Counting(tokens=2)
    limiter = SendLimiter(store, rate=2.0, burst=2)
    await limiter.take("u")
    await limiter.take("u")
    with pytest.raises(RateLimited) as first:
        await limiter.take("u")
    for _ in range(100):
        with pytest.raises(RateLimited):
            await limiter.take("u")
    assert store.calls == 3  # a flood past the limit costs no round trip
    assert first.value.retry_after == pytest.approx(0.5)
    await limiter.take("v")  # another user is asked of the store as usual
    assert store.calls == 4


def test_retry_after_is_the_time_to_one_whole_token() -> None:
    assert retry_after(0.0, 10.0) == pytest.approx(0.1)
    assert retry_after(0.75, 1.0) == pytest.approx(0.25)
    assert retry_after(1.5, 1.0) == 0.0


async def test_a_sockets_sends_take_turns_in_the_order_they_came() -> None:
    admission = Admission(_settings(), None, None)
    first, second, third = (admission.line_up("s1") for _ in range(3))
    other = admission.line_up("s2")
    await asyncio.wait_for(first.turn(), 1)
    await asyncio.wait_for(other.turn(), 1)  # another socket's line is its own
    waiting = asyncio.create_task(third.turn())
    with pytest.raises(TimeoutError):  # the second waits for the first...
        await asyncio.wait_for(second.turn(), 0.05)
    second.leave()  # ...and gives up (its deadline): the third must not overtake the first
    await asyncio.sleep(0.05)
    assert not waiting.done()
    first.leave()
    await asyncio.wait_for(waiting, 1)
    third.leave()
    other.leave()
    assert admission._last_in_line == {}  # nothing kept for sockets with no change in line


async def test_a_change_that_gave_up_as_the_last_in_line_lets_no_new_one_overtake() -> None:
    admission = Admission(_settings(), None, None)
    first, second = admission.line_up("s1"), admission.line_up("s1")
    second.leave()  # its deadline passed while the first still runs
    later = admission.line_up("s1")
    waiting = asyncio.create_task(later.turn())
    await asyncio.sleep(0.05)
    assert not waiting.done()
    first.leave()
    await asyncio.wait_for(waiting, 1)
    later.leave()
    await asyncio.sleep(0)  # the second's place ends in the turn the first's did
    assert admission._last_in_line == {}


async def test_the_wait_in_line_is_measured_for_each_admitted_change() -> None:
    metrics = Metrics()
    admission = Admission(_settings(), None, metrics)

    async def change(sid: str, data: object) -> dict[str, object]:
        async with admission.admit(sid, "u"):
            await asyncio.sleep(float(str(data)))
        return {"ok": True}

    ordered = admission.in_order(change)
    await asyncio.gather(ordered("s1", 0.05), ordered("s1", 0.0))
    waits = [x for m in metrics.gateway_change_wait_seconds.collect() for x in m.samples]
    count = next(x.value for x in waits if x.name.endswith("_count"))
    total = next(x.value for x in waits if x.name.endswith("_sum"))
    assert count == 2
    assert 0.04 <= total < 1.0  # the second waited out the first's 50 ms
