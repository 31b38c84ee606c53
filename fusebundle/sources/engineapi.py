"""The one engine call every mount makes, without the Docker SDK: inspect an image.

A mount whose images are all exported already needs nothing from the engine but each
reference's current image ID and config.  Importing the SDK (requests, urllib3, ...) costs
such a mount 45 ms of its 190, so that one GET goes straight to the engine's unix socket.
Anything unusual (a TCP or TLS engine, a status other than 200 or 404, a malformed answer)
returns None and the caller asks the SDK, which also words the errors.
"""

from __future__ import annotations

import os
import socket
from typing import Any
from urllib.parse import quote

from fusebundle.errors import UserError
from fusebundle.sources import jsondoc

DEFAULT_SOCKET = "/var/run/docker.sock"
TIMEOUT = 60.0  # seconds, as the SDK's default


class NoSuchImage(Exception):
    """The engine answered 404: it has no such image."""


def socket_path(host: str | None) -> str | None:
    """The unix socket a host setting (or $DOCKER_HOST) names; None for any other transport."""
    host = host or os.environ.get("DOCKER_HOST") or f"unix://{DEFAULT_SOCKET}"
    if os.environ.get("DOCKER_TLS_VERIFY") or not host.startswith("unix://"):
        return None
    return host[len("unix://"):] or None


def inspect_image(path: str, ref: str) -> dict[str, Any] | None:
    """GET /images/REF/json on the socket at `path`.

    The decoded answer; NoSuchImage on a 404; None when this path cannot tell (the SDK will).
    """
    request = (f"GET /images/{quote(ref, safe='/:')}/json HTTP/1.0\r\n"
               "Host: docker\r\nUser-Agent: fusebundle\r\n\r\n").encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(TIMEOUT)
            s.connect(path)
            s.sendall(request)
            chunks = []
            while chunk := s.recv(1 << 16):
                chunks.append(chunk)
    except OSError:
        return None
    head, sep, body = b"".join(chunks).partition(b"\r\n\r\n")
    status = head.split(b" ", 2)[1:2]
    if not sep or not status:
        return None
    if status[0] == b"404":
        raise NoSuchImage(ref)
    if status[0] != b"200" or b"transfer-encoding: chunked" in head.lower():
        return None
    try:
        data = jsondoc.parse(body, f"image {ref}: inspect")
    except UserError:
        return None
    return data if isinstance(data, dict) and isinstance(data.get("Id"), str) else None
