"""The command line: `main` (the console script `fusebundle` and `python -m fusebundle`).

`commands`: the parser, exit codes, signals and the commands that need no mount; `mount`: mount
and umount (background server, ready pipe, stale mounts), image mount; `cache`: cache ls / cache
prune; `image`: image ls / cat / export / inspect and diff (one image, no config).
"""

from fusebundle.cli.commands import main

__all__ = ["main"]
