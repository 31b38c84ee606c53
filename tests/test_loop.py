"""The polling wait that replaces pyfuse3's, on a real pipe standing in for /dev/fuse."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import trio
import trio.testing

from fusebundle import loop


class Stock:
    """pyfuse3's own wait: counts calls and blocks until released."""

    def __init__(self) -> None:
        self.calls = 0
        self.release: trio.Event | None = None

    async def __call__(self) -> bool:
        self.calls += 1
        self.release = trio.Event()
        await self.release.wait()
        return True


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    r, w = os.pipe()
    yield r, w
    os.close(r)
    os.close(w)


def test_a_queued_request_is_taken_without_parking(pipe):
    r, w = pipe
    stock = Stock()
    waiter = loop._Waiter(r, stock)
    os.write(w, b"x")

    async def main() -> list[bool]:
        return [await waiter() for _ in range(10)]

    assert trio.run(main) == [True] * 10
    assert stock.calls == 0


def test_an_idle_fd_parks_in_the_stock_wait(pipe):
    r, _ = pipe
    stock = Stock()
    waiter = loop._Waiter(r, stock)

    async def main() -> bool:
        async with trio.open_nursery() as n:
            got: list[bool] = []

            async def call() -> None:
                got.append(await waiter())

            n.start_soon(call)
            await trio.testing.wait_all_tasks_blocked()
            assert stock.calls == 1 and not got
            assert stock.release is not None
            stock.release.set()
        return got[0]

    assert trio.run(main) is True


def test_a_second_task_retires_while_one_is_parked(pipe):
    r, w = pipe
    stock = Stock()
    waiter = loop._Waiter(r, stock)

    async def main() -> list[bool]:
        got: list[bool] = []
        async with trio.open_nursery() as n:

            async def call() -> None:
                got.append(await waiter())

            n.start_soon(call)
            await trio.testing.wait_all_tasks_blocked()
            os.write(w, b"x")  # even with a request queued, only the parked task may read
            got.append(await waiter())
            assert stock.release is not None
            stock.release.set()
        return got

    assert trio.run(main) == [False, True]
    assert stock.calls == 1


def test_trio_gets_a_turn_every_so_often(pipe):
    r, w = pipe
    stock = Stock()
    waiter = loop._Waiter(r, stock)
    os.write(w, b"x")

    async def main() -> None:
        async with trio.open_nursery() as n:

            async def release_when_parked() -> None:
                while True:
                    await trio.testing.wait_all_tasks_blocked()
                    if stock.release is not None and not stock.release.is_set():
                        stock.release.set()

            n.start_soon(release_when_parked)
            for _ in range(loop.YIELD_EVERY * 3):
                assert await waiter()
            n.cancel_scope.cancel()

    trio.run(main)
    assert stock.calls == 3
