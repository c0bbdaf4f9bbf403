"""What a caller learns that it should not (issue 12, items 8 and 10).

- The model catalogue. A standard-tier caller's `GET /v1/models` and `GET
  /v1/models/{id}` name only the models it may use: not in a cursor (`first_id`,
  `last_id`), not in an entry's lineage (`parent`, `root`), not anywhere in the
  body. The upstream here really sends those fields naming concealed models
  (its `lineage`, Anthropic's page cursors), so each case shows the gateway
  removing them rather than an upstream that never sent them.
- The admin listener. `/metrics` never names a concealed model (its series say
  `model="unreleased"`), and a scraper without a token gets nothing from it where
  it is published beyond the host; health and readiness stay open for probes.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e import US_IP, Stack
from gateway.config import load_config
from gateway.server import Service

from .conftest import CHAT, Probe, chat_body

PUBLIC = "org-public"  # standard tier, declared US
# At the harness's decision time, for org-public: frontier-5.6 is pre-GA (limited_partner) and
# concealed, nextgen-7 not yet released, not-in-policy unknown to the policy.
VISIBLE = ["fable", "mythos", "small-2"]
CONCEALED = ("frontier-5.6", "fr-5.6", "frontier-5.6-2026-11-01", "nextgen-7", "not-in-policy")
# Each model the caller may use derives from one it may not (OpenAI's legacy `parent`/`root`).
LINEAGE = {"fable": "frontier-5.6", "small-2": "nextgen-7", "nextgen-7": "not-in-policy", "mythos": "fr-5.6"}
OPENAI_FIELDS = {"id", "object", "created", "owned_by"}
ANTHROPIC_FIELDS = {"type", "id", "display_name", "created_at"}
ANTHROPIC = ("anthropic-version", "2023-06-01")


@pytest.fixture
def lineage(stack: Stack, gw: Probe) -> Iterator[Probe]:
    app = stack.upstream.app
    app.lineage = dict(LINEAGE)
    try:
        yield gw
    finally:
        app.lineage = {}


def get(url: str, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def catalogue(stack: Stack, path: str = "/v1/models", org: str = PUBLIC, *extra: tuple[str, str]) -> tuple[int, bytes]:
    """The gateway's answer to `org`, located in the US."""
    status, _, body = get(stack.url, path, {"Authorization": f"Bearer {stack.api_key(org)}", "X-Forwarded-For": US_IP,
                                            **dict(extra)})
    return status, body


def upstream_catalogue(stack: Stack, path: str = "/v1/models", *extra: tuple[str, str]) -> bytes:
    """What the upstream itself answers: the leak the gateway must close."""
    return get(stack.upstream.url, path, dict(extra))[2]


def names_concealed(body: bytes) -> list[str]:
    text = body.decode().casefold()
    return [name for name in CONCEALED if name in text]


# --- the model catalogue ---------------------------------------------------------------


def test_the_openai_list_names_only_the_callers_models(stack: Stack, lineage: Probe) -> None:
    assert names_concealed(upstream_catalogue(stack)), "the upstream does name concealed models"
    status, body = catalogue(stack)
    assert status == 200, body
    answer = json.loads(body)
    assert set(answer) == {"object", "data"} and answer["object"] == "list"
    assert [entry["id"] for entry in answer["data"]] == VISIBLE
    for entry in answer["data"]:
        assert set(entry) <= OPENAI_FIELDS and entry["object"] == "model", entry
    assert names_concealed(body) == []


def test_the_anthropic_list_is_a_fresh_page(stack: Stack, lineage: Probe) -> None:
    """Anthropic's page cursors name its first and last entries: frontier-5.6 and
    not-in-policy in the upstream's catalogue, both hidden from this caller."""
    upstream = json.loads(upstream_catalogue(stack, "/v1/models", ANTHROPIC))
    assert (upstream["first_id"], upstream["last_id"]) == ("frontier-5.6", "not-in-policy")
    status, body = catalogue(stack, "/v1/models", PUBLIC, ANTHROPIC)
    assert status == 200, body
    answer = json.loads(body)
    assert set(answer) == {"data", "has_more", "first_id", "last_id"}
    assert [entry["id"] for entry in answer["data"]] == VISIBLE
    assert (answer["first_id"], answer["last_id"], answer["has_more"]) == ("fable", "small-2", False)
    for entry in answer["data"]:
        assert set(entry) <= ANTHROPIC_FIELDS and entry["type"] == "model", entry
    assert names_concealed(body) == []


def test_an_upstream_that_says_there_is_more_does_not_say_so_through_the_gateway(stack: Stack, lineage: Probe) -> None:
    """`has_more` with the cursor after a hidden model would tell the caller one exists, and
    the gateway never asks for the next page: the caller's page is complete."""
    app = stack.upstream.app
    models = app.models
    app.models = models + [f"hidden-{n}" for n in range(20)]
    try:
        assert json.loads(upstream_catalogue(stack, "/v1/models", ANTHROPIC))["has_more"] is True
        status, body = catalogue(stack, "/v1/models", PUBLIC, ANTHROPIC)
    finally:
        app.models = models
    answer = json.loads(body)
    assert status == 200 and answer["has_more"] is False and "hidden" not in body.decode()


@pytest.mark.parametrize("extra", [(), (ANTHROPIC,)], ids=["openai", "anthropic"])
@pytest.mark.parametrize("model", VISIBLE)
def test_reading_an_allowed_model_names_no_other(stack: Stack, lineage: Probe, model: str,
                                                  extra: tuple[tuple[str, str], ...]) -> None:
    status, body = catalogue(stack, f"/v1/models/{model}", PUBLIC, *extra)
    assert status == 200, body
    entry = json.loads(body)
    assert entry["id"] == model and set(entry) <= (ANTHROPIC_FIELDS if extra else OPENAI_FIELDS), entry
    assert names_concealed(body) == []
    [seen] = stack.received
    assert (seen.method, seen.path, seen.body) == ("GET", f"/v1/models/{model}", b"")


@pytest.mark.parametrize("model", ["frontier-5.6", "FR-5.6", "nextgen-7", "not-in-policy", "no-such-model"])
def test_reading_a_concealed_model_is_an_unknown_model(stack: Stack, gw: Probe, model: str) -> None:
    status, body = catalogue(stack, f"/v1/models/{model}")
    assert status == 404 and json.loads(body)["error"]["code"] == "model_not_found"
    assert names_concealed(body) == [] and model.casefold() not in body.decode().casefold()
    gw.nothing_forwarded()


def test_a_model_the_upstream_lacks_gets_the_gateways_own_404(stack: Stack, gw: Probe) -> None:
    """The upstream's 404 names the model and says it does not exist; the caller gets the
    same answer as for a model the gateway hides."""
    app = stack.upstream.app
    models = app.models
    app.models = [m for m in models if m != "small-2"]
    try:
        status, body = catalogue(stack, "/v1/models/small-2")
    finally:
        app.models = models
    assert status == 404 and json.loads(body) == json.loads(catalogue(stack, "/v1/models/nextgen-7")[1])


def test_a_partner_sees_its_pre_release_model_and_nothing_later(stack: Stack, lineage: Probe) -> None:
    status, body = catalogue(stack, "/v1/models", "org-acme")
    answer = json.loads(body)
    assert status == 200 and [e["id"] for e in answer["data"]] == ["frontier-5.6", *VISIBLE]
    assert "nextgen" not in body.decode() and "not-in-policy" not in body.decode()
    for entry in answer["data"]:
        assert set(entry) <= OPENAI_FIELDS, entry


@pytest.mark.parametrize("document", [
    b"[]", b'{"object": "list"}', b'{"data": {"id": "small-2"}}', b"not json", b'{"data": "small-2"}',
])
def test_an_unreadable_catalogue_is_a_502(stack: Stack, gw: Probe, document: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    app = stack.upstream.app

    async def answer(send: Any, query: bytes, anthropic: bool, extra: list[Any]) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": document})

    monkeypatch.setattr(app, "_models_list", answer)
    status, body = catalogue(stack)
    assert status == 502 and json.loads(body)["error"]["code"] == "upstream_unavailable"


# --- /metrics ----------------------------------------------------------------------------


def scrape(url: str, token: str | None = None) -> tuple[int, dict[str, str], str]:
    request = urllib.request.Request(url + "/metrics", headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read().decode()
    except urllib.error.HTTPError as refused:
        return refused.code, {k.lower(): v for k, v in refused.headers.items()}, refused.read().decode()


def model_labels(exposition: str) -> set[str]:
    return set(re.findall(r'\bmodel="([^"]*)"', exposition))


def series(exposition: str, name: str) -> dict[frozenset[tuple[str, str]], float]:
    """The samples of one metric, by label set."""
    found = {}
    for labels, value in re.findall(rf"^{name}\{{([^}}]*)\}} (\S+)$", exposition, re.M):
        found[frozenset(re.findall(r'(\w+)="([^"]*)"', labels))] = float(value)
    return found


def test_metrics_name_no_concealed_model(stack: Stack, gw: Probe) -> None:
    """Requests for a concealed model (refused, or allowed to a partner), for one not yet
    released and for an unknown one: their series say `unreleased` or `none`, never the id."""
    for org, model in [(PUBLIC, "frontier-5.6"), ("org-acme", "frontier-5.6"), ("org-acme", "fr-5.6"),
                       ("org-caisi", "nextgen-7"), (PUBLIC, "not-in-policy"), (PUBLIC, "small-2")]:
        reply = gw.send(body=chat_body(model), path=CHAT, credential=stack.api_key(org))
        assert reply.status in (200, 404), reply
    assert catalogue(stack, "/v1/models/frontier-5.6", "org-acme")[0] == 200
    status, _, exposition = scrape(stack.admin_url)
    assert status == 200
    labels = model_labels(exposition)
    assert {"unreleased", "small-2", "none"} <= labels
    assert [name for name in CONCEALED if name in exposition.casefold()] == []
    partner = {"decision": "allow", "reason": "none", "model": "unreleased", "stage": "limited_partner",
               "tier": "vetted_partner"}
    assert series(exposition, "gateway_requests_total").get(frozenset(partner.items()), 0) >= 3, \
        "the partner's requests are counted, under the fixed label"


# --- the admin listener, to a scraper without a token ----------------------------------------

VIEWER, OPERATOR = "viewer-token-for-leaks", "operator-token-for-leaks"


def tokens_config(*, require: bool | None = None) -> str:
    digest = lambda token: hashlib.sha256(token.encode()).hexdigest()  # noqa: E731
    lines = ["admin:", "  tokens:",
             f'    - {{name: prometheus, sha256: "{digest(VIEWER)}", role: viewer}}',
             f'    - {{name: ops, sha256: "{digest(OPERATOR)}", role: operator}}']
    if require is not None:
        lines.append(f"  metrics_require_token: {str(require).lower()}")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A gateway whose admin listener is on every interface, with tokens and no other setting."""
    stack = Stack(tmp_path_factory.mktemp("published"), extra_config=tokens_config(), admin_listen="0.0.0.0:0")
    yield stack
    stack.close()


def test_a_published_admin_listener_shows_metrics_only_for_a_token(published: Stack) -> None:
    catalogue(published, "/v1/models/frontier-5.6", "org-acme")  # at least one series with a model
    for token in (None, "", "wrong-token", VIEWER + "x", hashlib.sha256(VIEWER.encode()).hexdigest()):
        status, headers, body = scrape(published.admin_url, token)
        assert status == 401 and headers["www-authenticate"].startswith("Bearer"), (token, status)
        assert "gateway_" not in body and json.loads(body)["error"]["code"] == "unauthorized"
    for token in (VIEWER, OPERATOR):
        status, _, body = scrape(published.admin_url, token)
        assert status == 200 and "gateway_requests_total" in body
    for probe in ("/healthz", "/readyz"):
        with urllib.request.urlopen(published.admin_url + probe, timeout=5) as response:
            assert response.status == 200, probe


def test_the_admin_api_stays_closed_to_a_scraper(published: Stack) -> None:
    for path in ("/admin/policy", "/admin/decisions", "/admin/changes", "/admin/suspensions"):
        status, _, _ = get(published.admin_url, path, {})
        assert status == 401, path


def test_a_loopback_listener_may_require_the_token_too(tmp_path: Path) -> None:
    stack = Stack(tmp_path, extra_config=tokens_config(require=True))
    try:
        assert scrape(stack.admin_url)[0] == 401
        assert scrape(stack.admin_url, VIEWER)[0] == 200
    finally:
        stack.close()


def write_config(directory: Path, admin: str, extra: str = "") -> Path:
    path = directory / "gateway.yaml"
    path.write_text(f"listen: 127.0.0.1:0\nadmin_listen: \"{admin}\"\nstate_dir: state\n{extra}")
    return path


@pytest.mark.parametrize("admin", ["0.0.0.0:9090", "[::]:9090", "10.0.0.7:9090", "gateway.internal:9090"])
def test_a_published_admin_listener_without_tokens_refuses_to_start(tmp_path: Path, admin: str) -> None:
    config = load_config(write_config(tmp_path, admin), {})
    assert config.metrics_require_token
    with pytest.raises(ValueError, match="viewer token for Prometheus"):
        Service(config)
    opted_out = load_config(write_config(tmp_path, admin, "admin: {metrics_require_token: false}\n"), {})
    assert not opted_out.metrics_require_token
    Service(opted_out)  # the operator's explicit choice (the network limits who reaches it): logged at start


@pytest.mark.parametrize("admin", ["127.0.0.1:9090", "127.8.9.10:0", "[::1]:9090", "localhost:9090"])
def test_a_loopback_admin_listener_needs_no_token(tmp_path: Path, admin: str) -> None:
    config = load_config(write_config(tmp_path, admin), {})
    assert not config.metrics_require_token
    Service(config)
    with pytest.raises(ValueError, match="metrics_require_token is true"):
        Service(load_config(write_config(tmp_path, admin, "admin: {metrics_require_token: true}\n"), {}))
