"""Errors a person can act on: each one is a single line on stderr from the real
`gateway` command, no traceback, and a non-zero exit status."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import REFERENCE_POLICY

ENV = {name: value for name, value in os.environ.items() if not name.startswith("GATEWAY_")}


def gateway(*argv: str, env: dict[str, str] | None = None, cwd: Path | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *argv], capture_output=True, text=True, timeout=timeout,
                          env=ENV | (env or {}), cwd=cwd)


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    """The error, asserting it is exactly one line and the exit status is not 0."""
    assert result.returncode != 0, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(f"policy_dir: {REFERENCE_POLICY}\nstate_dir: state\n" + text)
    return path


@pytest.fixture
def occupied() -> Iterator[int]:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


class TestServeRefusesToStart:
    def test_an_invalid_cidr_in_trusted_proxies_before_anything_is_written(self, tmp_path: Path) -> None:
        result = gateway("serve", "--config", str(config(tmp_path, "trusted_proxies: [127.0.0.1/32, 10.0.0.0/33]\n")))
        line = one_line(result)
        assert result.returncode == 2
        assert "gateway.yaml:3: trusted_proxies: '10.0.0.0/33' is not a network in CIDR notation" in line
        assert not (tmp_path / "state").exists()

    def test_a_port_in_use(self, tmp_path: Path, occupied: int) -> None:
        line = one_line(gateway("serve", "--config", str(config(tmp_path, f"listen: 127.0.0.1:{occupied}\n"))))
        assert line == f"gateway: error: listen 127.0.0.1:{occupied}: port {occupied} is already in use on 127.0.0.1"

    def test_an_address_not_on_this_machine(self, tmp_path: Path) -> None:
        # 192.0.2.0/24 is TEST-NET-1 (RFC 5737): never an address of a real machine.
        line = one_line(gateway("serve", "--config", str(config(tmp_path, "listen: 192.0.2.1:8080\n"))))
        assert line == "gateway: error: listen 192.0.2.1:8080: 192.0.2.1 is not an address of this machine"

    def test_a_missing_policy_dir_even_with_a_bundle_from_an_earlier_run(self, tmp_path: Path) -> None:
        state = tmp_path / "state"
        shutil.copytree(REFERENCE_POLICY, state / "policy")  # what an earlier run may have left
        path = tmp_path / "gateway.yaml"
        path.write_text("policy_dir: gone/\nstate_dir: state\n")
        line = one_line(gateway("serve", "--config", str(path)))
        assert f"policy_dir {tmp_path / 'gone'} is not a directory" in line and "--serve-stored-policy" in line


class TestConfigErrors:
    def test_a_value_outside_its_allowed_set_names_it_and_every_allowed_value(self, tmp_path: Path) -> None:
        line = one_line(gateway("serve", "--config", str(config(tmp_path, "logging: {format: xml}\n"))))
        assert line.endswith("gateway.yaml:3: logging.format: 'xml' is not allowed; allowed: 'json' or 'text'")

    def test_an_error_names_the_line(self, tmp_path: Path) -> None:
        path = config(tmp_path, "audit:\n  keep: 10\n  max_bytes: 12\n")
        assert re.search(r"gateway\.yaml:5: audit\.max_bytes: .*\(got 12\)$", one_line(gateway("serve", "--config", str(path))))

    def test_an_unknown_variable_is_named_as_the_variable(self, tmp_path: Path) -> None:
        result = gateway("serve", "--config", str(config(tmp_path, "")), env={"GATEWAY_LISTEN_PORT": "8080"})
        assert one_line(result) == "gateway: error: invalid configuration: GATEWAY_LISTEN_PORT: listen_port: unknown key"

    def test_a_quoted_yes_is_not_a_boolean(self, tmp_path: Path) -> None:
        line = one_line(gateway("serve", "--config", str(config(tmp_path, 'forward: {pass_credentials: "yes"}\n'))))
        assert "gateway.yaml:3: forward.pass_credentials: Input should be a valid boolean (got 'yes')" in line

    def test_a_bad_listen_says_host_port(self, tmp_path: Path) -> None:
        line = one_line(gateway("serve", "--config", str(config(tmp_path, "listen: 8080\n"))))
        assert "gateway.yaml:3: listen: expected HOST:PORT" in line


def test_a_policy_value_outside_its_allowed_set_names_it_and_every_allowed_value(bundle_dir: Path) -> None:
    orgs = bundle_dir / "organizations.yaml"
    orgs.write_text(re.sub(r"^( +)tier: \w+", r"\1tier: platinum", orgs.read_text(), count=1, flags=re.M))
    result = gateway("policy", "validate", str(bundle_dir))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert re.search(r"organizations\.yaml:\d+: organizations\.[\w-]+\.tier: 'platinum' is not allowed; "
                     r"allowed: 'government', 'vetted_partner', 'verified' or 'standard'", result.stderr)


def test_output_to_a_closed_pipe_ends_quietly() -> None:
    """`gateway ... | head -1`: the reader has gone before the output is written."""
    process = subprocess.Popen([sys.executable, "-m", "gateway", "explain", "--policy", str(REFERENCE_POLICY),
                                "--model", "frontier-5.6"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()
    error = process.stderr.read()
    assert process.wait(60) == 141  # as for a process ended by SIGPIPE
    assert error == b""


def test_version() -> None:
    result = gateway("--version")
    assert result.returncode == 0 and re.fullmatch(r"gateway \S+\n", result.stdout)


class TestKeys:
    def test_a_key_for_an_org_the_policy_does_not_know_is_refused_unless_forced(self, tmp_path: Path) -> None:
        path = config(tmp_path, "")
        refused = gateway("keys", "create", "--org", "org-acmee", "--config", str(path))
        assert one_line(refused) == (f"gateway: error: organization 'org-acmee' is not in the policy at {REFERENCE_POLICY}; "
                                     "pass --force to create the key anyway")
        assert refused.returncode == 2
        assert not (tmp_path / "state" / "api_keys.json").exists()
        forced = gateway("keys", "create", "--org", "org-acmee", "--force", "--json", "--config", str(path))
        assert forced.returncode == 0, forced.stderr
        assert json.loads(forced.stdout)["org_id"] == "org-acmee"

    def test_revoking_a_revoked_key_says_so(self, tmp_path: Path) -> None:
        path = config(tmp_path, "")
        key_id = json.loads(gateway("keys", "create", "--org", "org-acme", "--json", "--config", str(path)).stdout)["key_id"]
        first = gateway("keys", "revoke", key_id, "--config", str(path))
        assert first.returncode == 0 and "already" not in first.stderr
        again = gateway("keys", "revoke", key_id, "--config", str(path))
        assert again.returncode == 0 and again.stdout == ""
        assert re.fullmatch(rf"gateway: key {key_id} was already revoked at \S+; nothing changed\n", again.stderr)


def test_demo_check_keeps_its_audit_log_to_verify(tmp_path: Path) -> None:
    result = gateway("demo", "--check", "--port", "0", "--admin-port", "0", cwd=tmp_path, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Press Ctrl-C" not in result.stdout
    [audit] = re.findall(r"gateway audit verify (\S+)", result.stdout)
    try:
        verified = gateway("audit", "verify", audit)
        assert verified.returncode == 0, verified.stdout + verified.stderr
    finally:
        shutil.rmtree(Path(audit).parent)
