"""Errors a user can cause: each becomes one line on stderr and a non-zero exit.

`cli.commands.main` catches `UserError` and prints `fusebundle: <message>`; the exit status is
the class's `exit_code`.  The tree (classes below the line live beside the code that raises
them, so that each stage names its own failures):

    UserError                       exit 1: the input or the environment
    ├── ConfigError                 exit 2: the YAML, a label, a flag's value
    ├── EngineError                 the Docker engine is unreachable or refused
    ├── CorruptTar                  a tar (export, layer, archive) is corrupt or hostile
    ├── ─────────────────────────
    ├── sources.base.NotFound       this source does not have the image
    ├── sources.regauth.RegistryError   a registry refused, failed or sent something wrong
    │   └── sources.regauth.Denied      401/403 from the registry or its token service
    └── store.StoreError            the store cannot be read or written
        ├── store.BadLayer          a layer blob failed its checks (digests, compression, tar)
        └── store.CorruptLayer      a stored layer no longer hashes to its diff_id (removed)

Anything else is a bug: one "internal error" line and exit 70 (`--debug` shows the traceback).
"""


class UserError(Exception):
    """A problem with the input or the environment, reported as one line."""

    exit_code = 1


class ConfigError(UserError):
    """The YAML (or an image label) is malformed or invalid."""

    exit_code = 2


class EngineError(UserError):
    """The Docker engine is unreachable or refused a request."""


class CorruptTar(UserError):
    """A tar (usually a cached image export) is corrupt, truncated or hostile."""


_GO_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t",
               "\v": "\\v", "\\": "\\\\", '"': '\\"'}


def _go_char(c: str) -> str:
    if c in _GO_ESCAPES:
        return _GO_ESCAPES[c]
    n = ord(c)
    if 0xDC80 <= n <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
        return f"\\x{n - 0xDC00:02x}"
    if c.isprintable():
        return c
    if n < 0x80:
        return f"\\x{n:02x}"
    return f"\\u{n:04x}" if n < 0x10000 else f"\\U{n:08x}"


def go_quote(s: str | bytes) -> str:
    """`s` as Go's %q (strconv.Quote) writes it: in double quotes, on one line."""
    if isinstance(s, bytes):
        s = s.decode("utf-8", "surrogateescape")
    return '"' + "".join(map(_go_char, s)) + '"'


def shown(name: str | bytes) -> str:
    """A user-given name for a message: as it is when every character prints plainly (the
    messages people know), else quoted as Go's %q, so that it cannot break the line."""
    text = name.decode("utf-8", "surrogateescape") if isinstance(name, bytes) else name
    plain = text.isprintable() and not any(0xDC80 <= ord(c) <= 0xDCFF for c in text)
    return text if plain else go_quote(text)
