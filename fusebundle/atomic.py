"""One way to write a file whole or not at all, used by every writer of the store, the cache,
the pack output and the mount's pid file.

The bytes go to a temporary name in the target's directory; on a clean exit the file is
fsynced, renamed over the target and the directory fsynced (the rename itself must survive a
crash, or a reader could find the old file, or none, after it); on any error the temporary file
is removed.  Each writer keeps its own temporary name: a later run recognises (and removes) what
a killed one left by that name, and the fault tests plant files by it.
"""

from __future__ import annotations

import contextlib
import os
import random
import string
from collections.abc import Iterator
from dataclasses import dataclass

# tempfile's alphabet and length for the random part of a name (so names keep their shape).
_ALPHABET = string.ascii_lowercase + string.digits + "_"
_RANDOM_CHARS = 8


@dataclass(frozen=True)
class Temp:
    """The temporary file being written: its descriptor and its name."""

    fd: int
    path: str


@dataclass(frozen=True)
class TempName:
    """Temporary names `prefix` + 8 random characters + `suffix`, as tempfile.mkstemp makes."""

    prefix: str = "tmp"
    suffix: str = ".part"

    def create(self, directory: str, claimed: list[str]) -> Temp:
        """A new file (mode 0600) under a fresh name; the name is in `claimed` before the file
        exists, so that an interrupt at any point leaves nothing its caller cannot remove."""
        rng = random.SystemRandom()
        while True:
            name = "".join(rng.choice(_ALPHABET) for _ in range(_RANDOM_CHARS))
            path = os.path.join(directory, self.prefix + name + self.suffix)
            claimed.append(path)
            try:
                return Temp(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                                    0o600), path)
            except FileExistsError:
                claimed.pop()


def fsync_dir(directory: str) -> None:
    """Make a rename in `directory` durable; quietly nothing where directories cannot be."""
    with contextlib.suppress(OSError):
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


@contextlib.contextmanager
def atomic_file(path: str, temp: TempName | Temp | None = None,
                mode: int | None = None) -> Iterator[Temp]:
    """Yield a temporary file beside `path` (named by `temp`, default `tmp*.part`, or one the
    caller made; write through its fd, which stays ours to close); on a clean exit fsync it,
    rename it to `path` and fsync the directory; on an error remove it."""
    directory = os.path.dirname(os.path.abspath(path))
    claimed: list[str] = []
    t: Temp | None = None
    try:
        if isinstance(temp, Temp):
            claimed.append(temp.path)
            t = temp
        else:
            t = (temp or TempName()).create(directory, claimed)
        yield t
        if mode is not None:  # 0600 until complete: a partial file is for no one else to read
            with contextlib.suppress(OSError):
                os.fchmod(t.fd, mode)
        os.fsync(t.fd)
        os.replace(t.path, path)
    except BaseException:
        # On a failing disk even this may fail: the writer's next run removes it by its name.
        for name in claimed:
            with contextlib.suppress(OSError):
                os.unlink(name)
        raise
    finally:
        if t is not None:
            os.close(t.fd)  # after the rename: a lock on it (pack's) says "alive" until then
    fsync_dir(directory)
