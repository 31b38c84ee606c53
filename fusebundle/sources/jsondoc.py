"""JSON that came from outside (a layout, an archive, a registry, the engine, the store), read
the way Docker's typed structs read it.

`parse` bounds the nesting depth before anything walks the document; `Fields` reads one object
field by field, each accessor checking the type the Go struct behind the document declares
(moby's `container.Config`, the OCI image spec's structs, distribution's token answer).  A
field that is absent or null is Go's zero value; a field of another type is refused with one
line naming the document and the field.  Nothing here raises anything but `UserError`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from fusebundle.errors import UserError

# Go's encoding/json stops at 10,000 levels.  CPython's json decoder spends one interpreter
# frame per level and raises RecursionError near sys.getrecursionlimit() (1,000 by default),
# so 10,000 cannot be reached without raising that limit and risking the C stack: the bound is
# half the default limit, leaving the caller's own frames room.  No image document comes near
# it (an OCI index nests 4 deep: index, manifests, descriptor, platform).
MAX_DEPTH = 512

# Go's int, which distribution's token answer declares `expires_in` as, is 64 bits.
INT64_MAX = (1 << 63) - 1


class TooDeep(UserError):
    """A document nests lists and objects more than MAX_DEPTH deep."""


def kind(value: Any) -> str:
    """How a message names a JSON value's type: "a string", "a number", "an object", ..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"


def _too_deep(doc: Any, limit: int) -> bool:
    """True if `doc` nests lists and objects more than `limit` deep (walked level by level,
    without recursion)."""
    level, depth = [doc], 1
    while level:
        if depth > limit:
            return True
        below: list[Any] = []
        for value in level:
            children = value.values() if isinstance(value, dict) else value
            below.extend(c for c in children if isinstance(c, (dict, list)))
        level, depth = below, depth + 1
    return False


def _brackets(data: bytes | str) -> int:
    """An upper bound of the depth: every bracket in `data`, those inside strings too."""
    if isinstance(data, str):
        return data.count("[") + data.count("{")
    return data.count(b"[") + data.count(b"{")


def parse(data: bytes | str, what: str, invalid: str = "") -> Any:
    """The JSON value in `data`; UserError naming `what` if it is not JSON or nests too deep.

    `invalid` replaces "WHAT: not valid JSON" where a message of its own already says so.
    """
    try:
        doc = json.loads(data)
    except RecursionError:
        # The decoder's own guard tripped (past MAX_DEPTH, since the caller's stack is short).
        raise TooDeep(f"{what}: nested more than {MAX_DEPTH} deep") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{invalid or what + ': not valid JSON'} ({e})") from None
    # Counting is C-fast; the walk (60 ms for a 40,000-layer manifest) only when it may matter.
    if _brackets(data) > MAX_DEPTH and _too_deep(doc, MAX_DEPTH):
        raise TooDeep(f"{what}: nested more than {MAX_DEPTH} deep")
    return doc


def parse_object(data: bytes | str, what: str) -> dict[str, Any]:
    """A JSON object from `data`; one-line UserError naming `what` otherwise."""
    doc = parse(data, what)
    if not isinstance(doc, dict):
        raise UserError(f"{what}: not a JSON object")
    return doc


@dataclass(frozen=True)
class Fields:
    """One JSON object of document `what`, at `path` ("config." inside an image config)."""

    doc: dict[str, Any]
    what: str
    path: str = ""

    def _bad(self, key: str, want: str) -> UserError:
        got = kind(self.doc.get(key))
        return UserError(f"{self.what}: field {self.path + key!r} is {got}, not {want}")

    def obj(self, key: str) -> Fields | None:
        """The object at `key` (None if absent or null)."""
        value = self.doc.get(key)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise self._bad(key, "an object")
        return Fields(value, self.what, f"{self.path}{key}.")

    def string(self, key: str, default: str = "") -> str:
        """The string at `key` (`default` if absent or null, as Go leaves a string "")."""
        value = self.doc.get(key)
        if value is None:
            return default
        if not isinstance(value, str):
            raise self._bad(key, "a string")
        return value

    def strings(self, key: str) -> list[str] | None:
        """A list of strings ([]string): None if absent or null; a null item is "" as in Go."""
        value = self.doc.get(key)
        if value is None:
            return None
        if not isinstance(value, list):
            raise self._bad(key, "a list of strings")
        return [self._item(key, i, v) for i, v in enumerate(value)]

    def strslice(self, key: str) -> list[str] | None:
        """moby's strslice.StrSlice (Entrypoint, Cmd): a list of strings, or one string as a
        one-element list; None if absent or null."""
        value = self.doc.get(key)
        return [value] if isinstance(value, str) else self.strings(key)

    def string_map(self, key: str) -> dict[str, str] | None:
        """A map[string]string (Labels, annotations): None if absent or null; a null value is ""."""
        value = self.doc.get(key)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise self._bad(key, "an object of strings")
        return {k: self._item(key, k, v) for k, v in value.items()}

    def _item(self, key: str, at: int | str, value: Any) -> str:
        if value is None:
            return ""
        if not isinstance(value, str):
            where = f"{self.path}{key}[{at}]" if isinstance(at, int) else f"{self.path}{key}.{at}"
            shown = where if len(where) <= 120 else where[:117] + "..."
            raise UserError(f"{self.what}: field {shown!r} is {kind(value)}, not a string")
        return value

    def integer(self, key: str, low: int, high: int) -> int | None:
        """The integer at `key` within [low, high] (None if absent or null).

        As Go decodes into an int: a fraction or an exponent (1.5, 1e3, 1e999) is refused.
        """
        value = self.doc.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and not math.isfinite(value):
                raise UserError(f"{self.what}: field {self.path + key!r} is not a finite number")
            raise self._bad(key, "an integer")
        if not low <= value <= high:
            raise UserError(f"{self.what}: field {self.path + key!r} is {value}, "
                            f"outside {low}..{high}")
        return value


def container_config(inner: Any, what: str) -> dict[str, Any]:
    """An image config's `config` object, with the fields fusebundle reads decoded as moby's
    `container.Config` decodes them.

    Env is a []string (a string is refused); Entrypoint and Cmd are strslice.StrSlice (a string
    is a one-element list); WorkingDir is a string; Labels a map[string]string.  Other fields
    are kept as they are: nothing reads them.
    """
    if inner is None:
        return {}
    if not isinstance(inner, dict):
        raise UserError(f"{what}: field 'config' is {kind(inner)}, not an object")
    fields = Fields(inner, what, "config.")
    out = dict(inner)
    decoded = {"Env": fields.strings("Env"), "Entrypoint": fields.strslice("Entrypoint"),
               "Cmd": fields.strslice("Cmd"), "WorkingDir": fields.string("WorkingDir"),
               "Labels": fields.string_map("Labels")}
    out.update((k, v) for k, v in decoded.items() if k in inner)
    return out


def image_container_config(config_bytes: bytes, what: str) -> dict[str, Any]:
    """The decoded `config` object (see `container_config`) of an image config's bytes."""
    return container_config(parse_object(config_bytes, what).get("config"), what)
