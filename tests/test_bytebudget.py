"""ByteBudget: bytes held at once stay under the limit, first come first served."""

from __future__ import annotations

import asyncio

import pytest

from dagster_gptimage._bytebudget import ByteBudget

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def _holder(budget: ByteBudget, size: int, log: list[str], name: str, gate: asyncio.Event):
    async with budget.hold(size):
        log.append(f"+{name}")
        await gate.wait()
    log.append(f"-{name}")


async def test_holders_wait_until_their_bytes_fit_in_arrival_order() -> None:
    budget = ByteBudget(10)
    log: list[str] = []
    gates = {name: asyncio.Event() for name in "abcd"}
    tasks = [
        asyncio.create_task(_holder(budget, size, log, name, gates[name]))
        for name, size in [("a", 6), ("b", 6), ("c", 2), ("d", 4)]
    ]
    await asyncio.sleep(0.01)
    # b does not fit beside a; c would, but does not overtake b.
    assert log == ["+a"]
    gates["a"].set()
    await asyncio.sleep(0.01)
    assert log == ["+a", "-a", "+b", "+c"]
    assert budget.held == 8
    gates["b"].set()
    await asyncio.sleep(0.01)
    assert log[-2:] == ["-b", "+d"]
    gates["c"].set()
    gates["d"].set()
    await asyncio.gather(*tasks)
    assert budget.held == 0


async def test_a_holder_larger_than_the_limit_goes_alone() -> None:
    budget = ByteBudget(10)
    log: list[str] = []
    small, big = asyncio.Event(), asyncio.Event()
    first = asyncio.create_task(_holder(budget, 1, log, "small", small))
    second = asyncio.create_task(_holder(budget, 50, log, "big", big))
    await asyncio.sleep(0.01)
    assert log == ["+small"]
    small.set()
    await asyncio.sleep(0.01)
    assert log == ["+small", "-small", "+big"]
    assert budget.held == 10
    big.set()
    await asyncio.gather(first, second)
    assert budget.held == 0


async def test_a_cancelled_waiter_takes_nothing_and_blocks_no_one() -> None:
    budget = ByteBudget(10)
    log: list[str] = []
    gates = {name: asyncio.Event() for name in "abc"}
    a = asyncio.create_task(_holder(budget, 8, log, "a", gates["a"]))
    await asyncio.sleep(0.01)
    b = asyncio.create_task(_holder(budget, 8, log, "b", gates["b"]))
    c = asyncio.create_task(_holder(budget, 2, log, "c", gates["c"]))
    await asyncio.sleep(0.01)
    assert log == ["+a"]
    b.cancel()
    await asyncio.sleep(0.01)
    assert log == ["+a", "+c"]
    assert budget.held == 10
    gates["a"].set()
    gates["c"].set()
    await asyncio.gather(a, c)
    with pytest.raises(asyncio.CancelledError):
        await b
    assert budget.held == 0


async def test_granted_then_cancelled_gives_its_bytes_back() -> None:
    budget = ByteBudget(10)
    log: list[str] = []
    first = budget.hold(10)
    await first.__aenter__()
    b = asyncio.create_task(_holder(budget, 10, log, "b", asyncio.Event()))
    await asyncio.sleep(0.01)
    await first.__aexit__(None, None, None)  # grants b's bytes without running it
    assert budget.held == 10
    b.cancel()
    with pytest.raises(asyncio.CancelledError):
        await b
    assert log == []
    assert budget.held == 0


def test_the_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        ByteBudget(0)
