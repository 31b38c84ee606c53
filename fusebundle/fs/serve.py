"""The mount's server: init the FUSE session, serve requests and signals under trio, close."""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable

import pyfuse3
import trio

from fusebundle.fs import loop
from fusebundle.fs.ops import Operations

log = logging.getLogger("fusebundle")

# libfuse 3 reads up to 1 MiB per request.  Deeper windows (4 and 16 MiB) were measured slower
# for cat: the reader's own page-cache work grows and no READ is saved.
READ_AHEAD_KB = 1024


def init(ops: Operations, mnt: str, options: set[str]) -> None:
    """Mount `ops` at `mnt` (RuntimeError if libfuse cannot; it says why on stderr)."""
    pyfuse3.init(ops, mnt, options)


def run(mnt: str, ready: Callable[[], None]) -> None:
    """Serve until unmounted or signalled; `ready` runs once a stat of `mnt` is answered."""
    trio.run(_main, mnt, ready)


def close() -> None:
    """End the FUSE session and unmount."""
    pyfuse3.close(unmount=True)


def _read_ahead(dev: int) -> None:
    """Let the kernel read ahead up to the largest FUSE read (the default is 128 KiB)."""
    path = f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb"
    try:
        with open(path, "w") as f:
            f.write(f"{READ_AHEAD_KB}\n")
    except OSError as e:
        log.debug("cannot set %s: %s", path, e.strerror)


async def _main(mnt: str, ready: Callable[[], None]) -> None:
    async with trio.open_nursery() as nursery:

        async def fuse_main() -> None:
            try:
                await loop.main(pyfuse3)
            finally:
                nursery.cancel_scope.cancel()

        async def signals() -> None:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM,
                                           signal.SIGHUP) as received:
                async for signum in received:
                    log.info("%s: unmounting", signal.Signals(signum).name)
                    loop.terminate(pyfuse3)
                    return

        async def announce() -> None:
            # The kernel answers this stat through our own loop: proof that the mount serves.
            try:
                st = await trio.to_thread.run_sync(os.stat, mnt)
            except OSError as e:
                log.error("the mount does not answer: %s", e.strerror)
                loop.terminate(pyfuse3)
                return
            _read_ahead(st.st_dev)
            ready()

        nursery.start_soon(fuse_main)
        nursery.start_soon(signals)
        nursery.start_soon(announce)
