"""`fusebundle mount` and `fusebundle umount`: serve the tree as a read-only FUSE mount.

    fusebundle mount system.yml /mnt/sys            # returns once the mount answers
    fusebundle mount --expand system.yml /mnt/sys   # every bundle's rootfs/ shows its root
    fusebundle umount /mnt/sys                      # returns after the server has exited

By default the server runs in the background: the command forks, the child (in a session of
its own) loads the configs, inspects the images and mounts, and tells the parent through a
pipe once a stat of the mount point has been answered.  Until then the child writes to the
terminal, so any error shows there and becomes the command's exit status; afterwards its log
goes to --log (default: mount.log in the cache directory).  SIGINT, SIGTERM and SIGHUP
unmount and end the server with status 0.

The server's PID is kept in a small file keyed by the mount point, so that `umount` can wait
for it to exit after unmounting.  `umount` also clears a mount whose server was killed
("Transport endpoint is not connected").
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import hashlib
import logging
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fusebundle.atomic import Temp, atomic_file
from fusebundle.bundle import View, build_view, image_view
from fusebundle.cli.session import load_session, open_image
from fusebundle.errors import UserError, shown
from fusebundle.images import default_cache_dir

log = logging.getLogger("fusebundle")

FSNAME = "fusebundle"
FSTYPE = "fuse." + FSNAME
UMOUNT_TIMEOUT = 30.0
DIRECT_IO_OPT = "direct_io_min="


# ------------------------------------------------------------------------------ the CLI
def add_mount_args(m: argparse.ArgumentParser,
                   common: Callable[[argparse.ArgumentParser], None]) -> None:
    """The arguments of `mount` (its parser, made by the fusebundle command)."""
    m.description = ("Mount the tree of bundles read-only at MNT. Nothing is extracted: files "
                     "are read from the cached image exports on demand, and an image is "
                     "exported the first time its part of the tree is used.")
    common(m)
    m.add_argument("mountpoint", metavar="MNT", help="an empty directory")
    m.add_argument("--expand", action="store_true",
                   help="show each container's root in its bundle's rootfs/ (so that "
                        "`runc run --bundle` needs no mounts of its own)")
    m.add_argument("-f", "--foreground", action="store_true",
                   help="serve in the foreground, logging to stderr, until unmounted or "
                        "interrupted")
    m.add_argument("-o", dest="options", action="append", default=[], metavar="OPT[,OPT]",
                   help="extra FUSE mount options, e.g. allow_other")
    m.add_argument("--listing", choices=("plus", "lean", "plain", "auto", "adaptive"),
                   default=None,
                   help="what directory listings carry: plus every entry's attributes, best "
                        "when entries are then stat'ed (tar, ls -l, runc); lean attributes for "
                        "directories only and plain names and types only, both cheaper for "
                        "walks that only descend (find) but a lookup per file stat'ed later; "
                        "auto lets the kernel choose per directory; adaptive (the default "
                        "with the patched pyfuse3 of scripts/setup, else plus) is lean until "
                        "callers stat the files listed, then plus for the rest of the mount")
    m.add_argument("--log", metavar="FILE",
                   help="where the background server logs (default: mount.log in the cache "
                        "directory)")
    m.set_defaults(run=cmd_mount)


def add_umount_args(u: argparse.ArgumentParser) -> None:
    """The arguments of `umount` (its parser, made by the fusebundle command)."""
    u.description = ("Unmount MNT and wait until its server has exited; also clears a stale "
                     "mount left by a server that was killed.")
    u.add_argument("mountpoint", metavar="MNT")
    u.add_argument("-l", "--lazy", action="store_true",
                   help="detach the mount even while it is busy")
    u.add_argument("--timeout", type=float, default=UMOUNT_TIMEOUT, metavar="SECONDS",
                   help=f"how long to wait for the server (default {UMOUNT_TIMEOUT:g})")
    u.set_defaults(run=cmd_umount)


# ------------------------------------------------------------------------------ mount table
@dataclass
class MountEntry:
    point: str
    fstype: str
    source: str


def _unescape(field: str) -> str:
    # /proc/self/mountinfo writes space, tab, newline and backslash as \ooo.
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mounts() -> list[MountEntry]:
    """The mounts this process sees, in mount order."""
    out = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            left, sep, right = line.partition(" - ")
            fields = left.split()
            rest = right.split()
            if not sep or len(fields) < 5 or len(rest) < 2:
                continue
            out.append(MountEntry(_unescape(fields[4]), rest[0], _unescape(rest[1])))
    return out


def find_mount(path: str) -> MountEntry | None:
    """The topmost mount at exactly `path`, or None."""
    found = None
    for m in mounts():
        if m.point == path:
            found = m
    return found


def _stale(path: str) -> bool:
    """True if the FUSE mount at `path` has lost its server (statfs is never cached)."""
    try:
        os.statvfs(path)
    except OSError as e:
        return e.errno in (errno.ENOTCONN, errno.ECONNABORTED)
    return False


# ------------------------------------------------------------------------------ pid files
def _run_dir() -> str:
    if os.geteuid() == 0:
        return "/run/fusebundle"
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isdir(xdg):
        return os.path.join(xdg, "fusebundle")
    return f"/tmp/fusebundle-{os.geteuid()}"


def _pid_file(mnt: str) -> str:
    digest = hashlib.sha256(os.fsencode(mnt)).hexdigest()[:20]
    return os.path.join(_run_dir(), digest + ".pid")


def _pid_temp(pid_file: str) -> Temp:
    """`<pid file>.<our pid>.tmp`: one writer per process, so the name needs no randomness."""
    path = f"{pid_file}.{os.getpid()}.tmp"
    return Temp(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666), path)


def _write_pid_file(mnt: str) -> str | None:
    path = _pid_file(mnt)
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        with atomic_file(path, _pid_temp(path)) as t:
            os.write(t.fd, f"{os.getpid()}\n{mnt}\n".encode())
        return path
    except OSError as e:
        log.warning("cannot write %s (umount will not wait for the server): %s", path,
                    e.strerror)
        return None


def _alive(pid: int) -> bool:
    """True while `pid` runs (a zombie counts as exited)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rpartition(b")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state not in (b"Z", b"X")


def _server_pid(mnt: str) -> int | None:
    """The PID of the server of `mnt`, if its pid file names a live fusebundle process."""
    try:
        with open(_pid_file(mnt)) as f:
            pid_text, point = (f.read().split("\n") + [""])[:2]
        pid = int(pid_text)
    except (OSError, ValueError):
        return None
    if point != mnt or not _alive(pid):
        return None
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if b"fusebundle" not in f.read():
                return None
    except OSError:
        return None
    return pid


# ------------------------------------------------------------------------------ mount
def _check_mountpoint(arg: str) -> str:
    """The absolute mount point; UserError unless it is an empty directory, not a mount."""
    path = os.path.realpath(arg)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise UserError(f"{shown(arg)}: mount point does not exist") from None
    except OSError as e:
        if e.errno == errno.ENOTCONN:
            raise UserError(f"{shown(arg)}: a stale mount is there (its server is gone); "
                            f"clear it with: fusebundle umount {shown(arg)}") from None
        raise UserError(f"{shown(arg)}: {e.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise UserError(f"{shown(arg)}: mount point is not a directory")
    m = find_mount(path)
    if m is not None:
        if _stale(path):
            raise UserError(f"{shown(arg)}: a stale mount is there (its server is gone); "
                            f"clear it with: fusebundle umount {shown(arg)}")
        raise UserError(f"{shown(arg)}: already a mount point ({m.fstype})")
    try:
        if os.listdir(path):
            raise UserError(f"{shown(arg)}: mount point is not empty")
    except OSError as e:
        raise UserError(f"{shown(arg)}: {e.strerror}") from None
    return path


def _options(args: argparse.Namespace) -> set[str]:
    opts = {f"fsname={FSNAME}", f"subtype={FSNAME}", "ro", "default_permissions"}
    for group in args.options:
        for opt in group.split(","):
            opt = opt.strip()
            if not opt:
                continue
            if opt.startswith(DIRECT_IO_OPT):
                continue  # ours, not the kernel's: see _direct_io_min
            if opt in ("rw", "default_permissions", "ro") or opt.startswith(("fsname=",
                                                                             "subtype=")):
                if opt == "rw":
                    raise UserError("-o rw: the mount is read-only")
                continue
            opts.add(opt)
    return opts


def _direct_io_min(args: argparse.Namespace) -> int:
    """`-o direct_io_min=BYTES`: files at least that large are read without the page cache."""
    value = 0
    for group in args.options:
        for opt in group.split(","):
            opt = opt.strip()
            if opt.startswith(DIRECT_IO_OPT):
                text = opt[len(DIRECT_IO_OPT):]
                if not text.isdigit():
                    raise UserError(f"-o {opt}: expected a size in bytes")
                value = int(text)
    return value


def _setup_logging(mnt: str, debug: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(
        f"%(asctime)s fusebundle[%(process)d] {mnt}: %(levelname)s: %(message)s"))
    for name in ("fusebundle", "pyfuse3"):
        lg = logging.getLogger(name)
        lg.handlers[:] = [handler]
        lg.setLevel(logging.DEBUG if debug else logging.INFO)
        lg.propagate = False
    if not debug:
        logging.getLogger("pyfuse3").setLevel(logging.WARNING)


def cmd_mount(args: argparse.Namespace) -> int:
    """fusebundle mount: serve in the foreground, or fork a server and wait until it answers."""
    if args.foreground:
        return serve(args, None)
    sys.stdout.flush()
    sys.stderr.flush()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        os.setsid()
        return serve(args, w)
    os.close(w)
    return _wait_ready(pid, r)


def _wait_ready(pid: int, r: int) -> int:
    """Parent side: 0 once the server says it answers, else the server's own exit status."""
    try:
        with os.fdopen(r, "rb") as f:
            msg = f.read(1)
        if msg == b"\0":
            return 0
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        if code == 0:
            print("fusebundle: the mount server exited before the mount answered",
                  file=sys.stderr)
            return 1
        return code if code > 0 else 128 - code
    except BaseException:
        # Interrupted while waiting: the server must not come up behind the user's back.
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
        raise


def serve(args: argparse.Namespace, ready_fd: int | None) -> int:
    """Load, mount and serve until unmounted or signalled; `ready_fd` gets a byte once up."""
    # The one place pyfuse3 and trio are imported: no other command pays for them.
    from fusebundle import fs

    mnt = _check_mountpoint(args.mountpoint)
    options = _options(args)
    direct_io_min = _direct_io_min(args)
    quiet = args.quiet
    args.quiet = True  # no progress bars from a file system server
    args.cache_dir = os.path.abspath(args.cache_dir or default_cache_dir())
    log_path = os.path.abspath(args.log or os.path.join(args.cache_dir, "mount.log"))
    _setup_logging(mnt, args.debug)
    log_fd = _open_log(log_path) if ready_fd is not None else -1
    make_view = getattr(args, "make_view", None) or _config_view
    tree = fs.Tree(make_view(args), expand=args.expand)
    ops = fs.Operations(tree, listing=getattr(args, "listing", None),
                     direct_io_min=direct_io_min)
    _mount(lambda: fs.serve.init(ops, mnt, options), args.mountpoint)
    pid_file = _write_pid_file(mnt)
    if ready_fd is not None:
        os.chdir("/")

    def ready() -> None:
        if ready_fd is None:
            if not quiet:
                print(f"fusebundle: serving {mnt}; Ctrl-C or `fusebundle umount {mnt}` "
                      f"ends it", file=sys.stderr)
            return
        _detach(log_fd)
        log.info("mounted")
        os.write(ready_fd, b"\0")
        os.close(ready_fd)

    try:
        fs.serve.run(mnt, ready)
    finally:
        fs.serve.close()
        ops.close_sources()
        if pid_file is not None:
            with contextlib.suppress(OSError):
                os.unlink(pid_file)
    log.info("unmounted")
    return 0


def _config_view(args: argparse.Namespace) -> View:
    cfg, session = load_session(args)
    return build_view(cfg, session.resolve, share_by_id=args.share_by_id,
                      resolve_layout=session.resolve_layout)


def _image_view(args: argparse.Namespace) -> View:
    return image_view(open_image(args, args.image), layers=args.layers)


def add_image_mount(verbs: Any, image_args: Callable[[argparse.ArgumentParser], None]) -> None:
    """Register `image mount` among the image verbs."""
    m = verbs.add_parser(
        "mount", help="serve one image's filesystem read-only at MNT",
        description="Mount the image's root filesystem read-only at MNT, as its layers make "
                    "it (no docker artefacts); files are read from the stored layers on "
                    "demand. Returns once mounted; `fusebundle umount MNT` ends it.")
    image_args(m)
    m.add_argument("image", metavar="IMAGE")
    m.add_argument("mountpoint", metavar="MNT", help="an empty directory")
    m.add_argument("--layers", action="store_true",
                   help="the merged tree at MNT/rootfs and each layer's own tree (whiteouts "
                        "shown as the entries they are) at MNT/layers/NN-<diff_id hex>/")
    m.add_argument("-f", "--foreground", action="store_true",
                   help="serve in the foreground until unmounted or interrupted")
    m.add_argument("-o", dest="options", action="append", default=[], metavar="OPT[,OPT]",
                   help="extra FUSE mount options, e.g. allow_other")
    m.add_argument("--log", metavar="FILE",
                   help="where the background server logs (default: mount.log in the cache "
                        "directory)")
    m.set_defaults(run=cmd_mount, make_view=_image_view, expand=False, listing=None)


LIBFUSE_SAYS = 4096  # bytes of libfuse's (and fusermount3's) stderr kept: a line or two


def _mount(init: Callable[[], None], arg: str) -> None:
    """Run pyfuse3.init with stderr caught: libfuse and fusermount3 print their reason there,
    which a failure then says once, in fusebundle's own line."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            init()
            failed = False
        except RuntimeError:
            failed = True
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        caught.seek(0)
        said = caught.read(LIBFUSE_SAYS).decode("utf-8", "replace")
    lines = [line.strip() for line in said.splitlines() if line.strip()]
    if not failed:
        for line in lines:  # warnings of a mount that worked are still worth seeing
            print(f"fusebundle: warning: {line}", file=sys.stderr)
        return
    reason = lines[-1] if lines else "libfuse gave no reason"
    for prefix in ("fusermount3: ", "fusermount: ", "fuse: ", "mount failed: "):
        reason = reason.removeprefix(prefix)
    raise UserError(f"{shown(arg)}: mount failed: {reason}")


def _open_log(path: str) -> int:
    """The background server's log, opened before anything can go wrong; -1 if it cannot be."""
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:
        print(f"fusebundle: warning: {path}: {e.strerror}; the server will not log",
              file=sys.stderr)
        return -1


def _detach(log_fd: int) -> None:
    """Point stdin at /dev/null and stdout/stderr at the log: the caller's pipes close."""
    null = os.open(os.devnull, os.O_RDWR)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.dup2(log_fd if log_fd >= 0 else null, 2)
    os.close(null)
    if log_fd >= 0:
        os.close(log_fd)


# ------------------------------------------------------------------------------ umount
def _unmount(mnt: str, lazy: bool) -> None:
    fusermount = shutil.which("fusermount3") or shutil.which("fusermount")
    cmds = []
    if fusermount:
        cmds.append([fusermount, "-u", *(["-z"] if lazy else []), "-q", mnt])
    cmds.append(["umount", *(["-l"] if lazy else []), mnt])
    why = ""
    for cmd in cmds:
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, check=False)
        except OSError as e:
            why = e.strerror or str(e)
            continue
        if r.returncode == 0 or find_mount(mnt) is None:
            return
        why = (r.stderr.strip().splitlines() or [f"exit status {r.returncode}"])[-1]
    if "busy" in why.lower():
        raise UserError(f"{shown(mnt)}: busy (a process uses it); close it, or use umount --lazy")
    raise UserError(f"{shown(mnt)}: cannot unmount: {why}")


def cmd_umount(args: argparse.Namespace) -> int:
    """fusebundle umount: unmount, then wait for the server to exit."""
    mnt = os.path.realpath(os.path.abspath(args.mountpoint))
    m = find_mount(mnt)
    if m is None:
        raise UserError(f"{shown(args.mountpoint)}: not mounted")
    if m.fstype != FSTYPE:
        raise UserError(f"{shown(args.mountpoint)}: not a fusebundle mount (it is {m.fstype})")
    pid = _server_pid(mnt)
    _unmount(mnt, args.lazy or _stale(mnt))
    if pid is not None:
        deadline = time.monotonic() + args.timeout
        while _alive(pid):
            if time.monotonic() > deadline:
                raise UserError(f"{shown(args.mountpoint)}: unmounted, but its server (pid {pid}) "
                                f"has not exited after {args.timeout:g} s")
            time.sleep(0.02)
    with contextlib.suppress(OSError):
        if _server_pid(mnt) is None:
            os.unlink(_pid_file(mnt))
    return 0
