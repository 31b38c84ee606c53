"""The fusebundle command line: every user error ends as one line and a non-zero exit."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from fusebundle import __version__
from fusebundle.bundle import build_view
from fusebundle.bundle.view import image_label
from fusebundle.cli import mount as mountcmd
from fusebundle.cli.session import load_session
from fusebundle.config import runtime as oci
from fusebundle.errors import UserError
from fusebundle.images.resolver import SOURCES_HELP
from fusebundle.progress import Bar

EXIT_INTERRUPTED = 130


class _Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C so that cleanup code runs."""


def _on_sigterm(signum: int, frame: Any) -> NoReturn:
    raise _Terminated()


def _forget_interrupt() -> None:
    """Keep the exit status we return after a caught interrupt.

    CPython marks an interrupt that ends a string `exec` (dataclasses and namedtuples build
    their methods that way, so any import can be one) as unhandled even when it is caught,
    and under `python -m` then dies by SIGINT instead of exiting with our status. The next
    string evaluation clears that mark.
    """
    eval("None")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message}\n")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("configs", nargs="+", metavar="CONFIG.yml",
                   help="LinuxKit-style YAML files, merged in order")
    _sources(p)
    p.add_argument("--share-by-id", action="store_true",
                   help="share one copy between bundles whose images have the same ID, "
                        "not only the same name")


def _sources(p: argparse.ArgumentParser) -> None:
    """The flags of every command that resolves images."""
    p.add_argument("--from", dest="sources", action="append", metavar="SOURCE",
                   help=SOURCES_HELP)
    p.add_argument("--platform", metavar="OS/ARCH[/VARIANT]",
                   help="which image of a multi-platform index (default: this machine's)")
    p.add_argument("--insecure-registry", action="append", metavar="HOST[:PORT]",
                   help="a registry that may be reached over plain HTTP (repeatable; "
                        "localhost and 127.0.0.0/8 always may)")
    p.add_argument("--cert-dir", metavar="DIR",
                   help="a certs.d tree (DIR/HOST[:PORT]/*.crt CAs, *.cert + *.key client "
                        "certificates) used instead of /etc/docker/certs.d, "
                        "/etc/containers/certs.d and ~/.config/containers/certs.d")
    p.add_argument("--registry-mirror", action="append", metavar="URL",
                   help="a mirror of docker.io, tried before it (repeatable, in order; "
                        "as dockerd's registry-mirrors)")
    p.add_argument("--mirror", action="append", metavar="[REGISTRY=]URL",
                   help="a mirror of REGISTRY, or of every registry without REGISTRY=, "
                        "tried before it (repeatable, in order; LinuxKit's flag). Proxies: "
                        "HTTPS_PROXY, HTTP_PROXY, ALL_PROXY, NO_PROXY")
    p.add_argument("--docker-host", metavar="URL",
                   help="Docker engine to use (default: $DOCKER_HOST or the local socket)")
    p.add_argument("--cache-dir", metavar="DIR",
                   help="where image exports are kept (default: $FUSEBUNDLE_CACHE_DIR or "
                        "$XDG_CACHE_HOME/fusebundle)")
    p.add_argument("--pull", action="store_true",
                   help="ask the sources again for every image, even one the store or the "
                        "engine has (a tag may have moved); only changed layers are fetched")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")


def _pack_args(pk: argparse.ArgumentParser) -> None:
    pk.description = "Write the tree of bundles as one tar, in the order that moby build writes it."
    _common(pk)
    pk.add_argument("-o", "--output", required=True, metavar="OUT.tar",
                    help="output file, written atomically; '-' for stdout")
    # pack.FORMATS, spelt here: importing pack would slow every command's start
    pk.add_argument("--format", choices=("tar", "cpio", "kernel+initrd"), default="tar",
                    help="tar (default); cpio: one gzip'd newc cpio of the whole tree; "
                         "kernel+initrd: OUT-kernel, OUT-initrd.img and OUT-cmdline, as "
                         "LinuxKit writes them (needs a kernel: section)")
    pk.set_defaults(run=cmd_pack)


def _config_args(cf: argparse.ArgumentParser) -> None:
    cf.description = ("Print, for each container, the YAML entry, the image label, and the "
                      "config.json and runtime.json they give.")
    _common(cf)
    cf.add_argument("--name", help="only the container with this name")
    cf.add_argument("--json", action="store_true",
                    help="one JSON document (a list, one item per container), not one "
                         "document per container")
    cf.set_defaults(run=cmd_config)


def _pull_args(pl: argparse.ArgumentParser) -> None:
    pl.description = ("Fetch, verify, decompress and index every image the configs name, so "
                      "that later packs and mounts need no source; print what was done.")
    _common(pl)
    pl.set_defaults(run=cmd_pull)


def _cache_args(c: argparse.ArgumentParser) -> None:
    # Imported by its command: no other command loads the cache listing's code.
    from fusebundle.cli import cache as cachecmd

    cachecmd.add_args(c)


def _image_args(im: argparse.ArgumentParser) -> None:
    # Imported by its command, as is `diff`'s: the image commands' code (and pack's writer,
    # for `image export`) is no other command's.
    from fusebundle.cli import image as imagecmd

    mountcmd.add_image_mount(imagecmd.add_image_args(im, _sources), _sources)


def _diff_args(d: argparse.ArgumentParser) -> None:
    from fusebundle.cli import image as imagecmd  # as in _image_args

    imagecmd.add_diff_args(d, _sources)


# Every command in --help's order: its help line, and what adds its arguments (importing the
# module that runs it).  Only the command given gets its arguments: the others' modules are
# never imported, and argparse builds none of their ~150 options (~10 ms a start, measured).
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None]]] = {
    "pack": ("write the bundle tree as one tar", _pack_args),
    "config": ("show each container's merged entry and config.json", _config_args),
    "pull": ("fill the store with every image of the configs", _pull_args),
    "mount": ("serve the bundle tree as a read-only FUSE file system",
              lambda m: mountcmd.add_mount_args(m, _common)),
    "umount": ("unmount a fusebundle mount and wait for its server", mountcmd.add_umount_args),
    "cache": ("list or prune the layer store", _cache_args),
    "image": ("look inside one image: ls, cat, export, inspect, mount", _image_args),
    "diff": ("compare two images or configs", _diff_args),
}


def parser(command: str | None = None, alone: bool = False) -> argparse.ArgumentParser:
    """The argument parser of the fusebundle command, with `command`'s arguments (every
    command's when None; an unknown name gets none); with `alone`, without the other commands
    (only the top level's own help and errors name them)."""
    p = _Parser(prog="fusebundle",
                description="LinuxKit-style container bundles as one tarball or a read-only "
                            "FUSE filesystem.")
    p.add_argument("--version", action="version", version=f"fusebundle {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, (help_line, add_args) in COMMANDS.items():
        if alone and name != command:
            continue
        cp = sub.add_parser(name, help=help_line)
        if command is None or command == name:
            add_args(cp)
    return p


def given_command(argv: Sequence[str]) -> str | None:
    """The command an argument list names: its first word that is not an option (the
    fusebundle command's own options, -h and --version, take no value)."""
    return next((a for a in argv if not a.startswith("-")), None)


def cmd_pack(args: argparse.Namespace) -> int:
    """fusebundle pack: build the view and write it as one tar."""
    # Imported by the command that writes: no other command loads the writers.
    from fusebundle.pack import check_output, pack
    from fusebundle.pack.boot import refuse_stdout

    if args.format == "kernel+initrd":
        refuse_stdout(args.output)

    cfg, session = load_session(args)
    if args.format == "kernel+initrd" and not cfg.kernel.image:
        raise UserError("kernel+initrd needs a kernel: section with an image; the config has "
                        "none")
    if args.format != "kernel+initrd":  # its -o is a prefix of three new files
        check_output(args.output)
    view = build_view(cfg, session.resolve, share_by_id=args.share_by_id,
                      resolve_layout=session.resolve_layout)
    view.prepare()  # export and index everything before the output is opened
    bars: list[Bar] = []

    def progress(total: int) -> Callable[[int], None]:
        bars.append(Bar("pack", total, True))
        return bars[-1].add

    try:
        pack(view, args.output, progress if session.show_progress else None, args.format)
    finally:
        for b in bars:
            b.close()
    return 0


def config_images(cfg: Any) -> list[str]:
    """Every image reference a config names, once each, in build order."""
    refs = [cfg.kernel.image] if cfg.kernel.image else []
    refs += list(cfg.init) + [v.image for v in cfg.volumes if v.image]
    refs += [c.image for c in cfg.containers()]
    return list(dict.fromkeys(refs))


def cmd_pull(args: argparse.Namespace) -> int:
    """fusebundle pull: make every image of the configs present in the store (or cache)."""
    cfg, session = load_session(args)
    fetched = present = exported = 0
    size = 0
    refs = config_images(cfg)
    for ref in refs:
        done = session.resolve(ref).pull(ref)
        fetched += done.layers
        present += done.present
        size += done.bytes
        exported += done.exported
        print(done.line)
    print(f"pulled {len(refs)} images: {fetched} layers fetched ({size / (1 << 20):.1f} MiB), "
          f"{present} already in the store, {exported} engine exports")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    """fusebundle config: show how each container's config.json comes about."""
    cfg, session = load_session(args)
    id_map = cfg.id_map()
    found = False
    docs: list[dict[str, Any]] = []
    for c in cfg.containers():
        if args.name and c.name != args.name:
            continue
        found = True
        info = session.resolve(c.image).info
        label = image_label(info, c.where)
        spec, runtime = oci.build_oci(c.spec, label, info.config, id_map, c.where,
                                      cfg.volume_map())
        doc = {"bundle": c.bundle_path, "image": c.image, "imageId": info.id,
               "id": id_map[c.name], "yaml": c.spec, "label": label,
               "imageConfig": {k: info.config.get(k) for k in
                               ("Entrypoint", "Cmd", "Env", "WorkingDir")},
               "config.json": spec, "runtime.json (before rootfs mounts)": runtime}
        docs.append(doc)
        if not args.json:
            print(json.dumps(doc, indent=2))
    if args.name and not found:
        raise UserError(f"no container named {args.name!r}")
    if args.json:
        print(json.dumps(docs, indent=2))
    return 0


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line.  A command whose trailing list may follow its options
    (`image ls IMAGE -l /etc /bin`) names that list in `more`: argparse alone stops the list
    at the first option and calls what follows unrecognized."""
    argv = sys.argv[1:] if argv is None else list(argv)
    command = given_command(argv)
    # Nothing before a known command: no top-level help or error follows, so it stands alone.
    p = parser(command, alone=command in COMMANDS and argv[:1] == [command])
    args, extra = p.parse_known_args(argv)
    more = getattr(args, "more", None)
    if extra and (more is None or any(x.startswith("-") and x != "-" for x in extra)):
        p.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        setattr(args, more, [*getattr(args, more), *extra])
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = parse(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return int(args.run(args))
    except UserError as e:
        print(f"fusebundle: {e}", file=sys.stderr)
        return e.exit_code
    except _Terminated:
        print("fusebundle: terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        _forget_interrupt()
        print("fusebundle: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): nothing useful left to say, and nothing
        # left for the interpreter to flush at exit (it would complain of the pipe).
        with contextlib.suppress(OSError):
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, sys.stdout.fileno())
            os.close(null)
        return 1
    except Exception as e:
        if getattr(args, "debug", False):
            raise
        print(f"fusebundle: internal error: {type(e).__name__}: {e} (--debug shows where)",
              file=sys.stderr)
        return 70
