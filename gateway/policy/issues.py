"""Validation findings: every error names its file, key path and line."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from gateway.policy.yamlsource import Path


def format_path(path: Path) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def validation_message(err: Any) -> str:
    """One pydantic error as a person reads it: a value outside its allowed set is
    named with every allowed value, a check's own message is given without pydantic's prefix."""
    kind = err["type"]
    if kind == "extra_forbidden":
        return "unknown key"
    if kind in ("literal_error", "enum"):
        return f"{err.get('input')!r} is not allowed; allowed: {err['ctx']['expected']}"
    if kind == "value_error":
        return str(err["ctx"]["error"])
    return str(err["msg"])


@dataclass(frozen=True, slots=True)
class Issue:
    file: str
    path: str
    message: str
    line: int | None = None
    severity: Literal["error", "warning"] = "error"

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        key = f" {self.path}:" if self.path else ""
        return f"{where}:{key} {self.message}"

    def as_dict(self) -> dict[str, object]:
        return {
            "file": self.file,
            "line": self.line,
            "path": self.path,
            "message": self.message,
            "severity": self.severity,
        }


class PolicyError(Exception):
    """A bundle was refused; `issues` holds every error found (and warnings)."""

    def __init__(self, issues: Iterable[Issue]) -> None:
        self.issues = tuple(issues)
        self.errors = tuple(i for i in self.issues if i.severity == "error")
        count = len(self.errors)
        super().__init__(f"policy bundle refused: {count} error{'s' if count != 1 else ''}")

    def report(self) -> str:
        return "\n".join([str(self), *(str(issue) for issue in self.errors)])
