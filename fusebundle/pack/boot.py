"""kernel+initrd: the tree split as LinuxKit's kernel+initrd output splits it.

boot/kernel becomes OUT-kernel and boot/cmdline OUT-cmdline; boot/ucode.cpio goes uncompressed
ahead of the gzip'd cpio of everything else in OUT-initrd.img. Other boot/ files are left out,
as LinuxKit leaves them out; the boot directory itself stays in the cpio.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable

from fusebundle import testhook
from fusebundle.bundle import Entry
from fusebundle.errors import UserError
from fusebundle.pack.cpio import CpioWriter, Sources
from fusebundle.pack.output import finish_temp, open_temp

KERNEL, INITRD, CMDLINE = "-kernel", "-initrd.img", "-cmdline"  # LinuxKit's names
COPY = 1 << 20  # the gzip'd cpio is copied behind the ucode this much at a time


def refuse_stdout(out: str) -> None:
    """kernel+initrd is three files: stdout cannot take them."""
    if out == "-":
        raise UserError(f"kernel+initrd writes three files (OUT{KERNEL}, OUT{INITRD}, "
                        f"OUT{CMDLINE}): give -o OUT, not -o -")


def _write_all(fd: int, data: bytes) -> None:
    with memoryview(data) as view:
        while view:
            view = view[os.write(fd, view):]


class _Split:
    """The renderer: boot files to their own outputs, the rest into the initrd's cpio."""

    def __init__(self, fds: dict[str, int], progress: Callable[[int], None] | None) -> None:
        self.fds = fds
        self.progress = progress
        self.sources = Sources()
        self.cpio = CpioWriter(fds[INITRD], self.sources, progress)
        self.kernel = False
        self.ucode: Entry | None = None

    def add(self, e: Entry) -> None:
        if e.path == b"boot/kernel":
            self.kernel = True
            self._copy(e, self.fds[KERNEL])
        elif e.path == b"boot/cmdline":
            self._copy(e, self.fds[CMDLINE])
        elif not e.path.startswith(b"boot/"):
            self.cpio.add(e)
        else:
            if e.path == b"boot/ucode.cpio":
                self.ucode = e  # it leads the initrd: written once the cpio is complete
            if self.progress and e.type == "f":
                self.progress(e.size)  # (the bar's total counts every file of the tree)

    def _copy(self, e: Entry, fd: int) -> None:
        if e.type != "f":
            raise UserError(f"{e.path.decode(errors='replace')}: not a regular file")
        for chunk in self.sources.body_chunks(e):
            _write_all(fd, chunk)
        if self.progress:
            self.progress(e.size)

    def close(self) -> int:
        return self.cpio.close()


def write_kernel_initrd(entries: Iterable[Entry], out: str,
                        progress: Callable[[int], None] | None = None) -> int:
    """Write OUT-kernel, OUT-initrd.img and OUT-cmdline, all three or none; return bytes."""
    refuse_stdout(out)
    temps: dict[str, tuple[int, str]] = {}
    done: list[str] = []
    try:
        for suffix in (KERNEL, INITRD, CMDLINE):
            temps[suffix] = open_temp(out + suffix)
        split = _Split({s: fd for s, (fd, _) in temps.items()}, progress)
        try:
            for e in entries:
                split.add(e)
            split.close()
            if not split.kernel:
                raise UserError("kernel+initrd: the tree has no boot/kernel (the config needs "
                                "a kernel: section)")
            if split.ucode is not None:
                temps[INITRD] = _prepend(split.ucode, split.sources, temps[INITRD], out + INITRD)
        finally:
            split.sources.close()
        for fd, _ in temps.values():
            finish_temp(fd)
        testhook.stop_at("pack-write")
        for suffix, (_, tmp) in temps.items():
            os.replace(tmp, out + suffix)
            done.append(out + suffix)
        return sum(os.fstat(fd).st_size for fd, _ in temps.values())
    except BaseException as e:
        # A rename that fails after others succeeded: the set is incomplete, so none stays.
        for path in done:
            with contextlib.suppress(OSError):
                os.unlink(path)
        if isinstance(e, OSError):
            raise UserError(f"{out}: write failed: {e.strerror or e}") from None
        raise
    finally:
        for fd, tmp in temps.values():
            with contextlib.suppress(OSError):
                os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def _prepend(ucode: Entry, sources: Sources, cpio: tuple[int, str],
             out: str) -> tuple[int, str]:
    """A new initrd temporary: the ucode cpio as it is, then the gzip'd cpio copied after it."""
    fd, tmp = open_temp(out)
    try:
        for chunk in sources.body_chunks(ucode):
            _write_all(fd, chunk)
        src, src_tmp = cpio
        pos = 0
        while data := os.pread(src, COPY, pos):
            _write_all(fd, data)
            pos += len(data)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    os.close(src)
    os.unlink(src_tmp)
    return fd, tmp
