"""pack: render a view as one file: a PAX tar (`tarball`), a gzip'd newc cpio (`cpio`), or
LinuxKit's kernel+initrd triple (`boot`), each copying file data straight from the sources;
`output` says where the bytes go (a file replaced atomically, or a device or FIFO)."""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Callable, Iterable

from fusebundle import testhook
from fusebundle.atomic import Temp, atomic_file
from fusebundle.bundle import Entry, Members, View, flat
from fusebundle.errors import UserError, shown
from fusebundle.pack.boot import write_kernel_initrd
from fusebundle.pack.cpio import write_cpio
from fusebundle.pack.output import (
    check_output,
    finish_temp,
    open_temp,
    output_target,
    write_to_stream,
)
from fusebundle.pack.tarball import write_entries

__all__ = ["FORMATS", "check_output", "pack", "write"]

FORMATS = ("tar", "cpio", "kernel+initrd")


def pack(view: View, out: str, progress_factory: Callable[[int], Callable[[int], None]]
         | None = None, fmt: str = "tar") -> int:
    """Write the view to `out` (a path, or '-' for stdout) atomically; return bytes written.

    `fmt` is one of FORMATS: every format renders the same walk of the view's entries.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}")
    progress = None
    if progress_factory is not None:
        # From the indexes' columns (no data, no entry per member): the progress bar's total.
        progress = progress_factory(view.file_bytes())
    return write(view.pieces(), out, progress, fmt)


def write(entries: Iterable[Entry | Members], out: str,
          progress: Callable[[int], None] | None = None, fmt: str = "tar") -> int:
    """Write entries in `fmt` to `out` (a path written atomically, a device or FIFO, or '-'
    for stdout, never a terminal); return bytes written.  `pack` and `image export` end here.

    A graft's entries may come as one `Members`: the tar writer renders them from the index's
    columns, the other formats one entry at a time."""
    if fmt == "kernel+initrd":
        return write_kernel_initrd(flat(entries), out, progress)
    render = write_entries
    if fmt == "cpio":
        render, entries = write_cpio, flat(entries)
    if out == "-":
        fd = sys.stdout.fileno()
        if os.isatty(fd):
            raise UserError(f"refusing to write a {fmt} to a terminal; use -o FILE or a pipe")
        sys.stdout.flush()
        return render(entries, fd, stat.S_ISREG(os.fstat(fd).st_mode), progress)
    target = output_target(out)
    if target is None:
        return write_to_stream(render, entries, out, fmt, progress)
    temp = Temp(*open_temp(out, target))
    try:
        # The next pack to `out` removes the temporary file if even removing it fails here.
        with atomic_file(target, temp) as t:
            n = render(entries, t.fd, True, progress)
            finish_temp(t.fd)
            testhook.stop_at("pack-write")
        return n
    except OSError as e:
        raise UserError(f"{shown(out)}: write failed: {e.strerror or e}") from None
