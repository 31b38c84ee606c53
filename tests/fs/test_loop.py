"""The polling wait that replaces pyfuse3's, on a real pipe standing in for /dev/fuse."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import pytest
import trio
import trio.testing

from fusebundle.fs import loop


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
    for fd in (r, w):
        with contextlib.suppress(OSError):  # a test may have closed one
            os.close(fd)


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


def test_a_second_task_waits_as_a_spare_and_follows(pipe):
    r, w = pipe
    stock = Stock()
    waiter = loop._Waiter(r, stock)
    order: list[str] = []

    async def main() -> None:
        with trio.fail_after(5):
            await run()

    async def run() -> None:
        async with trio.open_nursery() as n:

            async def call(name: str) -> None:
                assert await waiter()
                order.append(name)

            n.start_soon(call, "first")
            await trio.testing.wait_all_tasks_blocked()
            os.write(w, b"x")  # even with a request queued, only the parked task may read it
            n.start_soon(call, "spare")
            await trio.testing.wait_all_tasks_blocked()
            assert order == [] and stock.calls == 1
            assert stock.release is not None
            stock.release.set()  # the parked task takes its request and wakes the spare

    trio.run(main)
    assert order == ["first", "spare"]
    assert stock.calls == 1  # the spare found the request queued: no second park


def test_spares_end_with_the_session(pipe):
    r, w = pipe
    stock = Stock()
    waiter = loop._Waiter(r, stock)
    got: list[bool] = []

    async def main() -> None:
        with trio.fail_after(5):
            await run()

    async def run() -> None:
        async with trio.open_nursery() as n:

            async def call() -> None:
                got.append(await waiter())

            for _ in range(3):
                n.start_soon(call)
            await trio.testing.wait_all_tasks_blocked()
            assert got == [] and stock.calls == 1
            waiter.close()  # what loop.terminate does
            await trio.testing.wait_all_tasks_blocked()
            assert got == [False, False]
            assert stock.release is not None
            stock.release.set()

    trio.run(main)
    assert got == [False, False, True]


def test_a_gone_fd_closes_the_waiter(pipe):
    r, w = pipe
    waiter = loop._Waiter(r, Stock())
    assert not waiter._gone()
    os.close(w)  # the writer goes away: POLLHUP, as /dev/fuse says POLLERR once unmounted

    async def main() -> None:
        async with trio.open_nursery() as n:
            n.start_soon(waiter.watch)
            await trio.sleep(loop.WATCH_EVERY * 1.5)
            assert waiter.closed

    trio.run(main)
    assert trio.run(waiter.__call__) is False


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


class CountingPoll:
    """The waiter's poll object, counting its calls."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.calls = 0

    def poll(self, timeout: int) -> list[tuple[int, int]]:
        self.calls += 1
        return self.inner.poll(timeout)  # type: ignore[attr-defined]


def test_a_missed_spin_parks_the_next_waits_at_once(pipe, monkeypatch):
    r, w = pipe
    monkeypatch.setattr(loop, "SPIN", 0.02)  # long enough to poll more than once, loaded or not
    waiter = loop._Waiter(r, Stock())
    counted = CountingPoll(waiter._poll)
    waiter._poll = counted
    assert waiter._queued() == 0  # nothing queued: spins for SPIN, then gives up
    spun = counted.calls
    assert spun > 1
    # The next wait looks once and parks; then two waits do, then four ...
    for skips in (1, 2, 4):
        for _ in range(skips):
            counted.calls = 0
            assert waiter._queued() == 0
            assert counted.calls == 1
        counted.calls = 0
        assert waiter._queued() == 0
        assert counted.calls > 1  # spun again, and missed again
    # A request there on the first look ends the back-off: the next empty wait spins.
    os.write(w, b"x")
    assert waiter._queued() != 0
    os.read(r, 1)
    counted.calls = 0
    assert waiter._queued() == 0
    assert counted.calls > 1


def test_without_back_off_every_empty_wait_spins(pipe, monkeypatch):
    r, _ = pipe
    monkeypatch.setattr(loop, "SPIN_BACKOFF", 0)
    monkeypatch.setattr(loop, "SPIN", 0.02)
    waiter = loop._Waiter(r, Stock())
    counted = CountingPoll(waiter._poll)
    waiter._poll = counted
    for _ in range(3):
        counted.calls = 0
        assert waiter._queued() == 0
        assert counted.calls > 1
