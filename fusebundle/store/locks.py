"""flock(2) on small lock files that `cache prune` may delete while others wait on them."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Iterator


def take(path: str, shared: bool = False, wait: bool = True) -> int | None:
    """Lock `path` (created if missing) and return the open fd; None if `wait` is False and
    another process holds a conflicting lock.

    A lock taken on a file that was unlinked meanwhile guards nothing, so the lock is taken
    again until the locked file is the one the path names.
    """
    mode = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if wait else fcntl.LOCK_NB)
    while True:
        fd = _open(path)
        if fd is None:
            return None
        try:
            fcntl.flock(fd, mode)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


def _open(path: str) -> int | None:
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:
        if e.errno not in (errno.EACCES, errno.EROFS, errno.EPERM):
            raise
    # A store we may only read: lock what is there; nobody can prune it through us.
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None


def release(fd: int | None) -> None:
    """Drop a lock taken by `take` (closing the fd releases it)."""
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)


@contextlib.contextmanager
def held(path: str, shared: bool = False) -> Iterator[None]:
    """`with held(path):` blocks until the lock is taken and drops it on the way out."""
    fd = take(path, shared)
    try:
        yield
    finally:
        release(fd)
