"""Real loopback servers for end-to-end tests: the demo upstream and a gateway
Service, run on their own event loop in a background thread so that both the
sync and async SDK clients can talk to them."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from joserfc import jwt
from joserfc.jwk import generate_key

from conftest import GEOIP, GEOIP_MAX_AGE_DAYS, REFERENCE_POLICY, at
from gateway.audit import unauthenticated_path
from gateway.config import load_config
from gateway.demo.upstream import DemoServer, serve as serve_upstream
from gateway.identity import ApiKeyStore
from gateway.server import Service

# Client addresses in the GeoIP City test database (tests/fixtures/geoip/README.md).
US_IP, CN_IP, SE_IP, GB_ANONYMIZER_IP = "216.160.83.56", "175.16.199.1", "89.160.20.112", "81.2.69.160"
ISSUER, AUDIENCE = "https://idp.test/", "frontier-gateway"
DECISION_TIME = at("2026-12-01T12:00:00Z").timestamp()
ORGS = ["org-caisi", "org-acme", "org-kyoto", "org-lapsed", "org-public", "org-verified-br", "org-offshore", "org-listed",
        "org-not-in-policy"]
# What the upstream's GET /v1/models lists: the reference models and one the policy does not know.
CATALOGUE = ["frontier-5.6", "fable", "mythos", "small-2", "nextgen-7", "not-in-policy"]


class LoopThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coroutine: Coroutine[Any, Any, Any], timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


class SigningKey:
    def __init__(self, kid: str = "test-key") -> None:
        self.key = generate_key("RSA", 2048, {"kid": kid})
        self.kid = kid

    def jwks(self) -> dict[str, Any]:
        return {"keys": [self.key.as_dict(private=False) | {"kid": self.kid, "alg": "RS256", "use": "sig"}]}

    def token(self, org: str, *, lifetime: float = 3600, **claims: Any) -> str:
        now = int(time.time())
        payload = {"iss": ISSUER, "aud": AUDIENCE, "sub": f"user@{org}", "org_id": org,
                   "iat": now, "exp": now + lifetime} | claims
        return jwt.encode({"alg": "RS256", "kid": self.kid}, payload, self.key)


class Stack:
    """Demo upstream + gateway over the reference policy, deciding at DECISION_TIME."""

    def __init__(self, directory: Path, *, clock: Callable[[], float] = lambda: DECISION_TIME,
                 policy_dir: Path = REFERENCE_POLICY, extra_config: str = "", admin_listen: str = "127.0.0.1:0",
                 upstream_options: str = "", country_db: Path | None = GEOIP / "GeoIP2-City-Test.mmdb",
                 anonymous_ip_db: Path | None = GEOIP / "GeoIP2-Anonymous-IP-Test.mmdb",
                 geoip_max_age_days: int = GEOIP_MAX_AGE_DAYS, orgs: list[str] = ORGS, pool: tuple[str, ...] = ()) -> None:
        """`upstream_options`: more keys of `upstreams.default`, in YAML flow style (", headers: {...}").
        `pool`: more URLs of `upstreams.default`, after the demo upstream's (`urls:` instead of `url:`).
        `country_db` None: the embedded database, as a default install has it."""
        self.directory = directory
        self.thread = LoopThread()
        self.signing = SigningKey()
        (directory / "jwks.json").write_text(json.dumps(self.signing.jwks()))
        self.upstream: DemoServer = self.thread.run(serve_upstream("127.0.0.1", 0, models=CATALOGUE))
        config_path = directory / "gateway.yaml"
        urls = ", ".join(f'"{url}"' for url in (self.upstream.url, *pool))
        members = f"urls: [{urls}]" if pool else f'url: "{self.upstream.url}"'
        # An `audit:` section in extra_config replaces this one.
        audit = "" if ("\n" + extra_config).count("\naudit:") else "audit: {path: audit.jsonl}"
        geoip = "\n  ".join(["geoip:", *([f"country_db: {country_db}"] if country_db is not None else []),
                              f"anonymous_ip_db: {anonymous_ip_db if anonymous_ip_db is not None else 'null'}",
                              f"max_age_days: {geoip_max_age_days}"])
        config_path.write_text(f"""
listen: 127.0.0.1:0
admin_listen: {admin_listen}
policy_dir: {policy_dir}
state_dir: state
upstreams:
  default: {{{members}, connect_timeout_s: 2, read_timeout_s: 10{upstream_options}}}
trusted_proxies: [127.0.0.1/32]
{geoip}
identity:
  jwt: {{jwks_file: jwks.json, issuer: "{ISSUER}", audience: {AUDIENCE}, algorithms: [RS256]}}
{audit}
{extra_config}
""")
        self.config = load_config(config_path, {})
        # One key per org, made before start: a running gateway sees new keys
        # only within a second, and tests should not wait for that.
        store = ApiKeyStore(self.config.state_dir)
        self.keys = {org: store.create(org)[1] for org in orgs}
        self.service = Service(self.config, clock=clock)
        self.thread.run(self.service.start())
        public, admin = self.service.bound_ports()
        self.url = f"http://127.0.0.1:{public}"
        self.admin_url = f"http://127.0.0.1:{admin}"

    def api_key(self, org: str) -> str:
        return self.keys[org]

    @property
    def received(self) -> list[Any]:
        return list(self.upstream.app.received)

    def audit_records(self) -> list[dict[str, Any]]:
        """Every record, of authenticated requests and of the others, in time order."""
        self.thread.run(asyncio.sleep(0.05))
        paths = [Path(self.config.audit.path), unauthenticated_path(self.config.audit.path)]
        records = [json.loads(line) for path in paths if path.exists() for line in path.read_text().splitlines()]
        return sorted(records, key=lambda record: record["time"])

    def close(self) -> None:
        self.thread.run(self.service.stop())
        self.thread.run(self.upstream.stop())
        self.thread.close()

    def service_stop_only(self) -> None:
        """Close when the test has already stopped the upstream."""
        self.thread.run(self.service.stop())
        self.thread.close()
