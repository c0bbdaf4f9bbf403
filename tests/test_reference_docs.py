"""The reference docs in docs/ name everything they describe, so they cannot drift from
the code: every config key (walked from the pydantic models) and every admin route
(walked from the Starlette app), in the prose and in GET /admin/openapi.json."""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from pydantic import BaseModel
from starlette.routing import Route

from e2e import Stack
from gateway.request import responses
from gateway.admin import openapi as admin_openapi
from gateway.admin.app import create_admin_app
from gateway.config import ENV_PREFIX, Config, load_config
from gateway.metrics import Metrics
from gateway.policy import schema as policy_schema
from gateway.policy.load import (ASSERTIONS, FILES as POLICY_LOAD_FILES, FRAMEWORK, JURISDICTIONS, MODELS, ORGANIZATIONS,
                                 SUSPENSIONS)
from gateway.policy.reasons import PRECEDENCE, Reason, status_of
from test_admin import VIEWER, admin, admin_config, audit_record, chat

DOCS = Path(__file__).resolve().parent.parent / "docs"


def nested_model(annotation: object) -> tuple[str, type[BaseModel]] | None:
    """The model a field holds, with how its keys are written: a section (X or X | None),
    a mapping of them (`.NAME`) or a list of them (`[]`)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "", annotation
    args = [a for a in typing.get_args(annotation) if isinstance(a, type) and issubclass(a, BaseModel)]
    if not args:
        return None
    origin = typing.get_origin(annotation)
    shape = ".NAME" if origin is dict else "[]" if origin is list else ""
    return shape, args[0]


def config_keys(model: type[BaseModel] = Config, prefix: str = "") -> Iterator[str]:
    """Every key a config file can set, dotted: `redis.url`, `upstreams.NAME.url`."""
    for name, field in model.model_fields.items():
        key = prefix + name
        nested = nested_model(field.annotation)
        if nested is None or nested[0] or field.default is None:
            yield key  # a value; or sections that may be absent or many, documented as a whole too
        if nested is not None:
            yield from config_keys(nested[1], f"{key}{nested[0]}.")


def variable(key: str) -> str | None:
    """The environment variable of a key; None inside a mapping or list of sections."""
    return None if "NAME" in key or "[]" in key else ENV_PREFIX + key.upper().replace(".", "__")


CONFIG_REFERENCE = (DOCS / "configuration.md").read_text(encoding="utf-8")
POLICY_REFERENCE = (DOCS / "policy.md").read_text(encoding="utf-8")
KEYS = list(config_keys())


def test_the_walk_sees_the_whole_config() -> None:
    # Guards the walk itself: a nesting it failed to follow would pass every test below.
    assert {"listen", "upstreams.NAME.url", "identity.jwt.issuer", "admin.tokens[].role",
            "audit.unauthenticated.path", "export.otlp.endpoint"} <= set(KEYS)


@pytest.mark.parametrize("key", KEYS)
def test_every_config_key_is_in_the_reference(key: str) -> None:
    rows = [line for line in CONFIG_REFERENCE.splitlines() if line.startswith(f"| `{key}` |")]
    assert rows, f"docs/configuration.md has no row for `{key}`"
    cells = [cell.strip() for cell in rows[0].strip("|").split("|")]
    assert cells[4], f"`{key}` is in docs/configuration.md without a meaning"
    expected = variable(key)
    assert cells[3] == (f"`{expected}`" if expected else "-"), f"`{key}`: wrong environment variable"


def test_the_reference_names_no_key_the_config_lacks() -> None:
    documented = re.findall(r"^\| `([^`]+)` \|", CONFIG_REFERENCE, flags=re.M)
    assert sorted(set(documented) - set(KEYS)) == []


@pytest.mark.parametrize("example", re.findall(r"```yaml\n(.*?)```", CONFIG_REFERENCE, flags=re.S))
def test_the_reference_examples_are_valid_configs(example: str, tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(example)
    load_config(path, {})


def test_an_environment_variable_from_the_reference_sets_its_key() -> None:
    config = load_config(None, {"GATEWAY_EXPORT__OTLP__ENDPOINT": "http://collector:4318",
                                "GATEWAY_TRUSTED_PROXIES": "[10.0.0.0/8]"})
    assert config.export.otlp.endpoint == "http://collector:4318"
    assert config.trusted_proxies == ["10.0.0.0/8"]


# The admin API: every route of the admin app, in docs/admin-api.md and /admin/openapi.json.


def admin_routes() -> list[tuple[str, str]]:
    """(method, OpenAPI path) of every route `create_admin_app` serves. The collaborators are
    never called while the app is built, so none is needed to read its routes."""
    app = create_admin_app(None, Metrics(), list, None, [], control=None)  # type: ignore[arg-type]
    found = []
    for route in app.routes:
        assert isinstance(route, Route)
        path = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)  # {id:path} is {id} to a client
        found += [(method, path) for method in sorted(route.methods or ()) if method != "HEAD"]
    return found


ROUTES = admin_routes()
ADMIN_REFERENCE = (DOCS / "admin-api.md").read_text(encoding="utf-8")


def test_the_walk_sees_every_admin_route() -> None:
    assert {("GET", "/healthz"), ("GET", "/admin/openapi.json"), ("DELETE", "/admin/credentials/{id}"),
            ("POST", "/admin/proposals/{id}/{verb}")} <= set(ROUTES)


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_every_admin_route_is_in_the_reference(method: str, path: str) -> None:
    assert f"\n### {method} {path}\n" in ADMIN_REFERENCE, f"docs/admin-api.md has no section for {method} {path}"


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_every_admin_route_is_in_the_openapi_document(method: str, path: str) -> None:
    assert method.lower() in admin_openapi.document()["paths"].get(path, {}), f"{method} {path} is not in the OpenAPI"


def test_the_openapi_document_names_no_route_the_app_lacks() -> None:
    described = {(method.upper(), path) for path, item in admin_openapi.document()["paths"].items() for method in item}
    assert sorted(described - set(ROUTES)) == []


def test_the_openapi_document_is_openapi_3_1_with_valid_schemas() -> None:
    document = admin_openapi.document()
    assert document["openapi"] == "3.1.0"
    resolver = {"components": document["components"]}
    for path, item in document["paths"].items():
        for method, operation in item.items():
            assert operation["responses"], f"{method} {path} has no responses"
            named = {p["name"] for p in operation["parameters"] if p["in"] == "path"}
            assert named == set(re.findall(r"\{(\w+)\}", path)), f"{method} {path}: path parameters"
            for schema in schemas_of(operation):
                jsonschema.Draft202012Validator.check_schema(schema | resolver)


def schemas_of(operation: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for content in [operation.get("requestBody", {}).get("content", {})] + [
            answer.get("content", {}) for answer in operation["responses"].values()]:
        for media in content.values():
            yield media["schema"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = Stack(tmp_path_factory.mktemp("openapi"), extra_config=admin_config())
    yield stack
    stack.close()


def test_a_viewer_reads_the_openapi_document_from_a_running_gateway(stack: Stack) -> None:
    status, served = admin(stack, "GET", "/admin/openapi.json", token=VIEWER)
    assert status == 200 and served == admin_openapi.document()
    assert admin(stack, "GET", "/admin/openapi.json", token=None)[0] == 401


# Policy files (docs/policy.md): every key the schema accepts has a row in its file's table.

# Each file's entries, as docs/policy.md writes their keys; a mapping's key is `*` (NAME, ID, TIER).
POLICY_FILES: dict[str, tuple[str, type[BaseModel]]] = {
    JURISDICTIONS: ("groups.*.", policy_schema.Group),
    FRAMEWORK: ("", policy_schema.Framework),
    ORGANIZATIONS: ("organizations.*.", policy_schema.Organization),
    MODELS: ("models.*.", policy_schema.Model),
    SUSPENSIONS: ("suspensions[].", policy_schema.Suspension),
    ASSERTIONS: ("assertions.*.", policy_schema.Assertion),
}


def policy_keys(model: type[BaseModel], prefix: str) -> Iterator[str]:
    """Every value a policy file can set, dotted as the file spells it: `models.*.release[].from`."""
    for name, field in model.model_fields.items():
        key = prefix + (field.alias or name)
        nested = nested_model(field.annotation)
        if nested is None:
            yield key
        else:
            yield from policy_keys(nested[1], key + nested[0].replace(".NAME", ".*") + ".")


def documented_policy_keys(file: str) -> list[str]:
    """The keys in the first column of the file's section table, as patterns: a placeholder (NAME, ID,
    TIER) or `*` stands for any one name, and `a` / `b` documents both."""
    section = POLICY_REFERENCE.split(f"\n## `{file}`\n", 1)[1].split("\n## ", 1)[0]
    cells = re.findall(r"^\| (`[^|]+`) \|", section, flags=re.M)
    keys = [key.strip().strip("`") for cell in cells for key in cell.split(" / ")]
    return [re.sub(r"(?<![^.])[A-Z]+(?![^.])", "*", key) for key in keys if key != "Key"]


def names(documented: str, key: str, *, or_a_section_of_it: bool = False) -> bool:
    """Whether a documented key is `key` (a `*` in either stands for one name), or with
    `or_a_section_of_it` a section holding it: `models.*.release` holds `models.*.release[].from`."""
    pattern = r"[^.\[]+".join(re.escape(part) for part in documented.split("*"))
    return re.fullmatch(pattern + (r"(?:[.\[].*)?" if or_a_section_of_it else ""), key) is not None


def test_the_walk_sees_every_policy_file_and_key() -> None:
    assert set(POLICY_FILES) == set(POLICY_LOAD_FILES), "a policy file the walk does not know"
    keys = {key for prefix, model in POLICY_FILES.values() for key in policy_keys(model, prefix)}
    assert {"groups.*.countries", "covered_model.any[].at_least", "rules.covered_models.unknown_country",
            "quotas.*.tokens_per_day", "models.*.release[].from", "suspensions[].deny_outside",
            "assertions.*.never_allow.before.stage"} <= keys
    assert names("rules.*.mode", "rules.all_models.mode") and not names("rules.*.mode", "mode")
    assert names("models.*.release", "models.*.release[].from", or_a_section_of_it=True)
    assert not names("models.*.release", "models.*.release[].from") and not names("groups.*.notes", "groups.*.notes_x")


@pytest.mark.parametrize("key", [(file, key) for file, (prefix, model) in POLICY_FILES.items()
                                 for key in policy_keys(model, prefix)], ids=lambda pair: f"{pair[0]}:{pair[1]}")
def test_every_policy_key_is_in_the_policy_reference(key: tuple[str, str]) -> None:
    file, name = key
    assert any(names(documented, name) for documented in documented_policy_keys(file)), \
        f"docs/policy.md, `{file}`: no row for `{name}`"


@pytest.mark.parametrize("file", list(POLICY_FILES))
def test_the_policy_reference_names_no_key_the_schema_lacks(file: str) -> None:
    prefix, model = POLICY_FILES[file]
    keys = list(policy_keys(model, prefix))
    assert [documented for documented in documented_policy_keys(file)
            if not any(names(documented, key, or_a_section_of_it=True) for key in keys)] == []


# Errors, metrics and audit records.

ERRORS_REFERENCE = (DOCS / "errors.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("reason", list(Reason))
def test_every_reason_is_in_the_errors_and_its_precedence_in_the_policy_reference(reason: Reason) -> None:
    assert f"\n| `{reason}` | {status_of(reason)}" in ERRORS_REFERENCE
    assert re.search(rf"\n\| \d+ \| `{reason}` \| {status_of(reason)} \|", POLICY_REFERENCE)


def test_the_policy_reference_lists_reasons_in_precedence_order() -> None:
    listed = re.findall(r"\n\| \d+ \| `(\w+)`", POLICY_REFERENCE)
    assert listed == [str(name).split("/")[0] for name, _ in PRECEDENCE]


@pytest.mark.parametrize("status", sorted(responses._BY_STATUS))
def test_every_request_error_is_in_the_errors_reference(status: int) -> None:
    assert f"\n| {status} | `{responses.for_status(status).code}` |" in ERRORS_REFERENCE


def exposed_metrics() -> list[str]:
    """The gateway's own series, as /metrics names them (counters with _total)."""
    families = Metrics(fleet=True).registry.collect()
    return [f.name + ("_total" if f.type == "counter" else "") for f in families if f.name.startswith("gateway_")]


@pytest.mark.parametrize("name", exposed_metrics())
def test_every_metric_is_in_the_metrics_reference(name: str) -> None:
    assert f"\n| `{name}` |" in (DOCS / "metrics.md").read_text(encoding="utf-8")


def test_every_field_of_an_audit_record_is_in_the_audit_reference(stack: Stack) -> None:
    status, _, decision_id = chat(stack, "org-acme")
    assert status == 200
    record = audit_record(stack, decision_id)
    documented = set(re.findall(r"`(\w+)`", (DOCS / "audit.md").read_text(encoding="utf-8")))
    assert sorted(set(record) - documented) == []
