"""The config file and its environment overrides: errors name the key and the bad value."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    return path


def problems(path: Path | None, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as refused:
        load_config(path, environ or {})
    return refused.value.problems


def test_spec_example_loads_with_paths_relative_to_the_file(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, """
listen: 127.0.0.1:8080
admin_listen: 127.0.0.1:9090
policy_dir: policies/
state_dir: .gateway-state/
upstreams:
  default: {url: "http://127.0.0.1:8000", connect_timeout_s: 5, read_timeout_s: 600}
trusted_proxies: [127.0.0.1/32]
geoip:
  country_db: data/GeoLite2-City.mmdb
  anonymous_ip_db: null
identity:
  jwt:
    jwks_file: null
    jwks_url: https://idp.example/.well-known/jwks.json
    issuer: https://idp.example/
    audience: frontier-gateway
    algorithms: [RS256, ES256]
    org_claim: org_id
    leeway_s: 30
  api_keys: true
redis: {url: null}
audit: {path: audit.jsonl}
admin:
  tokens:
    - {name: ops, sha256: "%s", role: operator}
""" % ("ab" * 32)), {})
    assert config.policy_dir == str(tmp_path / "policies")
    assert config.geoip.country_db == str(tmp_path / "data/GeoLite2-City.mmdb")
    assert config.identity.jwt is not None and config.identity.jwt.jwks_url.endswith("jwks.json")
    assert config.admin.tokens[0].role == "operator"


def test_environment_overrides_nested_keys(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "redis: {url: null}\n"), {
        "GATEWAY_REDIS__URL": "redis://127.0.0.1:6379/0",
        "GATEWAY_TRUSTED_PROXIES": "[10.0.0.0/8, 127.0.0.1/32]",
        "GATEWAY_IDENTITY__API_KEYS": "false",
        "GATEWAY_UPSTREAMS__DEFAULT__URL": "http://upstream:9000",
        "UNRELATED": "ignored",
    })
    assert config.redis.url == "redis://127.0.0.1:6379/0"
    assert config.trusted_proxies == ["10.0.0.0/8", "127.0.0.1/32"]
    assert config.identity.api_keys is False
    assert config.upstreams["default"].url == "http://upstream:9000"


def test_unknown_keys_are_errors_in_the_file_and_the_environment(tmp_path: Path) -> None:
    found = problems(write(tmp_path, "listen: 127.0.0.1:8080\nlisten_port: 8080\n"), {"GATEWAY_REDIS__URLL": "x"})
    assert any("listen_port: unknown key" in p for p in found)
    assert any("redis.urll: unknown key" in p for p in found)


def test_errors_name_the_key_and_the_bad_value(tmp_path: Path) -> None:
    found = problems(write(tmp_path, """
listen: localhost
upstreams:
  default: {url: "ftp://x", connect_timeout_s: -1}
admin:
  tokens: [{name: ops, sha256: "not-hex", role: root}]
"""))
    text = "\n".join(found)
    assert "listen: " in text and "'localhost'" in text
    assert "upstreams.default.url" in text and "'ftp://x'" in text
    assert "upstreams.default.connect_timeout_s" in text and "-1" in text
    assert "admin.tokens[0].sha256" in text and "admin.tokens[0].role" in text and "'root'" in text


def test_jwt_needs_exactly_one_key_source(tmp_path: Path) -> None:
    found = problems(write(tmp_path, "identity:\n  jwt: {issuer: i, audience: a}\n"))
    assert any("exactly one of jwks_file or jwks_url" in p for p in found)


def test_an_upstream_named_default_is_required(tmp_path: Path) -> None:
    assert any("'default'" in p for p in problems(write(tmp_path, "upstreams: {other: {url: 'http://x:1'}}\n")))


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    assert "cannot be read" in problems(tmp_path / "absent.yaml")[0]
    assert "YAML syntax error" in problems(write(tmp_path, "listen: [\n"))[0]
    assert "must be a mapping" in problems(write(tmp_path, "- a\n"))[0]


def test_the_default_token_reservation(tmp_path: Path) -> None:
    assert load_config(None, {}).quota.default_max_tokens == 4096
    config = load_config(write(tmp_path, "quota: {default_max_tokens: 16384}\n"), {})
    assert config.quota.default_max_tokens == 16384
    assert load_config(None, {"GATEWAY_QUOTA__DEFAULT_MAX_TOKENS": "32000"}).quota.default_max_tokens == 32000
    found = "\n".join(problems(write(tmp_path, "quota: {default_max_tokens: 0}\n")))
    assert "quota.default_max_tokens" in found and "0" in found


def test_response_headers_name_what_may_pass_and_never_a_redirect(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "upstreams:\n  default: {url: 'http://x:1', response_headers: [Set-Cookie]}\n"),
                         {"GATEWAY_UPSTREAMS__DEFAULT__RESPONSE_HEADERS": "[X-RateLimit-Remaining-Tokens, openai-project]"})
    assert config.upstreams["default"].response_headers == ["x-ratelimit-remaining-tokens", "openai-project"]
    for name in ["Location", "content-location", "Refresh", "Transfer-Encoding", "Date", "X-Gateway-Org", "set cookie"]:
        found = problems(write(tmp_path, f"upstreams:\n  default: {{url: 'http://x:1', response_headers: ['{name}']}}\n"))
        assert any("upstreams.default.response_headers" in p and repr(name) in p for p in found), found


def test_configured_upstream_headers_are_checked_when_loaded(tmp_path: Path) -> None:
    for headers, says in [("{Content-Length: '1'}", "set by the gateway"), ("{X-Gateway-Org: org-x}", "set by the gateway"),
                          ("{Connection: close}", "set by the gateway"), ("{Api-Key: a, api_key: b}", "given twice"),
                          ("{'Bad Name': x}", "Bad Name"), ('{X-Key: "a\\r\\nX-Gateway-Org: org-x"}', "X-Key")]:
        found = problems(write(tmp_path, f"upstreams:\n  default: {{url: 'http://x:1', headers: {headers}}}\n"))
        assert any("upstreams.default.headers" in p and says in p for p in found), (headers, found)


def test_limits_and_audit_bounds_have_defaults_and_env_overrides(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "audit: {path: logs/audit.jsonl, unauthenticated: {path: logs/anon.jsonl}}\n"), {
        "GATEWAY_LIMITS__MAX_CONNECTIONS": "50",
        "GATEWAY_LIMITS__HEAD_TIMEOUT_S": "2.5",
        "GATEWAY_AUDIT__STREAM_MAX_BYTES": "1048576",
        "GATEWAY_AUDIT__UNAUTHENTICATED__KEEP": "1",
        "GATEWAY_REQUEST__MAX_JSON_CONTAINERS": "500",
    })
    limits = config.limits
    assert (limits.max_header_bytes, limits.max_header_line_bytes, limits.max_headers) == (32768, 8192, 100)
    assert (limits.max_connections, limits.head_timeout_s, limits.body_timeout_s) == (50, 2.5, 60.0)
    assert config.audit.stream_max_bytes == 1048576 and config.audit.unauthenticated.keep == 1
    assert config.audit.unauthenticated.path == str(tmp_path / "logs" / "anon.jsonl")  # relative to the file
    assert config.request.max_json_containers == 500


def test_limits_are_validated(tmp_path: Path) -> None:
    found = problems(write(tmp_path, "limits: {max_header_bytes: 4096, max_header_line_bytes: 8192}\n"))
    assert any("limits: " in p and "max_header_line_bytes cannot exceed max_header_bytes" in p for p in found)
    found = problems(write(tmp_path, "limits: {max_connections: 0}\n"))
    assert any("limits.max_connections" in p and "(got 0)" in p for p in found)


def test_change_control_takes_durations_with_units_and_names_a_bad_one(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text("change_control: {approvals: 2, countersign_within: 30m, proposal_ttl: 3d}\n")
    control = load_config(path, {}).change_control
    assert (control.approvals, control.countersign_within, control.proposal_ttl, control.file_reloads) == (2, 1800, 259200, "apply")
    assert load_config(None, {}).change_control.approvals == 1  # two people by default
    path.write_text("change_control: {countersign_within: soon}\n")
    with pytest.raises(ConfigError, match="change_control.countersign_within"):
        load_config(path, {})
