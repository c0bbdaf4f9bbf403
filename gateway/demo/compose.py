"""The docker-compose demo's credentials: `python -m gateway.demo.compose` is the
demo-credentials service of docker-compose.yml (see there), and `make fleet`
(devtools/fleet_local.py) makes its credentials the same way.

API keys for the demo organizations (in Redis, as `gateway keys create` makes them), a
JWT signing key and token, an admin operator token and Prometheus' viewer token; the
replicas' config rendered from a template with them; the examples that use them.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import secrets
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.demo.command import AUDIENCE, CN, DEMO_ORGS, IR, ISSUER, JP, US, Example, bearer, chat

TOKEN_LIFETIME_S = 7 * 24 * 3600


@dataclass
class Credentials:
    keys: dict[str, str]  # org -> API key secret
    key_ids: dict[str, str]
    token: str  # a JWT of org-gov-evaluator
    operator_token: str  # admin API bearer token (role operator)
    jwks_path: Path
    metrics_token: str = ""  # admin API bearer token (role viewer) for Prometheus' scrapes

    @property
    def operator_sha256(self) -> str:
        return hashlib.sha256(self.operator_token.encode()).hexdigest()

    @property
    def metrics_sha256(self) -> str:
        return hashlib.sha256(self.metrics_token.encode()).hexdigest()


def make_credentials(redis: Any, directory: Path) -> Credentials:
    """Demo credentials for a fleet on `redis` (the config's `redis` section): an API key per demo
    org, created in Redis as `gateway keys create` does; a JWT signing key (its public half in
    `jwks.json`) and a token; an admin operator token and a viewer token for Prometheus. Kept in `credentials.json` (mode 0600,
    demo only) and reused by a later call: keys still valid in Redis are kept, others made anew."""
    from joserfc import jwt
    from joserfc.jwk import generate_key, import_key

    from gateway.identity.redis_keys import RedisApiKeyStore

    directory.mkdir(parents=True, exist_ok=True)
    saved_path = directory / "credentials.json"
    saved: dict[str, Any] = json.loads(saved_path.read_text()) if saved_path.exists() else {}
    if saved.get("signing_key"):
        signing = import_key(saved["signing_key"], "RSA")
    else:
        signing = generate_key("RSA", 2048, {"kid": "demo"})
    public = signing.as_dict(private=False) | {"kid": "demo", "alg": "RS256", "use": "sig"}
    store = RedisApiKeyStore(redis.url, namespace=redis.namespace, timeout_s=max(redis.timeout_s, 2.0),
                             cluster=getattr(redis, "cluster", False))
    try:
        valid = {info.key_id for info in store.list() if info.revoked_at is None}
        keys: dict[str, dict[str, str]] = {}
        for org in DEMO_ORGS:
            known = saved.get("keys", {}).get(org)
            if known and known.get("key_id") in valid:
                keys[org] = known
            else:
                key_id, secret = store.create(org, "demo")
                keys[org] = {"key_id": key_id, "secret": secret}
    finally:
        asyncio.run(store.close())
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "analyst@caisi.example", "org_id": "org-gov-evaluator",
              "iat": now, "exp": now + TOKEN_LIFETIME_S}
    token = jwt.encode({"alg": "RS256", "kid": "demo"}, claims, signing)
    operator = saved.get("operator_token") or "fgw-operator-" + secrets.token_urlsafe(24)
    metrics = saved.get("metrics_token") or "fgw-metrics-" + secrets.token_urlsafe(24)
    _write_private(saved_path, json.dumps({"signing_key": signing.as_dict(private=True), "keys": keys,
                                           "operator_token": operator, "metrics_token": metrics, "token": token},
                                          indent=2))
    jwks_path = directory / "jwks.json"
    jwks_path.write_text(json.dumps({"keys": [public]}, indent=2))
    return Credentials({o: k["secret"] for o, k in keys.items()}, {o: k["key_id"] for o, k in keys.items()},
                       token, operator, jwks_path, metrics)


def _write_private(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.replace(temporary, path)


# ---------------------------------------------------------------- examples


def examples(credentials: Credentials) -> list[Example]:
    """Requests whose answers do not depend on the day (models already generally available)."""
    keys = credentials.keys
    return [
        Example("Allowed: a US developer uses an open model", 200, "/v1/chat/completions",
                bearer(keys["org-developer-us"], US), chat("example-small-1", "Hello from the fleet")),
        Example("Denied: the same caller from Iran, a comprehensively embargoed country", 451, "/v1/chat/completions",
                bearer(keys["org-developer-us"], IR), chat("example-small-1", "Hello")),
        Example("A vetted US partner uses a covered model", 200, "/v1/chat/completions",
                bearer(keys["org-partner-us"], US), chat("example-frontier-1", "Hello from a vetted partner")),
        Example("The Japanese partner's credential used from China: 451", 451, "/v1/chat/completions",
                bearer(keys["org-partner-jp"], CN), chat("example-frontier-1", "Hello")),
        Example("The same partner from Japan, through the Anthropic Messages API", 200, "/v1/messages",
                {"x-api-key": keys["org-partner-jp"], "anthropic-version": "2023-06-01", "X-Forwarded-For": JP},
                {"model": "example-frontier-1", "max_tokens": 64, "messages": [{"role": "user", "content": "Konnichiwa"}]}),
        Example("A streaming answer, through the load balancer chunk by chunk", 200, "/v1/chat/completions",
                bearer(keys["org-developer-us"], US), chat("example-small-latest", "Stream a short answer please", stream=True),
                stream=True),
        Example("An Entity List match is refused everything", 403, "/v1/chat/completions",
                bearer(keys["org-entity-listed"], US), chat("example-small-1", "Hello")),
        Example("A government evaluator with a JWT: the model list is filtered", 200, "/v1/models",
                bearer(credentials.token, US)),
        Example("Straight to a replica, bypassing the load balancer: X-Forwarded-For is not believed, "
                "the country is unknown, the covered model refused", 451, "/v1/chat/completions",
                bearer(keys["org-partner-us"], US), chat("example-frontier-1", "Hello"), direct=True),
    ]


def compose_init(template: Path, out: Path) -> int:
    """Inside docker-compose.yml: render the replicas' config (the template plus the demo JWKS, an
    admin operator token and Prometheus' viewer token), create the demo API keys in Redis, print
    how to use them. Prometheus' token goes to `prometheus-token`, readable by any user: the
    Prometheus image runs as `nobody`, and the file is in a volume only it and the replicas mount."""
    import yaml

    from gateway.config import load_config
    from gateway.server import check_admin

    config = load_config(template, os.environ)
    if not config.redis.url:
        print(f"demo-credentials: {template} has no redis.url", file=sys.stderr)
        return 2
    deadline = time.monotonic() + 60
    while True:  # Redis may still be loading its append-only file
        try:
            credentials = make_credentials(config.redis, out)
            break
        except Exception as error:
            if time.monotonic() > deadline:
                print(f"demo-credentials: cannot create the demo keys in Redis: {error}", file=sys.stderr)
                return 1
            time.sleep(1)
    document = yaml.safe_load(template.read_text()) or {}
    jwt = document.setdefault("identity", {}).setdefault("jwt", {})
    jwt.update({"jwks_file": str(credentials.jwks_path), "issuer": ISSUER, "audience": AUDIENCE, "algorithms": ["RS256"]})
    jwt.pop("jwks_url", None)
    ours = {"demo-operator", "prometheus"}
    tokens = [t for t in document.setdefault("admin", {}).get("tokens") or [] if t.get("name") not in ours]
    document["admin"]["tokens"] = tokens + [
        {"name": "demo-operator", "role": "operator", "sha256": credentials.operator_sha256},
        {"name": "prometheus", "role": "viewer", "sha256": credentials.metrics_sha256},
    ]
    scrape = out / "prometheus-token"
    scrape.write_text(credentials.metrics_token)
    scrape.chmod(0o644)
    rendered = out / "gateway.yaml"
    rendered.write_text("# Rendered by `python -m gateway.demo.compose` from "
                        f"{template}: do not edit.\n" + yaml.safe_dump(document, sort_keys=False))
    check_admin(load_config(rendered, {}))  # refuse to hand the replicas a config they would refuse
    base = os.environ.get("FGW_PUBLIC_URL", "http://localhost:8080")
    print("Frontier Gateway demo credentials (compose). The load balancer is", base)
    print(f"Admin API (gateway-1): http://127.0.0.1:9090   operator token: {credentials.operator_token}")
    print("  docker compose exec gateway-1 gateway admin --url http://127.0.0.1:9090 --token "
          f"{credentials.operator_token} suspend --model example-small-1 --deny-outside us --reason drill")
    print()
    for number, example in enumerate(examples(credentials), 1):
        if not example.direct:
            print(f"{number}. {example.title} — expect {example.expect}\n   {example.curl(base)}\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.demo.compose",
                                     description="Make the docker-compose demo's credentials and render the "
                                                 "replicas' config with them.")
    parser.add_argument("--config", type=Path, required=True, help="the replicas' config template")
    parser.add_argument("--out", type=Path, required=True, help="where the rendered config and credentials go")
    args = parser.parse_args(argv)
    return compose_init(args.config, args.out)


if __name__ == "__main__":
    sys.exit(main())
