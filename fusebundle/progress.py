"""Progress bars on a terminal, silence elsewhere."""

from __future__ import annotations

import sys
from typing import Any


class Bar:
    """A byte counter shown with tqdm when stderr is a terminal; a no-op otherwise."""

    def __init__(self, desc: str, total: int | None, enabled: bool) -> None:
        self._bar: Any = None
        if enabled:
            from tqdm import tqdm

            self._bar = tqdm(desc=desc, total=total or None, unit="B", unit_scale=True,
                             unit_divisor=1024, leave=False, file=sys.stderr)

    def add(self, n: int) -> None:
        """Count n more bytes."""
        if self._bar is not None:
            self._bar.update(n)

    def to(self, done: int) -> None:
        """Set the count to `done` bytes."""
        if self._bar is not None:
            self._bar.update(done - self._bar.n)

    def close(self) -> None:
        """Remove the bar from the terminal."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Bar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def enabled(quiet: bool) -> bool:
    """Whether bars should be drawn: not quiet, and stderr is a terminal."""
    return not quiet and sys.stderr.isatty()
