"""YAML reading that keeps line numbers and refuses duplicate keys.

PyYAML silently keeps the last of two equal keys; in a policy file that hides a
reviewer's mistake (two `tiers:` under one stage), so a duplicate is an error.
Every value's line is remembered by its key path, so that validation errors
can name `file:line` as well as the path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

Path = tuple[str | int, ...]


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


def parse(text: str) -> YamlDocument:
    """Parse one YAML document; raise YamlSyntaxError on malformed text."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        doc = YamlDocument(data=None)
        if node is not None:
            doc.data = _build(node, (), doc, yaml.SafeLoader(""))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise YamlSyntaxError(f"YAML syntax error: {problem}", line) from None
    except RecursionError:
        raise YamlSyntaxError("YAML nesting is too deep", None) from None
    return doc


def _build(node: yaml.Node, path: Path, doc: YamlDocument, loader: yaml.SafeLoader) -> Any:
    if len(doc.lines) >= MAX_VALUES and path not in doc.lines:
        raise YamlSyntaxError(f"more than {MAX_VALUES} values (alias expansion?)", None)
    doc.lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if isinstance(key, (list, dict)):
                key = str(key)
            if key in result:
                line = key_node.start_mark.line + 1
                doc.problems.append((path + (str(key),), line, f"duplicate key {key!r}"))
                continue
            result[key] = _build(value_node, path + (str(key),), doc, loader)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_build(item, path + (i,), doc, loader) for i, item in enumerate(node.value)]
    return loader.construct_object(node, deep=True)
