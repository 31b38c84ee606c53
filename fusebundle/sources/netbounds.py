"""Overall bounds on waiting for a registry: a silent server, a dripping transfer, a huge token.

httpx's timeouts bound each socket operation, not an exchange: a server that sends one byte
just before every read timeout never trips them.  These bounds are over whole exchanges:
a deadline for answers that must come quickly (the ping, a token) and a minimum transfer rate
over a window for bodies of any size (as curl's --speed-limit/--speed-time do).
"""

from __future__ import annotations

import os
import time
from types import ModuleType

# Test knob, not a user setting: FUSEBUNDLE_TEST_NET_SCALE multiplies every time bound below
# (0.1 turns the 30 s rate window into 3 s) so the tests of hostile servers stay fast.
_SCALE_VARIABLE = "FUSEBUNDLE_TEST_NET_SCALE"

# docker's ping of /v2/ uses an http.Client with Timeout 15 s (moby, distribution/registry.go):
# a registry that accepts and never answers is given that long, over every scheme and try.
PING_WINDOW = 15.0
# distribution's token client has the same overall Timeout of 15 s (registry/client/auth/
# session.go, tokenHandler.client()).
TOKEN_WINDOW = 15.0
# A token goes back in an Authorization header, and Go's net/http (distribution, Harbor and
# most registries) refuses request headers over http.DefaultMaxHeaderBytes, 1 MiB: an answer
# bigger than that cannot hold a usable token.  Real answers are a few KiB (a JWT or two).
TOKEN_MAX = 1 << 20
# A transfer slower than MIN_RATE bytes/s over RATE_WINDOW s is abandoned.  The window is
# curl's --speed-time default (30 s); the rate is a quarter of what a 56 kbit/s modem carries,
# so no working link is cut, while a one-byte-a-second drip fails after 30 s, not days.
MIN_RATE = 1024
RATE_WINDOW = 30.0


def scaled(seconds: float) -> float:
    """SECONDS, times the test knob's factor when it is set (the user-facing number if not)."""
    try:
        factor = float(os.environ.get(_SCALE_VARIABLE, "") or 1.0)
    except ValueError:
        factor = 1.0
    return seconds * factor if factor > 0 else seconds


class Deadline:
    """A point in time that bounds a whole exchange, retries included."""

    def __init__(self, seconds: float, *, scale: bool = True) -> None:
        self.seconds = scaled(seconds) if scale else seconds
        self._end = time.monotonic() + self.seconds

    def renewed(self) -> Deadline:
        """The same length from now: the server answered, so it was not silent."""
        return Deadline(self.seconds, scale=False)

    def left(self) -> float:
        """Seconds still allowed (never below zero)."""
        return max(0.0, self._end - time.monotonic())

    def passed(self) -> bool:
        """True once the time is up."""
        return time.monotonic() >= self._end

    def shown(self) -> str:
        """The bound as a message says it ("15 s")."""
        return f"{self.seconds:g} s"


class Pace:
    """A transfer's rate, judged over consecutive windows: too slow is a reason, else None."""

    def __init__(self) -> None:
        self.window = scaled(RATE_WINDOW)
        self._start = time.monotonic()
        self._bytes = 0

    def add(self, count: int) -> str | None:
        """Count COUNT bytes just received; the reason to give up if the window was too slow."""
        self._bytes += count
        now = time.monotonic()
        if now - self._start < self.window:
            return None
        if self._bytes < MIN_RATE * self.window:
            return (f"too slow: {self._bytes} bytes in {now - self._start:.0f} s, below "
                    f"{MIN_RATE} bytes/s over {self.window:g} s")
        self._start, self._bytes = now, 0
        return None


def httpx_module() -> ModuleType:
    """httpx, imported here on first need and nowhere else: only commands that reach a
    registry pay for importing it."""
    import httpx

    return httpx
