"""YAML reading that keeps line numbers and refuses duplicate keys.

PyYAML silently keeps the last of two equal keys; in a policy file that hides a
reviewer's mistake (two `tiers:` under one stage), so a duplicate is an error.
Every value's line is remembered by its key path, so that validation errors
can name `file:line` as well as the path.

Scalars resolve as in YAML 1.2's core schema rather than PyYAML's YAML 1.1:
`NO` (Norway), `yes` and `on` stay text, and `1e26` / `1.0e26` are numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import re

import yaml

Path = tuple[str | int, ...]


# libyaml's parser when present: several times faster on large registries.
_Base = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_Base):  # type: ignore[valid-type,misc]
    """SafeLoader with YAML 1.2 core-schema booleans and floats."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:float")]
    for first, resolvers in _Base.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+.0123456789"),
)


@dataclass
class YamlDocument:
    data: Any
    lines: dict[Path, int] = field(default_factory=dict)
    problems: list[tuple[Path, int, str]] = field(default_factory=list)

    def line_of(self, path: Path) -> int | None:
        """The line of `path`, or of its nearest ancestor that has one."""
        for end in range(len(path), -1, -1):
            line = self.lines.get(path[:end])
            if line is not None:
                return line
        return None


class YamlSyntaxError(ValueError):
    def __init__(self, message: str, line: int | None) -> None:
        super().__init__(message)
        self.line = line


# Aliases make a node graph; expanding it can grow exponentially ("billion
# laughs"), so the number of values built is capped.
MAX_VALUES = 1_000_000
_PLAIN_COLLECTIONS = frozenset({"tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"})
_NULL = "tag:yaml.org,2002:null"
_NULLS = frozenset({"", "~", "null", "Null", "NULL"})


def parse(text: str) -> YamlDocument:
    """Parse one YAML document; raise YamlSyntaxError on malformed text."""
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:  # a lone surrogate (text from JSON): libyaml cannot read it
            raise YamlSyntaxError(f"YAML syntax error: text is not encodable as UTF-8 ({exc.reason})", None) from None
        bom = text.find("\ufeff", 1)
        if bom > 0:
            # libyaml skips a byte order mark anywhere, PyYAML's own parser reads
            # one inside the text as content: `\ufeff# note: x` is a comment to
            # one and a key to the other. Only the very first character may be one.
            raise YamlSyntaxError("YAML syntax error: a byte order mark inside the text", text.count("\n", 0, bom) + 1)
    try:
        node = yaml.compose(text, Loader=_Loader)
        doc = YamlDocument(data=None)
        if node is not None:
            doc.data = _build(node, (), doc, _Loader(""))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise YamlSyntaxError(f"YAML syntax error: {problem}", line) from None
    except RecursionError:
        raise YamlSyntaxError("YAML nesting is too deep", None) from None
    return doc


def _build(node: yaml.Node, path: Path, doc: YamlDocument, loader: yaml.SafeLoader, line: int | None = None) -> Any:
    """Build the value of `node`; a mapping value's line is the line of its key."""
    if len(doc.lines) >= MAX_VALUES and path not in doc.lines:
        raise YamlSyntaxError(f"more than {MAX_VALUES} values (alias expansion?)", None)
    doc.lines[path] = line or node.start_mark.line + 1
    if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)) and node.tag not in _PLAIN_COLLECTIONS:
        # Built by hand below, so a tag would be ignored: `!!str [US]` would be
        # read as a list where any YAML reader sees an error, `!!set` as a map.
        raise YamlSyntaxError(f"YAML syntax error: tag {node.tag!r} is not supported here", node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = _construct(key_node, loader)
            if isinstance(key, (list, dict)):
                key = str(key)
            if key in result:
                line = key_node.start_mark.line + 1
                doc.problems.append((path + (str(key),), line, f"duplicate key {key!r}"))
                continue
            result[key] = _build(value_node, path + (str(key),), doc, loader, key_node.start_mark.line + 1)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_build(item, path + (i,), doc, loader) for i, item in enumerate(node.value)]
    return _construct(node, loader)


def _construct(node: yaml.Node, loader: yaml.SafeLoader) -> Any:
    """A scalar's (or key's) value. PyYAML's constructors let bad scalars escape
    as whatever their code hits: ValueError (`2026-13-01`, `!!int 0x`),
    IndexError (`!!int ""`), AttributeError (`!!timestamp x`). Callers expect a
    policy or config error, so every one becomes a YamlSyntaxError."""
    if node.tag == _NULL and isinstance(node, yaml.ScalarNode) and node.value not in _NULLS:
        # PyYAML reads `!!null 2026-12-01` as null: a value that would vanish.
        raise YamlSyntaxError(f"YAML syntax error: bad value {_excerpt(node)}: not a null", node.start_mark.line + 1)
    try:
        return loader.construct_object(node, deep=True)
    except (yaml.YAMLError, YamlSyntaxError, RecursionError):
        raise
    except Exception as exc:
        raise YamlSyntaxError(f"YAML syntax error: bad value {_excerpt(node)}: {exc}", node.start_mark.line + 1) from None


def _excerpt(node: yaml.Node) -> str:
    value = node.value if isinstance(node, yaml.ScalarNode) else node.tag
    return repr(value if len(value) <= 40 else value[:40] + "...")
