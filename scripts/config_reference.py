"""Print the configuration keys of gateway/config.py as markdown tables, one per section.

A starting point for docs/configuration.md, not its source: the doc is written by hand
around these tables, and tests/test_reference_docs.py checks that no key is missing.
The description column is taken from the comment on or above each field.

    python scripts/config_reference.py > /tmp/keys.md
"""

from __future__ import annotations

import inspect
import json
import re
import types
import typing
from collections.abc import Iterator

from pydantic import BaseModel
from pydantic_core import to_jsonable_python
from pydantic.fields import FieldInfo

from gateway.config import ENV_PREFIX, Config


def sections(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, type[BaseModel]]]:
    """Every section of the config, depth first: (dotted path, model)."""
    yield prefix, model
    for name, field in model.model_fields.items():
        child = section_model(field.annotation)
        if child is not None:
            yield from sections(child, f"{prefix}{name}.")
        elif (item := item_model(field.annotation)) is not None:
            yield from sections(item[1], f"{prefix}{name}{item[0]}.")


def section_model(annotation: object) -> type[BaseModel] | None:
    """The model a field nests (X or X | None); None for a plain value or a mapping of models."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        models = [a for a in typing.get_args(annotation) if isinstance(a, type) and issubclass(a, BaseModel)]
        return models[0] if len(models) == 1 else None
    return None


def item_model(annotation: object) -> tuple[str, type[BaseModel]] | None:
    """A mapping of models (`.NAME`) or a list of them (`[]`): its key form and the model."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    last = args[-1] if args else None
    if isinstance(last, type) and issubclass(last, BaseModel):
        return (".NAME" if origin is dict else "[]"), last
    return None


def comments(model: type[BaseModel]) -> dict[str, str]:
    """Each field's comment: the one ending its line, or the block just above it."""
    found: dict[str, str] = {}
    above: list[str] = []
    for line in inspect.getsource(model).splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            above.append(stripped.lstrip("# "))
            continue
        match = re.match(r"\s+(\w+): .*?(?:  #\s*(.*))?$", line)
        if match and match.group(1) in model.model_fields:
            found[match.group(1)] = " ".join(above + ([match.group(2)] if match.group(2) else []))
        above = []
    return found


def type_name(annotation: object) -> str:
    """A type as a reader writes it in YAML: `float > 0`, `"json" or "text"`, `list[str]`."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return type_name(args[0]) + bounds(args[1:])
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(arg) for arg in args)
    if origin is typing.Literal:
        return " or ".join(json.dumps(arg) for arg in args)
    if origin in (list, dict):
        return f"{origin.__name__}[{', '.join(type_name(arg) for arg in args)}]"
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation))


def bounds(metadata: typing.Iterable[object]) -> str:
    """The numeric limits of a field (`>= 1`, `<= 10`); patterns are left to the prose."""
    found = []
    for item in metadata:
        for part in getattr(item, "metadata", [item]):
            for attribute, sign in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
                if getattr(part, attribute, None) is not None:
                    found.append(f"{sign} {getattr(part, attribute)}")
    return " " + ", ".join(found) if found else ""


def default_of(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    value = field.default
    if isinstance(value, BaseModel):
        return "(section)"
    return "`" + json.dumps(to_jsonable_python(value)) + "`"


def rows(path: str, model: type[BaseModel]) -> Iterator[str]:
    notes = comments(model)
    for name, field in model.model_fields.items():
        if section_model(field.annotation) is not None and field.default is not None:
            continue
        key = f"{path}{name}"
        variable = ENV_PREFIX + key.upper().replace(".", "__") if "NAME" not in key and "[]" not in key else "-"
        kind = type_name(field.annotation) + bounds(field.metadata)
        yield (f"| `{key}` | {kind} | {default_of(field)} | {variable if variable == '-' else f'`{variable}`'} | "
               f"{notes.get(name, '')} |")


def main() -> None:
    for path, model in sections(Config):
        table = list(rows(path, model))
        if table:  # a section of sections only (export) has no table of its own
            print(f"\n### `{path.rstrip('.') or '(top level)'}`\n")
            print("| Key | Type | Default | Environment | Meaning |\n|---|---|---|---|---|")
            print("\n".join(table))


if __name__ == "__main__":
    main()
