"""The deployment material, checked offline (no container engine or cluster runs here).

- Dockerfile and .dockerignore: stages, base image, non-root user, health check (its Python is
  run against a live and a dead listener), the build context (what .dockerignore lets in),
  the baked-in config, and the read-only behaviour of the embedded country database.
- docker-compose.yml: the Compose Specification's JSON schema (vendored by check-jsonschema)
  and the cross-references the schema cannot see: mounted files exist, ports do not collide,
  nginx's upstreams are the replicas, the replicas trust exactly nginx's address, Prometheus
  scrapes every replica, Grafana's provisioning finds the dashboard; the demo-credentials
  init renders a config the gateway accepts (against a real Redis).
- deploy/k8s: every manifest against the Kubernetes JSON schemas of kubernetes-validate
  (strict: no unknown fields) for the oldest and newest versions it bundles, the
  ServiceMonitor (a CRD, no schema there) against the required fields of its CRD, and the
  cross-references (selectors, named ports, ConfigMaps, Secret keys, probes, security).
- nginx: `nginx -t` on deploy/nginx (when nginx is installed).

Regenerate deploy/k8s/policies-configmap.yaml after editing policies/:
    .venv/bin/python tests/test_deploy_manifests.py --write-policies-configmap
"""

from __future__ import annotations

import hashlib
import http.server
import ipaddress
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
POLICIES = ROOT / "policies"
POLICY_FILES = ("framework.yaml", "jurisdictions.yaml", "models.yaml", "organizations.yaml", "suspensions.yaml")
POLICIES_CONFIGMAP = K8S / "policies-configmap.yaml"


# ---------------------------------------------------------------- helpers


def load_yaml_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def render_policies_configmap() -> str:
    """deploy/k8s/policies-configmap.yaml: the shipped bundle, file by file."""

    class Literal(str):
        pass

    def literal(dumper: yaml.SafeDumper, value: Literal) -> yaml.ScalarNode:
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|")

    class Dumper(yaml.SafeDumper):
        pass

    Dumper.add_representer(Literal, literal)
    document = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "frontier-gateway-policies", "namespace": "frontier-gateway",
                     "labels": {"app.kubernetes.io/name": "frontier-gateway"}},
        "data": {name: Literal((POLICIES / name).read_text()) for name in POLICY_FILES},
    }
    header = ("# GENERATED from policies/ by `.venv/bin/python tests/test_deploy_manifests.py "
              "--write-policies-configmap`;\n# do not edit. Your own reviewed bundle replaces it: "
              "kubectl -n frontier-gateway create configmap\n# frontier-gateway-policies --from-file=policies/ "
              "--dry-run=client -o yaml | kubectl apply -f - (docs/operators.md).\n")
    return header + yaml.dump(document, Dumper=Dumper, sort_keys=False, width=1000, allow_unicode=True)


def dockerfile_stages() -> list[dict[str, Any]]:
    """The Dockerfile as stages of (instruction, argument) pairs, continuation lines joined."""
    text = (ROOT / "Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", text)
    stages: list[dict[str, Any]] = []
    args: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, rest = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name.strip()] = default.strip()
            continue
        if instruction == "FROM":
            image = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), rest.split()[0])
            name = rest.split()[2] if " AS " in rest.upper() else None
            stages.append({"image": image, "name": name, "steps": []})
            continue
        stages[-1]["steps"].append((instruction, rest.strip()))
    return stages


def dockerignore_allows(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule: the last pattern matching the path or one of its parent
    directories decides; `!` re-includes; `**` spans directories."""
    def regex(pattern: str) -> re.Pattern[str]:
        out = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**", i):
                out += ".*"
                i += 2
                if pattern.startswith("/", i):
                    out = out[:-2] + "(.*/)?"
                    i += 1
            elif pattern[i] == "*":
                out += "[^/]*"
                i += 1
            elif pattern[i] == "?":
                out += "[^/]"
                i += 1
            else:
                out += re.escape(pattern[i])
                i += 1
        return re.compile(out + r"\Z")

    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    included = True
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = os.path.normpath(raw[1:] if negate else raw).lstrip("/")
        if any(regex(pattern).match(candidate) for candidate in candidates):
            included = negate
    return included


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def repo_files() -> list[str]:
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    return [line for line in listed.stdout.splitlines() if (ROOT / line).is_file()]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def manifests() -> dict[tuple[str, str], dict[str, Any]]:
    """Every Kubernetes object in deploy/k8s (the example Secret included), by (kind, name)."""
    found = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for document in load_yaml_documents(path):
            key = (document["kind"], document["metadata"]["name"])
            assert key not in found, f"{key} defined twice"
            found[key] = document | {"__file__": path.name}
    return found


def strip(document: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in document.items() if k != "__file__"}


# ---------------------------------------------------------------- Dockerfile


def test_dockerfile_stages_user_and_health_check() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2, "multi-stage: a build stage and a runtime stage"
    assert all(re.fullmatch(r"python:3\.11-slim(-\w+)?", stage["image"]) for stage in stages), stages
    final = stages[-1]["steps"]
    kinds = [instruction for instruction, _ in final]
    user = [arg for instruction, arg in final if instruction == "USER"][-1]
    assert re.fullmatch(r"\d+(:\d+)?", user) and int(user.split(":")[0]) >= 1000, "a numeric, non-root USER"
    assert kinds.index("USER") > max(i for i, k in enumerate(kinds) if k in ("RUN", "COPY")), \
        "USER comes after every RUN and COPY of the final stage"
    assert not any(instruction == "RUN" and "pip" in arg for instruction, arg in final), "no pip in the runtime stage"
    env = " ".join(arg for instruction, arg in final if instruction == "ENV")
    assert "XDG_CACHE_HOME=/opt/gateway-cache" in env and "PYTHONDONTWRITEBYTECODE=1" in env
    build = " ".join(arg for _, arg in stages[0]["steps"])
    assert "XDG_CACHE_HOME=/opt/gateway-cache" in build and "default_country_db()" in build, \
        "the country database is extracted at build time into the runtime's cache directory"
    assert any(i == "COPY" and "--from=build /opt/gateway-cache" in a for i, a in final)
    expose = [arg for instruction, arg in final if instruction == "EXPOSE"]
    assert expose and set(expose[0].split()) == {"8080", "9090"}
    health = [arg for instruction, arg in final if instruction == "HEALTHCHECK"]
    assert len(health) == 1 and "python" in health[0] and "curl" not in health[0]
    entrypoint = json.loads([a for i, a in final if i == "ENTRYPOINT"][0])
    cmd = json.loads([a for i, a in final if i == "CMD"][0])
    assert entrypoint == ["gateway"] and cmd[:2] == ["serve", "--config"], "exec form: the gateway is PID 1"


def healthcheck_code() -> str:
    health = [arg for instruction, arg in dockerfile_stages()[-1]["steps"] if instruction == "HEALTHCHECK"][0]
    argv = json.loads(health[health.index("CMD") + 3:].strip())
    assert argv[:2] == ["python", "-c"]
    return argv[2]


@pytest.fixture
def admin_listener() -> Iterator[str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200 if self.path == "/healthz" else 404)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_the_health_check_command_works(admin_listener: str) -> None:
    code = healthcheck_code()
    environ = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}

    def run(url: str) -> int:
        return subprocess.run([sys.executable, "-c", code], env=environ | {"FGW_HEALTHCHECK_URL": url},
                              capture_output=True, timeout=30).returncode

    assert run(admin_listener + "/healthz") == 0
    assert run(admin_listener + "/nothing") != 0
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = probe.getsockname()[1]
    assert run(f"http://127.0.0.1:{dead}/healthz") != 0
    default = re.search(r"FGW_HEALTHCHECK_URL=(\S+)", (ROOT / "Dockerfile").read_text()).group(1)
    assert default == "http://127.0.0.1:9090/healthz"


def test_the_build_context() -> None:
    patterns = dockerignore_patterns()
    files = repo_files()
    context = {path for path in files if dockerignore_allows(path, patterns)}
    must = {"pyproject.toml", "README.md", "gateway/__init__.py", "gateway/data/dbip-country-lite.mmdb.xz",
            "gateway/data/dbip-region-overlay.mmdb", "deploy/docker/gateway.yaml"} | {f"policies/{name}" for name in POLICY_FILES}
    assert must <= context, f"missing from the build context: {sorted(must - context)}"
    assert not [p for p in context if p.startswith(("tests/", "bench/", ".git/", ".venv/", ".ci/"))]
    assert not [p for p in context if "__pycache__" in p or p.endswith(".pyc")]
    # Every COPY source (from the context) is in the context.
    for stage in dockerfile_stages():
        for instruction, argument in stage["steps"]:
            if instruction == "COPY" and not argument.startswith("--from"):
                sources = shlex.split(argument)[:-1]
                for source in sources:
                    inside = [p for p in context if p == source.rstrip("/") or p.startswith(source.rstrip("/") + "/")]
                    assert inside, f"COPY {source}: nothing of it is in the build context"


def test_the_images_install_step_gives_a_complete_package(tmp_path: Path) -> None:
    """The build stage's `pip install .`, from exactly what .dockerignore lets into the context:
    the wheel holds every module and the compressed country database, and — imported from the
    wheel alone, not this checkout — the gateway starts its CLI and extracts the database as the
    Dockerfile's build step does."""
    context = tmp_path / "context"
    patterns = dockerignore_patterns()
    for path in repo_files():
        if dockerignore_allows(path, patterns):
            (context / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / path, context / path)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path / "wheel"),
                            str(context)], capture_output=True, text=True, timeout=300)
    if built.returncode != 0 and "Could not find a version" in built.stderr:
        pytest.skip(f"pip cannot fetch the build backend here: {built.stderr[-300:]}")
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (tmp_path / "wheel").glob("*.whl")
    import zipfile

    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {f"gateway/{p.relative_to(ROOT / 'gateway')}" for p in (ROOT / "gateway").rglob("*.py")}
    assert modules <= names, f"missing from the wheel: {sorted(modules - names)}"
    assert "gateway/data/dbip-country-lite.mmdb.xz" in names and "gateway/data/ATTRIBUTION.md" in names
    assert "gateway/data/dbip-region-overlay.mmdb" in names
    target = tmp_path / "site"
    installed = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                               capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr[-2000:]
    environ = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    environ |= {"PYTHONPATH": str(target), "XDG_CACHE_HOME": str(tmp_path / "cache"), "PYTHONDONTWRITEBYTECODE": "1"}
    build_step = [arg for instruction, arg in dockerfile_stages()[0]["steps"]
                  if instruction == "RUN" and "default_country_db" in arg][0]
    code = re.search(r'-c "([^"]+)"', build_step).group(1)
    probe = ("import gateway, sys; assert gateway.__file__.startswith(sys.argv[1]), gateway.__file__; "
             "import gateway.cli, gateway.server, gateway.demo.compose, gateway.live.redis_connect; "
             "import importlib.util; assert importlib.util.find_spec('devtools') is None, 'devtools installed'; " + code)
    ran = subprocess.run([sys.executable, "-c", probe, str(target)], env=environ, cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert Path(ran.stdout.strip()).is_relative_to(tmp_path / "cache" / "frontier-gateway")
    cli = subprocess.run([sys.executable, "-m", "gateway", "--help"], env=environ, cwd=tmp_path, capture_output=True,
                         text=True, timeout=60)
    assert cli.returncode == 0 and "serve" in cli.stdout


def test_the_images_default_config() -> None:
    from gateway.config import load_config
    from gateway.server import check_admin

    config = load_config(ROOT / "deploy" / "docker" / "gateway.yaml", {})
    # The admin listener stays inside the container (the HEALTHCHECK's 127.0.0.1 reaches it):
    # no token is needed there, and none is shipped.
    assert (config.listen, config.admin_listen) == ("0.0.0.0:8080", "127.0.0.1:9090")
    assert config.admin.tokens == [] and not config.metrics_require_token
    check_admin(config)
    # Published beyond the container it needs a token, or the gateway refuses to start.
    exposed = load_config(ROOT / "deploy" / "docker" / "gateway.yaml", {"GATEWAY_ADMIN_LISTEN": "0.0.0.0:9090"})
    with pytest.raises(ValueError, match="viewer token for Prometheus"):
        check_admin(exposed)
    tokens = '[{name: prometheus, role: viewer, sha256: "%s"}]' % ("ab" * 32)
    exposed = load_config(ROOT / "deploy" / "docker" / "gateway.yaml",
                          {"GATEWAY_ADMIN_LISTEN": "0.0.0.0:9090", "GATEWAY_ADMIN__TOKENS": tokens})
    check_admin(exposed)
    assert exposed.metrics_require_token
    assert config.policy_dir == "/etc/gateway/policies"
    writable = Path("/var/lib/gateway")
    assert Path(config.state_dir).is_relative_to(writable) and Path(config.audit.path).is_relative_to(writable)
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "COPY deploy/docker/gateway.yaml /etc/gateway/gateway.yaml" in dockerfile
    assert "/var/lib/gateway/state /var/lib/gateway/audit" in dockerfile and "chown -R 10001:10001 /var/lib/gateway" in dockerfile


def test_the_country_database_extracted_at_build_time_is_used_read_only(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """What the build stage does (extract into $XDG_CACHE_HOME/frontier-gateway), then what a
    read-only container does: find it intact and write nothing."""
    from gateway.geo import embedded as geodata

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "opt-gateway-cache"))
    extracted = geodata.default_country_db()
    assert extracted.is_relative_to(tmp_path / "opt-gateway-cache" / "frontier-gateway")

    def read_only(path: Path, data: bytes) -> None:
        raise OSError(30, "Read-only file system", str(path))

    monkeypatch.setattr(geodata, "_write_atomic", read_only)
    assert geodata.default_country_db() == extracted


# ---------------------------------------------------------------- docker-compose.yml


def test_compose_file_matches_the_compose_specification(compose: dict[str, Any]) -> None:
    from importlib import resources

    import jsonschema

    schema = json.loads(resources.files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(compose), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)


def host_sources(service: dict[str, Any]) -> list[str]:
    sources = []
    for volume in service.get("volumes", []):
        source = volume.split(":")[0] if isinstance(volume, str) else volume.get("source", "")
        if source.startswith((".", "/")):
            sources.append(source)
    return sources


def test_compose_references(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        assert "image" in service or "build" in service, f"{name}: neither image nor build"
        for source in host_sources(service):
            assert (ROOT / source).exists(), f"{name}: mounts {source}, which is not in the repository"
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown service {dependency}"
        for network in service.get("networks", []):
            assert network in compose["networks"], f"{name}: unknown network {network}"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in compose["volumes"], f"{name}: unknown volume {source}"
    published = [port.rsplit(":", 1)[0] for service in services.values() for port in service.get("ports", [])]
    assert len(published) == len(set(published)), f"host ports collide: {published}"
    assert all(port.startswith("127.0.0.1:") for port in published), "publish on loopback only"
    built = [name for name, service in services.items() if service.get("image") == "frontier-gateway:local"]
    assert {"upstream", "demo-credentials", "gateway-1", "gateway-2"} <= set(built)
    assert all("build" in services[name] for name in built), "every service of the local image can build it"
    # The gateway replicas: hardened, healthy before nginx takes traffic.
    replicas = sorted(name for name in services if re.fullmatch(r"gateway-\d+", name))
    assert len(replicas) >= 2
    for name in replicas:
        service = services[name]
        assert service["read_only"] is True and service["cap_drop"] == ["ALL"]
        assert service["depends_on"]["demo-credentials"]["condition"] == "service_completed_successfully"
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"
        assert services["lb"]["depends_on"][name]["condition"] == "service_healthy"
        assert service["hostname"] == name, "a stable hostname: the audit chain's replica id"
        assert service["command"][-1] == "/var/lib/gateway/demo/gateway.yaml"
    assert "HEALTHCHECK" in (ROOT / "Dockerfile").read_text(), "service_healthy needs the image's HEALTHCHECK"


def test_compose_trust_and_load_balancing(compose: dict[str, Any]) -> None:
    from gateway.config import load_config

    services = compose["services"]
    replicas = sorted(name for name in services if re.fullmatch(r"gateway-\d+", name))
    template = load_config(ROOT / "deploy" / "compose" / "gateway.yaml", {})
    lb_address = services["lb"]["networks"]["edge"]["ipv4_address"]
    edge = compose["networks"]["edge"]["ipam"]["config"][0]
    assert ipaddress.ip_address(lb_address) in ipaddress.ip_network(edge["subnet"])
    assert template.trusted_proxies == [f"{lb_address}/32"], "the replicas trust the load balancer and nothing else"
    for name in replicas:
        assert "edge" in services[name]["networks"], f"{name} is not on the load balancer's network"
    nginx = (ROOT / "deploy" / "nginx" / "gateway.conf").read_text()
    upstreams = re.findall(r"^\s*server\s+([\w.-]+):(\d+)", nginx, re.M)
    port = int(template.listen.rsplit(":", 1)[1])
    assert sorted(upstreams) == sorted((name, str(port)) for name in replicas)
    assert re.findall(r"set_real_ip_from\s+([\d.]+);", nginx) == [edge["gateway"]], \
        "nginx believes X-Forwarded-For from the Docker host only (the demo's stand-in for the internet)"
    assert "include /etc/nginx/frontier-proxy.conf;" in nginx
    mounts = {v.split(":")[1]: v.split(":")[0] for v in services["lb"]["volumes"]}
    assert mounts["/etc/nginx/frontier-proxy.conf"] == "./deploy/nginx/proxy.conf"
    proxy = (ROOT / "deploy" / "nginx" / "proxy.conf").read_text()
    assert "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;" in proxy, "appended, not replaced"
    assert "proxy_buffering off;" in proxy and "non_idempotent" not in re.sub(r"#.*", "", proxy)
    assert f"{template.redis.url}".startswith("redis://redis:")
    assert template.upstreams["default"].url.startswith("http://upstream:")


def test_compose_monitoring(compose: dict[str, Any]) -> None:
    services = compose["services"]
    replicas = sorted(name for name in services if re.fullmatch(r"gateway-\d+", name))
    from gateway.config import load_config

    admin_port = load_config(ROOT / "deploy" / "compose" / "gateway.yaml", {}).admin_listen.rsplit(":", 1)[1]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in services["prometheus"]["volumes"]}
    config_file = ROOT / mounts["/etc/prometheus/prometheus.yml"]
    prometheus = yaml.safe_load(config_file.read_text())
    rules_mounted = {target: source for target, source in mounts.items() if target.endswith(".yml")}
    for rule_file in prometheus["rule_files"]:
        assert rule_file in rules_mounted, f"rule file {rule_file} is not mounted"
        assert (ROOT / rules_mounted[rule_file]).is_file()
    assert rules_mounted["/etc/prometheus/alerts.yml"] == "./deploy/prometheus/alerts.yml"
    jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    targets = [t for config in jobs["frontier-gateway"]["static_configs"] for t in config["targets"]]
    assert sorted(targets) == [f"{name}:{admin_port}" for name in replicas], "every replica is its own target"
    # /metrics asks for a token; Prometheus reads the viewer token demo-credentials wrote.
    template = load_config(ROOT / "deploy" / "compose" / "gateway.yaml", {})
    assert template.admin.metrics_require_token is True and template.metrics_require_token
    token_file = Path(jobs["frontier-gateway"]["authorization"]["credentials_file"])
    volumes = {v.split(":")[1]: v.split(":")[0] for v in services["prometheus"]["volumes"]}
    assert volumes[str(token_file.parent)] == "demo-credentials" and token_file.name == "prometheus-token"
    assert services["prometheus"]["depends_on"]["demo-credentials"]["condition"] == "service_completed_successfully"
    alerts = (ROOT / "deploy" / "prometheus" / "alerts.yml").read_text()
    assert 'job="frontier-gateway"' in alerts or "frontier-gateway" in alerts
    grafana = {v.split(":")[1]: v.split(":")[0] for v in services["grafana"]["volumes"]}
    provisioning = ROOT / grafana["/etc/grafana/provisioning"]
    providers = [p for path in (provisioning / "dashboards").glob("*.y*ml") for p in yaml.safe_load(path.read_text())["providers"]]
    assert providers, "no dashboard provider in deploy/grafana/provisioning/dashboards"
    for provider in providers:
        path = provider["options"]["path"]
        assert path in grafana, f"the dashboard provider reads {path}, which compose does not mount"
        assert list((ROOT / grafana[path]).glob("*.json")), f"no dashboard JSON in {grafana[path]}"
    datasources = [d for path in (provisioning / "datasources").glob("*.y*ml") for d in yaml.safe_load(path.read_text())["datasources"]]
    assert any(d["url"] == "http://prometheus:9090" for d in datasources), datasources


def test_compose_init_renders_a_config_the_gateway_accepts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`python -m gateway.demo.compose` as the demo-credentials service runs it, on a real
    Redis: keys made once and reused, an admin token, a config the replicas start with."""
    redis_url = os.environ.get("REDIS_URL")
    if not redis_url:
        pytest.skip("REDIS_URL is not set: run under scripts/with-redis")
    from gateway.demo import compose
    from gateway.config import load_config
    from gateway.identity.redis_keys import RedisApiKeyStore

    namespace = "compose-" + os.urandom(4).hex()
    template = tmp_path / "template.yaml"
    document = yaml.safe_load((ROOT / "deploy" / "compose" / "gateway.yaml").read_text())
    document["redis"] |= {"url": redis_url, "namespace": namespace}
    template.write_text(yaml.safe_dump(document))
    out = tmp_path / "demo"
    service = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["demo-credentials"]
    assert service["entrypoint"] == ["python", "-m", "gateway.demo.compose"], "the installed package runs it"
    assert compose.main(["--config", str(template), "--out", str(out)]) == 0
    first = capsys.readouterr().out
    rendered = load_config(out / "gateway.yaml", {})
    token = re.search(r"operator token: (\S+)", first).group(1)
    scrape = (out / "prometheus-token").read_text()
    assert [(t.name, t.role, t.sha256) for t in rendered.admin.tokens] == \
        [("demo-operator", "operator", hashlib.sha256(token.encode()).hexdigest()),
         ("prometheus", "viewer", hashlib.sha256(scrape.encode()).hexdigest())]
    assert rendered.metrics_require_token and scrape != token
    assert oct((out / "prometheus-token").stat().st_mode & 0o777) == "0o644", "Prometheus runs as another user"
    assert rendered.identity.jwt is not None and Path(rendered.identity.jwt.jwks_file) == out / "jwks.json"
    assert rendered.trusted_proxies == load_config(ROOT / "deploy" / "compose" / "gateway.yaml", {}).trusted_proxies
    assert first.count("curl ") == 8 and "http://localhost:8080/v1/chat/completions" in first
    assert oct((out / "credentials.json").stat().st_mode & 0o777) == "0o600"
    assert compose.compose_init(template, out) == 0  # a second `docker compose up`
    again = capsys.readouterr().out
    assert re.search(r"operator token: (\S+)", again).group(1) == token
    assert (out / "prometheus-token").read_text() == scrape
    assert [t.name for t in load_config(out / "gateway.yaml", {}).admin.tokens] == ["demo-operator", "prometheus"]
    secrets_first = set(re.findall(r"Bearer (fgw_\S+?)'", first))
    assert secrets_first and secrets_first == set(re.findall(r"Bearer (fgw_\S+?)'", again)), "keys are reused"
    store = RedisApiKeyStore(redis_url, namespace=namespace)
    try:
        assert len(store.list()) == len(compose.DEMO_ORGS)
    finally:
        import asyncio

        asyncio.run(store.close())


def test_nginx_accepts_the_compose_config(tmp_path: Path) -> None:
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)
    if nginx is None:
        pytest.skip("nginx is not installed here (make fleet installs it as root); config not syntax-checked")
    site = (ROOT / "deploy" / "nginx" / "gateway.conf").read_text()
    site = re.sub(r"gateway-\d+:", "127.0.0.1:", site).replace("/etc/nginx/frontier-proxy.conf", str(ROOT / "deploy" / "nginx" / "proxy.conf"))
    with socket.socket() as probe:  # `nginx -t` opens no socket, but wants a real port
        probe.bind(("127.0.0.1", 0))
        site = re.sub(r"listen 8080;", f"listen 127.0.0.1:{probe.getsockname()[1]};", site)
    (tmp_path / "site.conf").write_text(site)
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\nevents {{}}\n"
        f"http {{\n access_log off;\n client_body_temp_path {tmp_path}/b; proxy_temp_path {tmp_path}/p;\n"
        f" fastcgi_temp_path {tmp_path}/f; uwsgi_temp_path {tmp_path}/u; scgi_temp_path {tmp_path}/s;\n"
        f" include {tmp_path}/site.conf;\n}}\n")
    checked = subprocess.run([nginx, "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"), "-e", str(tmp_path / "error.log")],
                             capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stderr


# ---------------------------------------------------------------- Kubernetes


def k8s_versions() -> list[str]:
    import kubernetes_validate.utils as kv

    versions = kv.all_versions()
    return sorted({versions[0], "1.30.0", versions[-1]}, key=lambda v: tuple(int(x) for x in v.split(".")))


SERVICEMONITOR_SCHEMA = {
    # The fields of monitoring.coreos.com/v1 ServiceMonitor that this manifest relies on, as
    # the Prometheus Operator's CRD defines them (required: spec.selector; endpoints name a port).
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {"type": "object", "required": ["name"],
                     "properties": {"name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"}}},
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "jobLabel": {"type": "string"},
                "selector": {"type": "object", "properties": {"matchLabels": {"type": "object",
                                                                              "additionalProperties": {"type": "string"}}}},
                "namespaceSelector": {"type": "object", "additionalProperties": False,
                                      "properties": {"any": {"type": "boolean"},
                                                     "matchNames": {"type": "array", "items": {"type": "string"}}}},
                "endpoints": {"type": "array", "minItems": 1, "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "anyOf": [{"required": ["port"]}, {"required": ["targetPort"]}],
                    "properties": {
                        "port": {"type": "string"},
                        "targetPort": {"type": ["string", "integer"]},
                        "path": {"type": "string", "pattern": "^/"},
                        "authorization": {"type": "object", "additionalProperties": False, "properties": {
                            "type": {"type": "string"},
                            "credentials": {"type": "object", "required": ["key"], "additionalProperties": False,
                                            "properties": {"name": {"type": "string"}, "key": {"type": "string"},
                                                           "optional": {"type": "boolean"}}}}},
                        "scheme": {"enum": ["http", "https"]},
                        "interval": {"type": "string", "pattern": "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"},
                        "scrapeTimeout": {"type": "string", "pattern": "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"},
                        "relabelings": {"type": "array", "items": {"type": "object", "properties": {
                            "sourceLabels": {"type": "array", "items": {"type": "string"}},
                            "targetLabel": {"type": "string"},
                            "action": {"type": "string"}}}},
                    },
                }},
            },
        },
    },
}


@pytest.mark.parametrize("version", k8s_versions())
def test_k8s_manifests_match_the_kubernetes_schemas(manifests: dict[tuple[str, str], dict[str, Any]], version: str) -> None:
    import jsonschema
    import kubernetes_validate

    checked = []
    for (kind, name), document in manifests.items():
        if kind == "ServiceMonitor":
            jsonschema.validate(strip(document), SERVICEMONITOR_SCHEMA)
        else:
            try:
                kubernetes_validate.validate(strip(document), version, strict=True)
            except kubernetes_validate.ValidationError as error:
                pytest.fail(f"{document['__file__']}: {kind}/{name} is not a valid {version} object: "
                            f"{'/'.join(map(str, error.path))}: {error.message}")
        checked.append(kind)
    assert {"Namespace", "ServiceAccount", "ConfigMap", "Secret", "Deployment", "Service", "HorizontalPodAutoscaler",
            "PodDisruptionBudget", "NetworkPolicy", "ServiceMonitor"} <= set(checked)


def test_the_schemas_do_refuse_a_bad_manifest(manifests: dict[tuple[str, str], dict[str, Any]]) -> None:
    import kubernetes_validate

    deployment = json.loads(json.dumps(strip(manifests[("Deployment", "frontier-gateway")])))
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFileSystem"] = True  # typo
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, k8s_versions()[-1], strict=True)


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = [re.sub(r"\s*#.*", "", item) for item in kustomization["resources"]]
    on_disk = sorted(p.name for p in K8S.glob("*.yaml") if p.name not in ("kustomization.yaml", "secret.example.yaml"))
    assert sorted(listed) == on_disk
    assert "secret.example.yaml" not in listed, "the example Secret must never be applied"
    assert kustomization["images"][0]["name"] == "frontier-gateway"


def pod_spec(manifests: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    return manifests[("Deployment", "frontier-gateway")]["spec"]["template"]["spec"]


def test_k8s_deployment_security_and_probes(manifests: dict[tuple[str, str], dict[str, Any]]) -> None:
    deployment = manifests[("Deployment", "frontier-gateway")]
    spec = deployment["spec"]
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    assert "replicas" not in spec, "the HorizontalPodAutoscaler owns the replica count"
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False
    user = [arg for instruction, arg in dockerfile_stages()[-1]["steps"] if instruction == "USER"][-1]
    assert pod["securityContext"]["runAsUser"] == int(user.split(":")[0]), "the image's user"
    anti = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]
    assert anti["labelSelector"]["matchLabels"].items() <= labels.items()
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"] and security["seccompProfile"]["type"] == "RuntimeDefault"
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"http": 8080, "admin": 9090}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert container["startupProbe"]["httpGet"]["port"] == "admin"
    assert container["resources"]["requests"]["cpu"] and container["resources"]["limits"]["memory"]
    # Writable paths are volumes; the config and policies are the ConfigMaps.
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[mounts["/var/lib/gateway"]["name"]].get("emptyDir") is not None
    assert volumes[mounts["/tmp"]["name"]].get("emptyDir") is not None
    assert volumes[mounts["/etc/gateway/policies"]["name"]]["configMap"]["name"] == "frontier-gateway-policies"
    config_mount = next(path for path, m in mounts.items() if volumes[m["name"]].get("configMap", {}).get("name") == "frontier-gateway-config")
    assert container["args"] == ["serve", "--config", f"{config_mount}/gateway.yaml"]
    for configmap in ("frontier-gateway-config", "frontier-gateway-policies"):
        assert ("ConfigMap", configmap) in manifests
    # Secrets: referenced by name and key, and the example Secret has every required key.
    secret = manifests[("Secret", "frontier-gateway")]["stringData"]
    for variable in container["env"]:
        reference = variable["valueFrom"]["secretKeyRef"]
        assert reference["name"] == "frontier-gateway" and reference["key"] in secret
        assert variable["name"].startswith("GATEWAY_")


def test_k8s_gateway_config_is_valid_with_the_secret(manifests: dict[tuple[str, str], dict[str, Any]], tmp_path: Path) -> None:
    from gateway.config import load_config

    path = tmp_path / "gateway.yaml"
    path.write_text(manifests[("ConfigMap", "frontier-gateway-config")]["data"]["gateway.yaml"])
    environ = {
        "GATEWAY_REDIS__URL": "redis+sentinel://:pw@redis-sentinel.redis.svc.cluster.local:26379/fgw",
        "GATEWAY_ADMIN__TOKENS": '[{name: ops-alice, role: operator, sha256: "%s"}]' % ("ab" * 32),
        "GATEWAY_UPSTREAMS__DEFAULT__HEADERS": manifests[("Secret", "frontier-gateway")]["stringData"]["upstream-headers"],
    }
    config = load_config(path, environ)
    assert config.redis.url.startswith("redis+sentinel://") and config.admin.tokens[0].role == "operator"
    from gateway.server import check_admin

    assert config.admin.metrics_require_token is True, "/metrics asks the scraper for a token"
    check_admin(config)
    with pytest.raises(ValueError):
        check_admin(load_config(path, {k: v for k, v in environ.items() if k != "GATEWAY_ADMIN__TOKENS"}))
    assert config.upstreams["default"].headers == {"Authorization": "Bearer CHANGE-ME"}
    container = pod_spec(manifests)["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert int(config.listen.rsplit(":", 1)[1]) == ports["http"] and int(config.admin_listen.rsplit(":", 1)[1]) == ports["admin"]
    assert config.policy_dir == "/etc/gateway/policies"
    assert Path(config.state_dir).is_relative_to("/var/lib/gateway") and Path(config.audit.path).is_relative_to("/var/lib/gateway")
    # The example Secret's placeholders are refused, so it cannot go live by mistake.
    example = manifests[("Secret", "frontier-gateway")]["stringData"]
    with pytest.raises(Exception):
        load_config(path, {"GATEWAY_ADMIN__TOKENS": example["admin-tokens"]})


def test_k8s_services_monitoring_and_network_policy(manifests: dict[tuple[str, str], dict[str, Any]]) -> None:
    pod_labels = manifests[("Deployment", "frontier-gateway")]["spec"]["template"]["metadata"]["labels"]
    container_ports = {p["name"] for p in pod_spec(manifests)["containers"][0]["ports"]}
    public = manifests[("Service", "frontier-gateway")]["spec"]
    assert public["selector"].items() <= pod_labels.items()
    assert [p["targetPort"] for p in public["ports"]] == ["http"], "the public Service exposes the public port only"
    metrics_service = manifests[("Service", "frontier-gateway-metrics")]
    assert metrics_service["spec"]["clusterIP"] == "None"
    assert metrics_service["spec"]["selector"].items() <= pod_labels.items()
    assert {p["targetPort"] for p in metrics_service["spec"]["ports"]} == {"admin"} <= container_ports
    monitor = manifests[("ServiceMonitor", "frontier-gateway")]["spec"]
    assert monitor["selector"]["matchLabels"].items() <= metrics_service["metadata"]["labels"].items()
    assert not monitor["selector"]["matchLabels"].items() <= manifests[("Service", "frontier-gateway")]["metadata"]["labels"].items()
    assert {e["port"] for e in monitor["endpoints"]} == {p["name"] for p in metrics_service["spec"]["ports"]}
    assert monitor["namespaceSelector"]["matchNames"] == [metrics_service["metadata"]["namespace"]]
    assert all(e["path"] == "/metrics" for e in monitor["endpoints"])
    # Scrapes carry a bearer token from a Secret in the ServiceMonitor's namespace, whose example
    # has that key; the example admin-tokens list a viewer for it.
    for endpoint in monitor["endpoints"]:
        credentials = endpoint["authorization"]["credentials"]
        assert endpoint["authorization"].get("type", "Bearer") == "Bearer"
        secret = manifests[("Secret", credentials["name"])]
        assert secret["metadata"]["namespace"] == manifests[("ServiceMonitor", "frontier-gateway")]["metadata"]["namespace"]
        assert credentials["key"] in secret["stringData"]
    example_tokens = yaml.safe_load(manifests[("Secret", "frontier-gateway")]["stringData"]["admin-tokens"])
    assert "viewer" in {token["role"] for token in example_tokens}
    policy = manifests[("NetworkPolicy", "frontier-gateway")]["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert policy["policyTypes"] == ["Ingress"]
    by_port = {rule["ports"][0]["port"]: rule for rule in policy["ingress"]}
    assert set(by_port) == {"http", "admin"}, "no other port is reachable"
    admin_from = by_port["admin"]["from"]
    assert admin_from == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
                           "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}], \
        "the admin port: Prometheus pods in the monitoring namespace only (one peer, both selectors)"
    hpa = manifests[("HorizontalPodAutoscaler", "frontier-gateway")]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "frontier-gateway"}
    assert hpa["spec"]["minReplicas"] >= 2
    pdb = manifests[("PodDisruptionBudget", "frontier-gateway")]["spec"]
    assert pdb["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pdb["minAvailable"] < hpa["spec"]["minReplicas"], "a node drain can always proceed"
    namespaces = {doc["metadata"].get("namespace") for (kind, _), doc in manifests.items() if kind != "Namespace"}
    assert namespaces == {"frontier-gateway"}


def test_k8s_policies_configmap_is_the_shipped_bundle(manifests: dict[tuple[str, str], dict[str, Any]]) -> None:
    from gateway.policy.load import load_texts

    data = manifests[("ConfigMap", "frontier-gateway-policies")]["data"]
    shipped = {name: (POLICIES / name).read_text() for name in POLICY_FILES}
    assert data == shipped, ("deploy/k8s/policies-configmap.yaml is not policies/: regenerate it with "
                             ".venv/bin/python tests/test_deploy_manifests.py --write-policies-configmap")
    load_texts(data)  # a bundle the gateway accepts


def test_a_configmap_mounted_bundle_loads_and_reloads(tmp_path: Path) -> None:
    """The layout the kubelet gives a ConfigMap volume (files are symlinks into `..data`, which
    is swapped atomically on an update): read as a bundle, and seen to change."""
    from gateway.live.state import LiveState, PolicyState
    from gateway.policy.load import load_texts, read_bundle

    mount = tmp_path / "policies"
    mount.mkdir()

    def publish(stamp: str, texts: dict[str, str]) -> None:
        version = mount / f"..{stamp}"
        version.mkdir()
        for name, text in texts.items():
            (version / name).write_text(text)
        link = mount / "..data_tmp"
        link.symlink_to(version.name)
        os.replace(link, mount / "..data")
        for name in texts:
            if not (mount / name).is_symlink():
                (mount / name).symlink_to(f"..data/{name}")

    texts = {name: (POLICIES / name).read_text() for name in POLICY_FILES}
    publish("2026_11_27_12_00_00.1", texts)
    read, problems = read_bundle(mount)
    assert read == texts and not problems
    load_texts(read)
    watcher = LiveState(PolicyState(), None, None, str(mount))  # type: ignore[arg-type]
    before = watcher._stamp()
    assert [entry[0] for entry in before] == sorted(POLICY_FILES)
    publish("2026_11_27_12_05_00.2", texts | {"suspensions.yaml": texts["suspensions.yaml"] + "\n# reviewed change\n"})
    assert watcher._stamp() != before, "an updated ConfigMap is noticed by the policy watcher"


def test_redis_deploy_configs_name_the_hash_tag() -> None:
    """deploy/redis: the URL forms in the comments are ones the gateway accepts."""
    from gateway.live.redis_connect import parse

    text = "".join(p.read_text() for p in (ROOT / "deploy" / "redis").glob("*.conf"))
    sentinel = re.search(r'url: "(redis\+sentinel://[^"]+)"', text).group(1)
    assert parse(sentinel).kind == "sentinel"
    cluster = re.search(r'url: "(redis://n1[^"]+)", cluster: true', text).group(1)
    assert parse(cluster, cluster=True).kind == "cluster"


def test_admin_client_variables_do_not_break_the_config() -> None:
    """docs/operators.md has operators export GATEWAY_ADMIN_URL/TOKEN for `gateway admin`; the
    same shell must still run `gateway keys` and `gateway serve`."""
    from gateway.config import load_config

    config = load_config(ROOT / "deploy" / "docker" / "gateway.yaml",
                         {"GATEWAY_ADMIN_URL": "http://127.0.0.1:9090", "GATEWAY_ADMIN_TOKEN": "t"})
    assert config.admin.tokens == []


if __name__ == "__main__":
    if sys.argv[1:] == ["--write-policies-configmap"]:
        POLICIES_CONFIGMAP.write_text(render_policies_configmap())
        print(f"wrote {POLICIES_CONFIGMAP}")
    else:
        sys.exit(f"usage: {sys.argv[0]} --write-policies-configmap")
