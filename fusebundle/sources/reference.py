"""Image references, normalised the way docker and LinuxKit do it.

`alpine` is `docker.io/library/alpine:latest`; `localhost:5000/x:1` keeps its domain;
`name@sha256:...` pins a digest (and then no default tag is added).  The grammar is the one
of distribution's `reference` package (the domain, path, tag and digest productions), with
its normalisation rules: the first path component is a domain if it contains "." or ":",
is "localhost", or has capitals; `index.docker.io` is `docker.io`; a single-component Docker
Hub path lives under `library/`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from fusebundle.errors import UserError

DEFAULT_DOMAIN = "docker.io"
_LEGACY_DOMAIN = "index.docker.io"
_OFFICIAL = "library/"
DEFAULT_TAG = "latest"
_NAME_MAX = 255  # distribution's NameTotalLengthMax, over domain + "/" + path

_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOST = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])"
_DOMAIN_RE = re.compile(rf"{_HOST}(?::[0-9]+)?")
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_PATH_RE = re.compile(rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*")
_TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_DIGEST_RE = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}")
_SHA256_RE = re.compile(r"sha256:[0-9a-f]{64}")
_IMAGE_ID_RE = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Reference:
    """A parsed, normalised image reference."""

    domain: str  # "docker.io", "localhost:5000"
    path: str  # "library/alpine", "linuxkit/init"
    tag: str  # "" only when a digest pins the image and no tag was given
    digest: str  # "sha256:<64 hex>" or ""

    @property
    def repository(self) -> str:
        """domain/path: "docker.io/library/alpine"."""
        return f"{self.domain}/{self.path}"

    @property
    def name(self) -> str:
        """The full normalised reference: "docker.io/library/alpine:latest" (or "@sha256:...")."""
        return self.repository + _suffix(self.tag, self.digest)

    @property
    def familiar(self) -> str:
        """The short form docker shows: "alpine:latest", "linuxkit/init:v1"."""
        path = self.path
        if self.domain != DEFAULT_DOMAIN:
            repo = self.repository
        elif path.startswith(_OFFICIAL) and "/" not in path[len(_OFFICIAL):]:
            repo = path[len(_OFFICIAL):]
        else:
            repo = path
        return repo + _suffix(self.tag, self.digest)


def _suffix(tag: str, digest: str) -> str:
    return (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")


def _invalid(text: str, why: str) -> UserError:
    return UserError(f"invalid reference format: {text!r}: {why}")


def split_domain(name: str) -> tuple[str, str]:
    """Split a name without tag or digest into (domain, path), docker's way (not validated)."""
    first, slash, rest = name.partition("/")
    if not slash:
        domain, path = DEFAULT_DOMAIN, name
    elif first == "localhost" or any(c in first for c in ".:") or first.lower() != first:
        domain, path = first, rest
    else:
        domain, path = DEFAULT_DOMAIN, name
    if domain == _LEGACY_DOMAIN:
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in path:
        path = _OFFICIAL + path
    return domain, path


def parse(text: str) -> Reference:
    """Parse and normalise an image reference; UserError("invalid reference format: ...")."""
    if not text or text != text.strip():
        raise _invalid(text, "empty or surrounded by spaces")
    if _IMAGE_ID_RE.fullmatch(text):
        raise _invalid(text, "a 64-hex image ID is not a repository name")
    rest, at, digest = text.partition("@")
    if at:
        if not _DIGEST_RE.fullmatch(digest):
            raise _invalid(text, f"bad digest {digest!r} (expected ALGORITHM:HEX)")
        if not digest.startswith("sha256:"):
            algorithm = digest.partition(":")[0]
            raise UserError(f"reference {text!r}: digest algorithm {algorithm!r} is valid "
                            "syntax but not supported (only sha256 is)")
        if not _SHA256_RE.fullmatch(digest):
            raise _invalid(text, f"bad digest {digest!r} (sha256 takes 64 lowercase hex digits)")
    # A tag follows the last ':' that comes after the last '/' (a ':' before is a port).
    name, tag = rest, ""
    colon = rest.rfind(":")
    if colon > rest.rfind("/"):
        name, tag = rest[:colon], rest[colon + 1:]
        if not _TAG_RE.fullmatch(tag):
            raise _invalid(text, f"bad tag {tag!r}")
    domain, path = split_domain(name)
    if not _DOMAIN_RE.fullmatch(domain):
        raise _invalid(text, f"bad registry domain {domain!r}")
    if path.lower() != path:
        raise _invalid(text, f"repository name {path!r} must be lowercase")
    if not _PATH_RE.fullmatch(path):
        raise _invalid(text, f"bad repository name {path!r}")
    if len(domain) + 1 + len(path) > _NAME_MAX:
        raise _invalid(text, f"repository name longer than {_NAME_MAX} characters")
    if not tag and not digest:
        tag = DEFAULT_TAG
    return Reference(domain, path, tag, digest)


def normalise(text: str) -> str | None:
    """`parse(text).name`, or None when text is not a valid reference (for matching names)."""
    try:
        return parse(text).name
    except UserError:
        return None
