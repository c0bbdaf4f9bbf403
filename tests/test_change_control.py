"""Change control in fleet mode (issue 14): two real replicas, one real Redis.

Tightening takes effect at once and waits for a countersignature; loosening is a
proposal that applies, on every replica, once another operator approves it."""

from __future__ import annotations

import hashlib
import json
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fleet import SE_IP, SECOND_OPERATOR, THIRD_OPERATOR, VIEWER_TOKEN, Fleet, Reply, wait_for
from test_fleet import fleets  # noqa: F401 (a fixture: every fleet started is stopped, logs on failure)

TWO_PEOPLE = {"approvals": 1}


def suspend_small_2_in_se(fleet: Fleet, **extra: Any) -> Reply:
    assert se_allowed(fleet.a, fleet) or extra.get("id") != "s-se"  # allowed until it is suspended
    body = {"models": ["small-2"], "deny_in": ["SE"], "reason": "export order", "reference": "ORDER-1"} | extra
    return fleet.a.admin("POST", "/admin/suspensions", body)


def se_allowed(replica: Any, fleet: Fleet) -> bool:
    return replica.chat(fleet.key("org-public"), ip=SE_IP).status == 200


def test_a_tightening_applies_at_once_and_awaits_a_countersignature_by_another_operator(
        fleets: Callable[..., Fleet], redis_url: str) -> None:
    fleet = fleets(redis_url=redis_url, change_control=TWO_PEOPLE)
    made = suspend_small_2_in_se(fleet, id="s-se")
    assert made.status == 201, made
    assert made.json["access"] == "tightening" and made.json["countersign"]["state"] == "awaiting"
    change_id = made.json["change_id"]
    wait_for(lambda: not se_allowed(fleet.b, fleet), timeout=1.0)
    awaiting = fleet.b.admin("GET", "/admin/changes", token=VIEWER_TOKEN).json["awaiting_countersign"]
    assert [(e["change_id"], e["actor"], e["overdue"]) for e in awaiting] == [(change_id, "ops-alice", False)]
    assert "gateway_changes_awaiting_countersign 1.0" in fleet.a.admin("GET", "/metrics", token=VIEWER_TOKEN).raw.decode()
    # The operator who made it cannot countersign it; another can, once.
    own = fleet.b.admin("POST", f"/admin/changes/{change_id}/countersign", {"reason": "mine"})
    assert own.status == 403 and "another operator" in own.raw.decode()
    signed = fleet.b.admin("POST", f"/admin/changes/{change_id}/countersign", {"reason": "order checked"},
                           token=SECOND_OPERATOR)
    assert signed.status == 200 and signed.json["actor"] == "ops-carol"
    assert fleet.a.admin("POST", f"/admin/changes/{change_id}/countersign", token=THIRD_OPERATOR).status == 404
    changes = fleet.a.admin("GET", "/admin/changes", token=VIEWER_TOKEN).json
    assert changes["awaiting_countersign"] == []
    assert changes["changes"][0]["action"] == "change.countersign" and changes["changes"][0]["target"] == change_id
    fleet.check_nothing_denied_was_forwarded()


def test_a_loosening_made_on_a_is_a_proposal_that_applies_on_both_once_b_approves_it(
        fleets: Callable[..., Fleet], redis_url: str) -> None:
    fleet = fleets(redis_url=redis_url, change_control=TWO_PEOPLE)
    assert suspend_small_2_in_se(fleet, id="s-se").status == 201
    wait_for(lambda: not se_allowed(fleet.b, fleet), timeout=1.0)

    lift = fleet.a.admin("DELETE", "/admin/suspensions/s-se?reason=order+rescinded")
    assert lift.status == 202, lift
    proposal = lift.json
    assert proposal["state"] == "open" and proposal["proposer"] == "ops-alice" and proposal["kind"] == "suspension.lift"
    assert proposal["access_delta"]["kind"] == "loosening"
    assert {g["model"] for g in proposal["access_delta"]["granted"]} == {"small-2"}
    assert all(g["places"] == ["SE"] for g in proposal["access_delta"]["granted"])
    # Not applied: SE is still refused, on both replicas.
    assert not se_allowed(fleet.a, fleet) and not se_allowed(fleet.b, fleet)
    # The simulation replays this replica's recorded requests: the SE ones would flip.
    assert proposal["simulation"]["would_flip"]["deny_to_allow"] >= 1
    assert any(row["country"] == "SE" for row in proposal["simulation"]["by_country"])

    # The proposer cannot approve their own proposal.
    own = fleet.b.admin("POST", f"/admin/proposals/{proposal['id']}/approve", {"reason": "fine"})
    assert own.status == 403 and "cannot approve" in own.raw.decode()
    listed = fleet.b.admin("GET", "/admin/proposals?state=open", token=VIEWER_TOKEN).json["proposals"]
    assert [p["id"] for p in listed] == [proposal["id"]]

    approved = fleet.b.admin("POST", f"/admin/proposals/{proposal['id']}/approve", {"reason": "checked the order"},
                             token=SECOND_OPERATOR)
    assert approved.status == 200 and approved.json["state"] == "applied", approved
    _, elapsed = wait_for(lambda: se_allowed(fleet.a, fleet) and se_allowed(fleet.b, fleet), timeout=1.0)
    assert elapsed < 1.0
    again = fleet.a.admin("POST", f"/admin/proposals/{proposal['id']}/approve", token=THIRD_OPERATOR)
    assert again.status == 409  # applied: nothing to approve
    applied = next(c for c in fleet.a.admin("GET", "/admin/changes", token=VIEWER_TOKEN).json["changes"]
                   if c["action"] == "suspension.lift")
    assert applied["actor"] == "ops-alice" and applied["approved_by"] == ["ops-carol"]
    assert applied["proposal"] == proposal["id"] and applied["reason"] == "order rescinded"
    fleet.check_nothing_denied_was_forwarded()


def test_concurrent_approvals_apply_a_proposal_once(fleets: Callable[..., Fleet], redis_url: str) -> None:
    fleet = fleets(redis_url=redis_url, change_control=TWO_PEOPLE)
    made = fleet.a.admin("PATCH", "/admin/organizations/org-public", {"tier": "government", "reason": "upgrade"})
    assert made.status == 202, made
    proposal_id = made.json["id"]
    replies: list[Reply] = []

    def approve(replica: Any, token: str) -> None:
        replies.append(replica.admin("POST", f"/admin/proposals/{proposal_id}/approve", token=token))

    threads = [threading.Thread(target=approve, args=(r, t)) for r, t in ((fleet.a, SECOND_OPERATOR), (fleet.b, THIRD_OPERATOR))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert sorted(r.status for r in replies) == [200, 409], replies
    changes = fleet.a.admin("GET", "/admin/changes", token=VIEWER_TOKEN).json["changes"]
    assert [c["action"] for c in changes].count("organization.update") == 1
    assert [c["action"] for c in changes].count("proposal.approve") == 1
    # Two replicas wrote at once, and the change log is still one chain.
    verified = fleet.b.admin("GET", "/admin/changes/verify", token=VIEWER_TOKEN).json
    assert verified["ok"] and verified["records"] == len(changes), verified


def test_a_stale_proposal_is_recomputed_and_its_approvals_cleared(fleets: Callable[..., Fleet], redis_url: str) -> None:
    fleet = fleets(redis_url=redis_url, change_control={"approvals": 2})
    assert suspend_small_2_in_se(fleet, id="s-se").status == 201
    lift = fleet.a.admin("DELETE", "/admin/suspensions/s-se")
    assert lift.status == 202
    proposal_id = lift.json["id"]
    first = fleet.b.admin("POST", f"/admin/proposals/{proposal_id}/approve", token=SECOND_OPERATOR)
    assert first.status == 200 and first.json["state"] == "open" and len(first.json["approvals"]) == 1
    # Meanwhile another suspension also denies small-2 in SE: lifting s-se would now grant nothing.
    assert suspend_small_2_in_se(fleet, id="s-se-gb", deny_in=["SE", "GB"]).status == 201
    wait_for(lambda: fleet.b.policy_version() == fleet.a.policy_version(), timeout=1.0)
    second = fleet.b.admin("POST", f"/admin/proposals/{proposal_id}/approve", token=THIRD_OPERATOR)
    assert second.status == 409 and "recomputed" in second.raw.decode()
    shown = fleet.a.admin("GET", f"/admin/proposals/{proposal_id}", token=VIEWER_TOKEN).json
    assert shown["approvals"] == [] and shown["recomputed"]["approvals_cleared"] is True
    assert shown["access_delta"]["granted"] == [] and shown["state"] == "open"
    assert se_allowed(fleet.a, fleet) is False


def test_an_api_key_proposed_on_a_and_approved_on_b_works_on_both_and_its_revocation_applies_at_once(
        fleets: Callable[..., Fleet], redis_url: str) -> None:
    fleet = fleets(redis_url=redis_url, change_control=TWO_PEOPLE)
    secret = "fgw_" + uuid.uuid4().hex + uuid.uuid4().hex  # drawn by the requester, who sends its hash only
    proposed = fleet.a.admin("POST", "/admin/keys", {"org_id": "org-public", "sha256": hashlib.sha256(secret.encode()).hexdigest(),
                                                     "label": "batch", "reason": "onboarding"})
    assert proposed.status == 202 and proposed.json["access_delta"]["kind"] == "loosening", proposed
    key_id = proposed.json["target"]
    assert fleet.a.chat(secret).status == 401
    approved = fleet.b.admin("POST", f"/admin/proposals/{proposed.json['id']}/approve", token=SECOND_OPERATOR)
    assert approved.json["state"] == "applied", approved
    wait_for(lambda: fleet.a.chat(secret).status == 200 and fleet.b.chat(secret).status == 200, timeout=2.0)
    revoked = fleet.b.admin("DELETE", f"/admin/keys/{key_id}?reason=leaked")
    assert revoked.status == 200 and revoked.json["countersign"]["state"] == "awaiting", revoked
    wait_for(lambda: fleet.a.chat(secret).status == 401 and fleet.b.chat(secret).status == 401, timeout=2.0)
    assert fleet.a.admin("DELETE", f"/admin/keys/{key_id}").status == 404  # revoked already
    bad = fleet.a.admin("POST", "/admin/keys", {"org_id": "org-public", "sha256": secret})
    assert bad.status == 422 and "sha256" in bad.raw.decode()  # a secret sent by mistake is refused
    actions = [c["action"] for c in fleet.a.admin("GET", "/admin/changes", token=VIEWER_TOKEN).json["changes"]]
    assert actions[:4] == ["apikey.revoke", "apikey.create", "proposal.approve", "proposal.create"]


SE_GROUP = '  se_partners:\n    countries: [SE]\n    source: "Partner programme, Sweden"\n'
LOST_SE_GROUP = ("live suspension 's-se' names jurisdiction group 'se_partners', which the bundle does not define: "
                 "keep them in the bundle, or lift the suspension with the change")


def test_a_put_on_one_replica_that_renames_the_group_of_a_live_suspension_is_refused_naming_it(
        fleets: Callable[..., Fleet], redis_url: str, tmp_path: Path) -> None:
    from conftest import REFERENCE_POLICY

    policy = tmp_path / "policy"
    policy.mkdir()
    for source in REFERENCE_POLICY.glob("*.yaml"):
        (policy / source.name).write_text(source.read_text() + (SE_GROUP if source.name == "jurisdictions.yaml" else ""))
    fleet = fleets(redis_url=redis_url, change_control=TWO_PEOPLE, policy_dir=policy)
    made = fleet.a.admin("POST", "/admin/suspensions", {"id": "s-se", "models": ["small-2"], "deny_in": ["se_partners"],
                                                        "reason": "export order"})
    assert made.status == 201, made
    wait_for(lambda: not se_allowed(fleet.a, fleet) and not se_allowed(fleet.b, fleet), timeout=1.0)
    files = fleet.b.admin("GET", "/admin/policy", token=VIEWER_TOKEN).json["files"]
    version = fleet.b.policy_version()
    renamed = files | {"jurisdictions.yaml": files["jurisdictions.yaml"].replace("  se_partners:", "  sweden_partners:")}

    refused = fleet.b.admin("PUT", "/admin/policy", {"files": renamed, "reason": "routine rename"})
    assert refused.status == 409 and refused.json["error"]["problems"] == [LOST_SE_GROUP], refused
    assert fleet.a.policy_version() == fleet.b.policy_version() == version  # nothing changed anywhere
    assert not se_allowed(fleet.a, fleet) and not se_allowed(fleet.b, fleet)
    assert fleet.a.admin("GET", "/admin/proposals", token=VIEWER_TOKEN).json["proposals"] == []

    # With the lift, it is a loosening: a proposal, applied on both once another operator approves.
    proposed = fleet.b.admin("PUT", "/admin/policy", {"files": renamed, "lift": ["s-se"], "reason": "rename, lift"})
    assert proposed.status == 202, proposed
    assert not se_allowed(fleet.a, fleet)
    approved = fleet.a.admin("POST", f"/admin/proposals/{proposed.json['id']}/approve", token=SECOND_OPERATOR)
    assert approved.json["state"] == "applied", approved
    wait_for(lambda: se_allowed(fleet.a, fleet) and se_allowed(fleet.b, fleet), timeout=1.0)
    assert fleet.a.admin("GET", "/admin/policy", token=VIEWER_TOKEN).json["files"] == renamed
    fleet.check_nothing_denied_was_forwarded()


def test_whoami_names_the_token_and_a_viewer_cannot_propose(fleets: Callable[..., Fleet], redis_url: str) -> None:
    fleet = fleets(redis_url=redis_url, change_control=TWO_PEOPLE)
    assert fleet.a.admin("GET", "/admin/whoami", token=SECOND_OPERATOR).json == {
        "name": "ops-carol", "role": "operator", "approvals_needed": 1}
    refused = fleet.a.admin("POST", "/admin/proposals", {"kind": "suspension.lift", "id": "x"}, token=VIEWER_TOKEN)
    assert refused.status == 403


# Embedded mode, through `gateway admin` as an operator runs it.

CLI_ALICE, CLI_CAROL = "cli-alice-token", "cli-carol-token"


@pytest.fixture(scope="module")
def two_operators(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:

    from e2e import Stack

    digest = lambda token: hashlib.sha256(token.encode()).hexdigest()  # noqa: E731
    stack = Stack(tmp_path_factory.mktemp("change-control"), extra_config=f"""admin:
  tokens:
    - {{name: ops-alice, sha256: "{digest(CLI_ALICE)}", role: operator}}
    - {{name: ops-carol, sha256: "{digest(CLI_CAROL)}", role: operator}}
""")
    yield stack
    stack.close()


def test_the_cli_walks_a_suspension_its_lift_proposal_and_the_second_operators_approval(two_operators: Any) -> None:
    from test_admin_cli import gateway_admin

    stack = two_operators
    assert "ops-carol (operator)" in gateway_admin(stack, "whoami", token=CLI_CAROL).stdout
    made = gateway_admin(stack, "suspend", "--model", "small-2", "--deny-in", "SE", "--reason", "order", "--id", "s-cli",
                         token=CLI_ALICE)
    assert made.returncode == 0 and "another operator must countersign change chg-" in made.stdout, made
    lift = gateway_admin(stack, "lift", "s-cli", "--reason", "order rescinded", token=CLI_ALICE)
    assert lift.returncode == 0 and "not applied" in lift.stdout, lift
    proposal_id = lift.stdout.split("gateway admin approve ", 1)[1].split(")", 1)[0]
    shown = gateway_admin(stack, "show", proposal_id, token=CLI_CAROL).stdout
    assert "Access delta: loosening" in shown and "grants small-2" in shown and "Simulation over" in shown
    assert len(shown.splitlines()) <= 40  # one screen
    assert proposal_id in gateway_admin(stack, "proposals", token=CLI_CAROL).stdout
    own = gateway_admin(stack, "approve", proposal_id, token=CLI_ALICE)
    assert own.returncode == 1 and "cannot approve" in own.stderr
    approved = gateway_admin(stack, "approve", proposal_id, "--reason", "seen the order", token=CLI_CAROL)
    assert approved.returncode == 0 and "is now applied" in approved.stdout, approved
    log = gateway_admin(stack, "changes", token=CLI_CAROL).stdout
    assert "suspension.lift s-cli" in log and "approved by ops-carol" in log and "awaiting countersignature" in log


def test_every_step_is_in_the_change_log_and_its_hash_chain_is_checked(two_operators: Any) -> None:
    from test_admin_cli import gateway_admin

    stack = two_operators
    made = gateway_admin(stack, "--json", "suspend", "--model", "small-2", "--deny-in", "GB", "--reason", "order",
                         token=CLI_ALICE)
    assert made.returncode == 0, made
    change_id = json.loads(made.stdout)["change_id"]
    assert gateway_admin(stack, "countersign", change_id, "--reason", "seen", token=CLI_CAROL).returncode == 0
    for closing, token in (("reject", CLI_CAROL), ("withdraw", CLI_ALICE)):
        proposed = gateway_admin(stack, "--json", "org", "org-public", "--tier", "government", token=CLI_ALICE)
        proposal_id = json.loads(proposed.stdout)["id"]
        closed = gateway_admin(stack, closing, proposal_id, "--reason", f"{closing} it", token=token)
        assert closed.returncode == 0, closed
    log = json.loads(gateway_admin(stack, "--json", "changes", token=CLI_CAROL).stdout)["changes"]
    actions = [(c["action"], c["actor"]) for c in log[:6]][::-1]
    assert actions == [("suspension.create", "ops-alice"), ("change.countersign", "ops-carol"),
                       ("proposal.create", "ops-alice"), ("proposal.reject", "ops-carol"),
                       ("proposal.create", "ops-alice"), ("proposal.withdraw", "ops-alice")]
    assert log[0]["reason"] == "withdraw it" and log[0]["prev"] == log[1]["hash"]

    verified = gateway_admin(stack, "changes", "--verify", token=CLI_CAROL)
    assert verified.returncode == 0 and "hash chain intact" in verified.stdout, verified
    # An edited record is named by its seq; the log is put back for the tests after this one.
    path = Path(stack.config.state_dir) / "live" / "changes.jsonl"
    original = path.read_text()
    try:
        path.write_text(original.replace('"reason":"reject it"', '"reason":"looks fine"'))
        tampered = gateway_admin(stack, "changes", "--verify", token=CLI_CAROL)
        seq = next(c["seq"] for c in log if c["action"] == "proposal.reject")
        assert tampered.returncode == 1 and f"seq {seq}: edited" in tampered.stdout, tampered
    finally:
        path.write_text(original)


def chat_status(stack: Any, secret: str) -> int:
    import urllib.error
    import urllib.request

    body = json.dumps({"model": "fable", "messages": [{"role": "user", "content": "hi"}]}).encode()
    request = urllib.request.Request(stack.url + "/v1/chat/completions", data=body, method="POST", headers={
        "Authorization": f"Bearer {secret}", "Content-Type": "application/json", "X-Forwarded-For": SE_IP})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as refused:
        return int(refused.code)


def test_an_api_key_is_proposed_by_its_hash_works_once_approved_and_is_revoked_at_once(two_operators: Any) -> None:
    from test_admin_cli import gateway_admin

    stack = two_operators
    made = gateway_admin(stack, "key-create", "--org", "org-public", "--label", "batch jobs", "--reason", "onboarding",
                         token=CLI_ALICE)
    assert made.returncode == 0 and "not applied" in made.stdout, made
    secret = made.stdout.split("Secret: ", 1)[1].split()[0]
    proposal_id = made.stdout.split("gateway admin approve ", 1)[1].split(")", 1)[0]
    assert "grants: API key key_" in made.stdout and "works once the proposal is approved" in made.stdout
    assert chat_status(stack, secret) == 401  # proposed, not created
    shown = gateway_admin(stack, "--json", "show", proposal_id, token=CLI_CAROL).stdout
    assert secret not in shown and hashlib.sha256(secret.encode()).hexdigest() in shown  # the reviewer sees the hash
    assert gateway_admin(stack, "approve", proposal_id, token=CLI_CAROL).returncode == 0
    assert wait_for(lambda: chat_status(stack, secret) == 200, timeout=3.0)[0]  # replicas read new keys within a second
    key_id = json.loads(shown)["target"]
    assert key_id in gateway_admin(stack, "keys", "--org", "org-public", token=CLI_CAROL).stdout

    revoked = gateway_admin(stack, "key-revoke", key_id, "--reason", "laptop stolen", token=CLI_CAROL)
    assert revoked.returncode == 0 and "another operator must countersign" in revoked.stdout, revoked
    assert wait_for(lambda: chat_status(stack, secret) == 401, timeout=3.0)[0]
    log = json.loads(gateway_admin(stack, "--json", "changes", token=CLI_CAROL).stdout)
    created = next(c for c in log["changes"] if c["action"] == "apikey.create" and c["target"] == key_id)
    assert created["actor"] == "ops-alice" and created["approved_by"] == ["ops-carol"]
    assert created["after"]["org_id"] == "org-public" and created["reason"] == "onboarding"
    assert log["changes"][0]["action"] == "apikey.revoke" and log["changes"][0]["reason"] == "laptop stolen"
    assert key_id in [e["target"] for e in log["awaiting_countersign"]]
    assert secret not in json.dumps(log)


def test_gateway_keys_records_its_changes_as_the_local_user(two_operators: Any) -> None:
    import getpass
    import subprocess
    import sys

    from test_admin_cli import ROOT, gateway_admin

    stack = two_operators
    config = stack.directory / "gateway.yaml"
    made = subprocess.run([sys.executable, "-m", "gateway", "keys", "create", "--org", "org-acme", "--json",
                           "--config", str(config)], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert made.returncode == 0, made
    key_id = json.loads(made.stdout)["key_id"]
    revoked = subprocess.run([sys.executable, "-m", "gateway", "keys", "revoke", key_id, "--config", str(config)],
                             cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert revoked.returncode == 0, revoked
    log = json.loads(gateway_admin(stack, "--json", "changes", token=CLI_CAROL).stdout)["changes"]
    assert [(c["action"], c["target"], c["actor"]) for c in log[:2]] == [
        ("apikey.revoke", key_id, f"local:{getpass.getuser()}"), ("apikey.create", key_id, f"local:{getpass.getuser()}")]
    assert gateway_admin(stack, "changes", "--verify", token=CLI_CAROL).returncode == 0
