"""Two small hooks for the fault tests (tests/test_faults.py); inert unless their variable is set.

FUSEBUNDLE_TEST_STOP=<stage>  the process stops itself (SIGSTOP) on reaching that stage, so a
                              test can `kill -9` it at a known point: layer-written (a layer's
                              tar complete under its temporary name, its index not yet built),
                              layer-indexed (index saved, tar not yet renamed), merge (the merged
                              index built, not yet saved), pack-write (the output written under
                              its temporary name, not yet renamed), read-reply (a mount's reply
                              to a large read is a checked view of its mapped tar, not yet sent).
FUSEBUNDLE_TEST_EVENTS=<file> a line per layer decompressed into the store ("ingested <diff_id>"),
                              appended, so tests can count decompressions across processes.
"""

from __future__ import annotations

import os
import signal


def stop_at(stage: str) -> None:
    """Stop this process here if FUSEBUNDLE_TEST_STOP names `stage`."""
    if os.environ.get("FUSEBUNDLE_TEST_STOP") == stage:
        os.kill(os.getpid(), signal.SIGSTOP)


def note(event: str) -> None:
    """Append `event` to $FUSEBUNDLE_TEST_EVENTS, if set (one write: lines never interleave)."""
    path = os.environ.get("FUSEBUNDLE_TEST_EVENTS")
    if path:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, (event + "\n").encode())
        finally:
            os.close(fd)
