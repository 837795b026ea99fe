"""Reading a config file within bounds, because a config file is input like any other.

Only regular files are read (a FIFO or a device would block or never end), at most
`MAX_CONFIG_BYTES` of them, as UTF-8. The YAML loader is PyYAML's safe loader (parsing in
libyaml when it is there) with bounds of its own: lists and mappings nest at most `MAX_DEPTH`
levels, and a document holds at most `MAX_NODES` values once aliases are expanded, so a
"billion laughs" document is refused before it is built. Duplicate keys are errors. Every
problem is one `ConfigFileError` line naming the file (and line and column where known).
"""

from __future__ import annotations

import math
import os
import re
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.events import AliasEvent, MappingStartEvent, SequenceStartEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.resolver import Resolver
from yaml.scanner import Scanner

__all__ = [
    "LOADERS",
    "MAX_CONFIG_BYTES",
    "MAX_DEPTH",
    "MAX_NODES",
    "ConfigFileError",
    "file_kind",
    "load_yaml",
    "quote",
]

MAX_CONFIG_BYTES = 1024 * 1024  # a config file larger than this is refused unread
MAX_DEPTH = 64  # lists and mappings nested deeper than this are refused
MAX_NODES = 20_000  # values in a document, counting what each alias expands to

# What YAML allows in a stream (the YAML 1.1 printable set).
_NOT_YAML = re.compile("[^\x09\x0a\x0d\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


class ConfigFileError(Exception):
    """The file cannot be read as a YAML document; the message is one line."""


def quote(value: Any, limit: int = 60) -> str:
    """`repr(value)` for an error line: short, one line, and safe for any input."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        digits = int(value.bit_length() * math.log10(2)) + 1
        if abs(value) < 10 ** (digits - 1):
            digits -= 1
        return f"an integer of {digits} digits"
    try:
        text = repr(value)
    except (ValueError, RecursionError):  # an int past the str limit; nesting past recursion
        return f"a {type(value).__name__}"
    if len(text) > limit:
        size = f" ({len(value)} characters)" if isinstance(value, str) else ""
        text = f"{text[:limit]}...{size}"
    return text


def file_kind(mode: int) -> str | None:
    """None for a regular file, else what it is (for an error line)."""
    if stat.S_ISREG(mode):
        return None
    kinds = {
        stat.S_ISDIR: "a directory",
        stat.S_ISFIFO: "a FIFO",
        stat.S_ISCHR: "a character device",
        stat.S_ISBLK: "a block device",
        stat.S_ISSOCK: "a socket",
    }
    return next((kind for test, kind in kinds.items() if test(mode)), "an unknown kind of file")


def _read_bytes(path: Path) -> bytes:
    """At most MAX_CONFIG_BYTES of a regular file; never blocks on a FIFO or device."""
    too_large = f"{path}: larger than 1 MiB, the most a config file may hold"
    try:
        kind = file_kind(os.stat(path).st_mode)
        if kind is not None:
            raise ConfigFileError(f"{path}: not a regular file ({kind})")
        flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0)
        fd = os.open(path, flags)
        try:
            info = os.fstat(fd)  # the file opened, which may not be the one stat saw
            kind = file_kind(info.st_mode)
            if kind is not None:
                raise ConfigFileError(f"{path}: not a regular file ({kind})")
            if info.st_size > MAX_CONFIG_BYTES:
                raise ConfigFileError(too_large)
            chunks: list[bytes] = []
            size = 0
            while size <= MAX_CONFIG_BYTES:
                chunk = os.read(fd, MAX_CONFIG_BYTES + 1 - size)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
        finally:
            os.close(fd)
    except FileNotFoundError:
        raise ConfigFileError(f"{path}: no such file") from None
    except OSError as exc:
        raise ConfigFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except ValueError as exc:  # a NUL in the path
        raise ConfigFileError(f"{quote(str(path))}: cannot read: {exc}") from None
    if size > MAX_CONFIG_BYTES:
        raise ConfigFileError(too_large)
    return b"".join(chunks)


def _decode(path: Path, raw: bytes) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ConfigFileError(
            f"{path}:{line}:{column}: byte 0x{raw[exc.start]:02x} is not UTF-8 "
            "(config files are UTF-8 text)"
        ) from None
    bad = _NOT_YAML.search(text)
    if bad is not None:
        line = text.count("\n", 0, bad.start()) + 1
        column = bad.start() - (text.rfind("\n", 0, bad.start()) + 1) + 1
        raise ConfigFileError(
            f"{path}:{line}:{column}: character {bad.group()!r} is not allowed in YAML"
        )
    return text.removeprefix("\ufeff")


class _Refused(yaml.MarkedYAMLError):
    """A bound of the loader was reached (reported without 'syntax error')."""

    def __init__(self, problem: str, mark: Any) -> None:
        super().__init__(None, None, problem, mark)


class _Resolver(Resolver):
    """YAML 1.2 booleans: only true/false, so a key such as `on` stays the string 'on'."""


_Resolver.yaml_implicit_resolvers = {
    key: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for key, resolvers in Resolver.yaml_implicit_resolvers.items()
}
for _first in "tTfF":
    _Resolver.yaml_implicit_resolvers.setdefault(_first, []).insert(
        0, ("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"))
    )


class _BoundedComposer(Composer):
    """PyYAML's composer, within bounds: nesting depth, values after alias expansion (a
    "billion laughs" document is refused before it is built), and no duplicate keys."""

    def __init__(self) -> None:
        super().__init__()
        self._depth = 0
        self._values = 0
        self._sizes: dict[int, int] = {}  # id(node) -> values it expands to

    if TYPE_CHECKING:  # the parser mixed in beside the composer provides it

        def peek_event(self) -> Any: ...

    def _count(self, values: int, mark: Any) -> None:
        self._values += values
        if self._values > MAX_NODES:
            raise _Refused(
                f"more than {MAX_NODES} values (aliases count as what they expand to)", mark
            )

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        event = self.peek_event()
        assert event is not None
        if isinstance(event, AliasEvent):
            target = self.anchors.get(event.anchor)
            if target is not None:
                size = self._sizes.get(id(target))
                if size is None:
                    raise _Refused(
                        f"alias {quote(event.anchor)} refers to a value that contains it",
                        event.start_mark,
                    )
                self._count(size, event.start_mark)
            return super().compose_node(parent, index)
        self._count(1, event.start_mark)
        nests = isinstance(event, SequenceStartEvent | MappingStartEvent)
        if nests:
            self._depth += 1
            if self._depth > MAX_DEPTH:
                raise _Refused(
                    f"lists and mappings nest deeper than {MAX_DEPTH} levels",
                    event.start_mark,
                )
        try:
            node = super().compose_node(parent, index)
        finally:
            if nests:
                self._depth -= 1
        assert node is not None
        size = 1
        if isinstance(node, SequenceNode):
            size += sum(self._sizes[id(item)] for item in node.value)
        elif isinstance(node, MappingNode):
            size += sum(self._sizes[id(k)] + self._sizes[id(v)] for k, v in node.value)
        self._sizes[id(node)] = size
        return node

    def compose_mapping_node(self, anchor: Any) -> MappingNode:
        node = super().compose_mapping_node(anchor)
        seen: dict[tuple[str, str], Node] = {}
        for key, _ in node.value:
            if not isinstance(key, ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
                continue
            first = seen.setdefault((key.tag, key.value), key)
            if first is not key:
                raise _Refused(
                    f"duplicate key {quote(key.value)} (first at line {first.start_mark.line + 1})",
                    key.start_mark,
                )
        return node


class _Constructor(SafeConstructor):
    def construct_yaml_int(self, node: ScalarNode) -> int:
        # Python refuses to convert decimal strings past 4300 digits, and base-60 ints
        # ("1:2:3") cost quadratic time: no setting needs more than 20 digits.
        if len(node.value) > 64:
            raise _Refused(f"an integer of {len(node.value)} digits is too large", node.start_mark)
        return super().construct_yaml_int(node)


_Constructor.add_constructor(
    "tag:yaml.org,2002:int",
    _Constructor.construct_yaml_int,  # type: ignore[type-var]
)


class _PyLoader(Reader, Scanner, Parser, _BoundedComposer, _Constructor, _Resolver):
    """Pure Python, for a PyYAML built without libyaml."""

    def __init__(self, stream: str) -> None:
        Reader.__init__(self, stream)
        Scanner.__init__(self)
        Parser.__init__(self)
        _BoundedComposer.__init__(self)
        _Constructor.__init__(self)
        _Resolver.__init__(self)


LOADERS: list[type[Any]] = [_PyLoader]
try:
    from yaml._yaml import CParser

    class _CLoader(_BoundedComposer, CParser, _Constructor, _Resolver):
        """libyaml parses (about 5x faster); composing, with the bounds, and constructing stay
        in Python."""

        def __init__(self, stream: str) -> None:
            CParser.__init__(self, stream)
            _BoundedComposer.__init__(self)
            _Constructor.__init__(self)
            _Resolver.__init__(self)

    LOADERS.insert(0, _CLoader)
except ImportError:  # PyYAML built without libyaml
    pass


def _yaml_problem(path: Path, text: str, exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    if mark is None:
        return f"{path}: YAML syntax error: {problem}"
    where = f"{path}:{mark.line + 1}:{mark.column + 1}"
    if isinstance(exc, _Refused):
        return f"{where}: {problem}"
    if problem == "exceeded maximum nesting depth":  # libyaml's own bound (1000 levels)
        return f"{where}: lists and mappings nest deeper than {MAX_DEPTH} levels"
    if problem == "found character that cannot start any token" and 0 <= mark.index < len(text):
        problem = f"found character {text[mark.index]!r} that cannot start any token"
    return f"{where}: YAML syntax error: {problem}"


def load_yaml(path: Path, loader_class: type[Any] | None = None) -> Any:
    """The file's one YAML document, read within the bounds above (by the fastest loader
    unless `loader_class`, one of LOADERS, is given)."""
    text = _decode(path, _read_bytes(path))
    loader = (loader_class or LOADERS[0])(text)
    try:
        return loader.get_single_data()
    except yaml.YAMLError as exc:
        raise ConfigFileError(_yaml_problem(path, text, exc)) from None
    finally:
        loader.dispose()
