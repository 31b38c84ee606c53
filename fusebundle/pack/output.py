"""Where a pack's output goes: a regular file replaced atomically (a locked temporary file
beside it, renamed over it; the temporaries of dead packs removed), or a character device or
FIFO written into as it is."""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import tempfile
import time
from collections.abc import Callable, Iterable

from fusebundle.bundle import Entry, Members
from fusebundle.errors import UserError, shown


def check_output(out: str) -> None:
    """Refuse now an `out` that `pack` would refuse, before any image is fetched for it."""
    if out == "-":
        return
    target = output_target(out)
    if target is not None and not os.path.isdir(os.path.dirname(os.path.abspath(target))):
        raise UserError(f"{shown(out)}: directory "
                        f"{shown(os.path.dirname(os.path.abspath(target)))} does not exist")


# What -o may name, by the type of what is there: a regular file is replaced atomically, a
# character device or FIFO is written into (GNU tar's choice: -o /dev/null, -o >(gzip >x)),
# and anything else is refused rather than replaced (docker save refuses all of them).
_REFUSED = {stat.S_IFDIR: "is a directory",
            stat.S_IFBLK: "is a block device (a tar is never written over a disk)",
            stat.S_IFSOCK: "is a socket"}


def output_target(out: str) -> str | None:
    """The regular file to replace for `out` (a symlink's target), or None to write into it."""
    try:
        st = os.stat(out)
    except FileNotFoundError:
        if os.path.islink(out):
            raise UserError(f"{shown(out)}: is a dangling symlink (to {shown(os.readlink(out))}); "
                            "name the file itself") from None
        return out
    except OSError as e:
        raise UserError(f"{shown(out)}: cannot use as output: {e.strerror}") from None
    if stat.S_ISCHR(st.st_mode) or stat.S_ISFIFO(st.st_mode):
        return None
    if not stat.S_ISREG(st.st_mode):
        why = _REFUSED.get(stat.S_IFMT(st.st_mode), "is not a regular file")
        raise UserError(f"{shown(out)}: {why}; -o takes a file, a character device or a FIFO")
    return os.path.realpath(out)  # a symlink stays: its target is the file replaced


def write_to_stream(render: Callable[..., int], entries: Iterable[Entry | Members], out: str,
                    fmt: str, progress: Callable[[int], None] | None) -> int:
    """Write into a character device or FIFO as it is: nothing to rename, nothing to leave."""
    try:
        fd = os.open(out, os.O_WRONLY | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as e:
        raise UserError(f"{shown(out)}: cannot open: {e.strerror}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not (stat.S_ISCHR(mode) or stat.S_ISFIFO(mode)):  # replaced since the stat
            raise UserError(f"{shown(out)}: changed while opening it; try again")
        if os.isatty(fd):
            raise UserError(f"{shown(out)}: refusing to write a {fmt} to a terminal")
        return render(entries, fd, False, progress)
    except OSError as e:
        raise UserError(f"{shown(out)}: write failed: {e.strerror or e}") from None
    finally:
        os.close(fd)


def open_temp(out: str, target: str | None = None) -> tuple[int, str]:
    """A locked temporary file beside `target` (else `out`), to be renamed over it once complete.

    Messages name `out`, as the user wrote it.
    """
    target = target or out
    directory = os.path.dirname(os.path.abspath(target))
    if not os.path.isdir(directory):
        raise UserError(f"{shown(out)}: directory {shown(directory)} does not exist")
    if os.path.isdir(target):
        raise UserError(f"{shown(out)}: is a directory")
    prefix = "." + os.path.basename(target) + ".fusebundle-"
    try:
        _clean_dead_temps(directory, prefix)
        return _locked_temp(directory, prefix)
    except OSError as e:
        raise UserError(f"{shown(out)}: cannot create a file in {shown(directory)}: "
                        f"{e.strerror}") from None


def finish_temp(fd: int) -> None:
    """Make a complete temporary output durable, with the mode a new file would have."""
    os.fsync(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)


def _locked_temp(directory: str, prefix: str) -> tuple[int, str]:
    """A new temporary file for the output, under a name ending in .part only once it is locked:
    the lock, held until the rename, tells a later pack that its writer is alive."""
    fd, new = tempfile.mkstemp(dir=directory, prefix=prefix, suffix=".new")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        tmp = new.removesuffix(".new") + ".part"
        os.rename(new, tmp)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(new)
        raise
    return fd, tmp


NEW_STALE = 60.0  # seconds: a .new file is locked and renamed within microseconds of its birth


def _clean_dead_temps(directory: str, prefix: str) -> None:
    """Remove the temporary files of earlier packs to the same output whose writer died."""
    now = time.time()
    for n in os.listdir(directory):
        if not n.startswith(prefix) or not n.endswith((".part", ".new")):
            continue
        path = os.path.join(directory, n)
        if n.endswith(".new"):  # (killed between creating and locking it)
            with contextlib.suppress(OSError):
                if now - os.lstat(path).st_mtime < NEW_STALE:
                    continue
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # a live pack is writing it
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        finally:
            os.close(fd)
