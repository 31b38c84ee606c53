"""Loading the YAML fusebundle reads (config files and org.mobyproject.config labels), bounded.

ruamel.yaml shares an aliased node instead of copying it, but everything after the load
(validation, config.json, metadata) walks the data as a tree, so a few KB of aliases can stand
for billions of nodes.  The composed document is therefore measured as that tree before any
value is built, with go-yaml's rule (LinuxKit's parser); nesting and integer length are bounded
too.  Every problem, ruamel's or a bound's, is one `YamlError`, which callers report as bad YAML.

ruamel itself (11-14 ms of imports, -X importtime) is imported by `load`, when the first
document is read: a command that reads no config or label (`image cat`, `image ls`) never
loads it.
"""

from __future__ import annotations

import functools
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ruamel.yaml.nodes import Node

# LinuxKit's configs (and labels) are a few KB (the repo's examples/demo.yml: 944 bytes); an inline
# CA bundle (~220 KB) fits four times; a denser 1 MiB document still loads in about 20 s and
# 170 MiB with the pure-Python loader (measured), which is what bounds it.
MAX_DOCUMENT_BYTES = 1 << 20

# go-yaml v3 and Go's encoding/json stop at 10,000 levels, but ruamel's composer recurses two
# Python frames per level under Python's default recursion limit of 1,000: 200 levels leave
# the callers 600 frames, and are 25 times the deepest place the schema has (8 levels:
# services[0].resources.blockio.weightDevice[0].major).
MAX_DEPTH = 200

# go-yaml v3's excessive-aliasing rule (decode.go, allowedAliasRatio): once a document has more
# than 1,000 nodes and more than 100 of them come from aliases, that share may be 99% up to
# 400,000 nodes, falling linearly to 10% at 4,000,000 and beyond.  A document of at most
# MAX_DOCUMENT_BYTES writes at most 524,288 nodes (`[a,a,...`), so it can stand for at most
# 1.65 million nodes once expanded (computed from the rule).
ALIAS_MIN_NODES = 1_000
ALIAS_MIN_ALIASED = 100
ALIAS_RANGE_LOW = 400_000
ALIAS_RANGE_HIGH = 4_000_000
# Counting stops here (30 levels of ten aliases would count to 10**30): a document of at most
# MAX_DOCUMENT_BYTES writes fewer nodes than this, so past it the rule always refuses.
EXPANSION_CAP = 10 * MAX_DOCUMENT_BYTES

# Digits of an integer: 2**64 - 1, the largest value any field takes, has 20; five times that
# is no number a config means (and Python refuses to convert one past 4,300 digits).
MAX_INT_CHARS = 100


def is_bool(v: object) -> bool:
    """True for a YAML boolean: Python's bool, or ruamel's ScalarBoolean (its round-trip
    loader's anchored `true`, an int subclass)."""
    if isinstance(v, bool):
        return True
    # A ScalarBoolean exists only once ruamel is loaded: asked here without importing it.
    scalarbool = sys.modules.get("ruamel.yaml.scalarbool")
    return scalarbool is not None and isinstance(v, scalarbool.ScalarBoolean)


class YamlError(Exception):
    """A document that cannot be read: its text is ruamel's message; `problem` and
    `problem_mark` (line and column, 0-based) are set where ruamel marks where it went wrong
    (`marked`), as its MarkedYAMLError does."""

    def __init__(self, text: str, problem: str | None = None, problem_mark: Any = None,
                 marked: bool = False) -> None:
        super().__init__(text)
        self.problem = problem
        self.problem_mark = problem_mark
        self.marked = marked


class ExcessiveAliasing(YamlError):
    """A document whose aliases stand for more nodes than go-yaml's rule allows."""

    def __init__(self, problem: str, problem_mark: Any = None) -> None:
        super().__init__(problem, problem, problem_mark, marked=True)


def allowed_alias_share(nodes: int) -> float:
    """The share of a document's nodes that may come from aliases (go-yaml's ratio)."""
    if nodes <= ALIAS_RANGE_LOW:
        return 0.99
    if nodes >= ALIAS_RANGE_HIGH:
        return 0.10
    return 0.99 - 0.89 * (nodes - ALIAS_RANGE_LOW) / (ALIAS_RANGE_HIGH - ALIAS_RANGE_LOW)


def _children(node: Node) -> list[Node]:
    # A node's kind is its class's `id` (ruamel's nodes.py): asked without importing ruamel.
    if node.id == "sequence":
        return list(node.value)
    if node.id == "mapping":
        return [n for pair in node.value for n in pair]
    return []


def expanded_size(root: Node) -> tuple[int, int, int]:
    """(nodes as written, nodes once aliases are expanded, depth once expanded) of a document.

    Iterative, each node measured once (aliases share node objects); a node that contains an
    alias to itself has no finite expansion and is refused."""
    size: dict[int, tuple[int, int]] = {}  # id -> (expanded nodes, expanded depth)
    open_nodes: set[int] = set()
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            kids = [size[id(k)] for k in _children(node)]
            total = min(1 + sum(k[0] for k in kids), EXPANSION_CAP)
            size[key] = (total, 1 + max((k[1] for k in kids), default=0))
            open_nodes.discard(key)
            continue
        if key in size:
            continue
        if key in open_nodes:
            raise ExcessiveAliasing("an alias refers to a node that contains it "
                                    "(its expansion never ends)", node.start_mark)
        open_nodes.add(key)
        stack.append((node, True))
        stack.extend((k, False) for k in _children(node) if id(k) not in size)
    return len(size), size[id(root)][0], size[id(root)][1]


def check_aliases(root: Node) -> None:
    """Refuse a document whose aliases expand past go-yaml's bound or past MAX_DEPTH."""
    written, total, depth = expanded_size(root)
    aliased = total - written
    if (aliased > ALIAS_MIN_ALIASED and total > ALIAS_MIN_NODES
            and aliased / total > allowed_alias_share(total)):
        many = f"more than {EXPANSION_CAP}" if total >= EXPANSION_CAP else str(total)
        raise ExcessiveAliasing(f"excessive aliasing: {written} nodes written "
                                f"stand for {many} once aliases are expanded")
    if depth > MAX_DEPTH:
        raise ExcessiveAliasing(f"aliases nest deeper than {MAX_DEPTH} levels")


@functools.cache
def _loader_classes() -> tuple[type, type]:
    """ruamel's composer and constructor with the bounds above (made once)."""
    # ruamel is imported here, not at the top: only a command that reads YAML pays for it.
    from ruamel.yaml.composer import Composer, ComposerError
    from ruamel.yaml.constructor import ConstructorError, SafeConstructor
    from ruamel.yaml.events import AliasEvent

    class _Composer(Composer):
        def __init__(self, loader: Any = None) -> None:
            super().__init__(loader)
            # YAML lets an anchor be defined again; ruamel would print a multi-line warning
            self.warn_double_anchors = False

        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.depth >= MAX_DEPTH and not self.parser.check_event(AliasEvent):
                raise ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels",
                                    self.parser.peek_event().start_mark)
            return super().compose_node(parent, index)

        def compose_document(self) -> Any:
            node = super().compose_document()
            if node is not None:
                check_aliases(node)
            return node

    class _Constructor(SafeConstructor):
        def construct_object(self, node: Any, deep: bool = False) -> Any:
            try:
                return super().construct_object(node, deep)
            except (ValueError, OverflowError) as e:  # e.g. a date such as 2001-02-30
                problem = " ".join(str(e).split())
                raise ConstructorError(None, None, f"cannot read this value: {problem}",
                                       node.start_mark) from None

        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            try:
                return super().construct_mapping(node, deep)
            except TypeError:  # a key that is a list holding a list: ruamel cannot hash it
                raise ConstructorError(None, None, "a mapping key holds a list or mapping",
                                       node.start_mark) from None

        def construct_yaml_int(self, node: Any) -> int:
            text = self.construct_scalar(node)
            if len(text) > MAX_INT_CHARS:
                raise ConstructorError(None, None, f"an integer of {len(text)} characters is "
                                       f"longer than any number a config holds (at most "
                                       f"{MAX_INT_CHARS}); quote it if it is text", node.start_mark)
            return int(super().construct_yaml_int(node))

    _Constructor.add_constructor("tag:yaml.org,2002:int", _Constructor.construct_yaml_int)
    return _Composer, _Constructor


def load(text: str) -> Any:
    """One YAML 1.2 document as plain data; any problem is a YamlError."""
    # ruamel is imported here, not at the top: only a command that reads YAML pays for it.
    from ruamel.yaml import YAML
    from ruamel.yaml.error import MarkedYAMLError, YAMLError

    composer, constructor = _loader_classes()
    # The pure loader speaks YAML 1.2, where `name: n` or `on` stay strings.
    y = YAML(typ="safe", pure=True)
    y.allow_duplicate_keys = False
    y.Composer = composer
    y.Constructor = constructor
    try:
        return y.load(text)
    except MarkedYAMLError as e:
        raise YamlError(str(e), e.problem, e.problem_mark, marked=True) from None
    except YAMLError as e:
        raise YamlError(str(e)) from None
