"""How the server waits for the next FUSE request: poll first, park in trio only when idle.

pyfuse3's session loop parks a task in trio's epoll (a lock, a registration, a full scheduler
pass) before every request, even when the next one is already queued.  On the 2-core bench
machine that costs more than the request itself: an open+close pair took 115 µs, of which our
handlers are a few.  `install` replaces that wait with one that first polls /dev/fuse for a
short spin and returns at once when a request is there; only an idle server parks in trio.
Polling while busy also keeps this CPU awake, so the kernel need not wake it for the next
request (a vCPU wake-up is dear in a VM).  Measured: open+close 115 → 26 µs.

The replacement keeps pyfuse3's rule that only one task waits on the fd: a task finding
another already parked retires instead of queueing behind it, so a handler awaiting a thread
never stops the others, and a request is never read by two tasks.
"""

from __future__ import annotations

import logging
import os
import select
import time
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger(__name__)

SPIN = 50e-6  # seconds to poll for the next request before parking in trio
YIELD_EVERY = 64  # requests taken without parking before trio gets a turn anyway
# pyfuse3 starts a task whenever it reads a request while none is parked, up to this many; the
# extra ones end at the next park.  It bounds the handlers that may await (a read from disk,
# an image's first export) at once, and the tasks started and ended per YIELD_EVERY requests.
MAX_TASKS = 4


class _Waiter:
    """The replacement for pyfuse3's `_wait_fuse_readable`."""

    def __init__(self, fd: int, parked_wait: Callable[[], Awaitable[bool]]) -> None:
        self._poll = select.poll()
        self._poll.register(fd, select.POLLIN)
        self._parked_wait = parked_wait
        self._parked = False  # a task is inside pyfuse3's own wait (never more than one)
        self._taken = 0

    def _queued(self) -> bool:
        """Whether a request is queued now or within SPIN seconds."""
        poll = self._poll.poll
        if poll(0):
            return True
        end = time.perf_counter() + SPIN
        while time.perf_counter() < end:
            if poll(0):
                return True
        return False

    async def __call__(self) -> bool:
        if self._parked:
            return False  # another task already waits for the fd: this one ends
        # Nobody else waits on the fd, so between this poll and pyfuse3's read of the request
        # (no await in between) no other task can take it.
        self._taken += 1
        if self._taken % YIELD_EVERY and self._queued():
            return True
        self._parked = True
        try:
            return await self._parked_wait()
        finally:
            self._parked = False


def _fuse_fd() -> int | None:
    """This process's one open /dev/fuse descriptor, or None if there is not exactly one."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == "/dev/fuse":
                found.append(int(name))
        except OSError:
            continue  # the listing's own descriptor, already closed
    return found[0] if len(found) == 1 else None


async def main(pyfuse3: Any) -> None:
    """Run pyfuse3's main loop (after `pyfuse3.init`) with the polling wait when possible."""
    stock = getattr(pyfuse3, "_wait_fuse_readable", None)
    fd = _fuse_fd()
    if stock is None or fd is None:
        log.debug("pyfuse3's request wait left as it is (fd %s, hook %s)", fd, stock)
        await pyfuse3.main()
        return
    pyfuse3._wait_fuse_readable = _Waiter(fd, stock)
    try:
        await pyfuse3.main(max_tasks=MAX_TASKS)
    finally:
        pyfuse3._wait_fuse_readable = stock
