"""No live control is lost silently (issue 14), end to end on a real gateway: a bundle change
(file reload or PUT /admin/policy) that no longer defines what a live suspension or
organization override names is refused, naming it, unless the change lifts it too; a
suspension keeps the places it was made with and every tool shows them; a restart over a
stored bundle that lacks a group still enforces what was recorded.

The bundle is the reference one plus `jp_partners` (Japan); the Japanese partner is
org-kyoto, asking for small-2 from Tokyo, which nothing but the suspension denies.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from conftest import REFERENCE_POLICY, at
from e2e import US_IP, Stack
from mmdb import write
from test_admin import OPERATOR, VIEWER, admin, admin_config, audit_record, changes, chat, version_now
from test_admin_cli import gateway_admin
from gateway.server import Service

TOKYO, SEOUL = "198.51.100.1", "198.51.100.17"
RECORDS = {
    "198.51.100.0/28": {"country": {"iso_code": "JP"}},
    "198.51.100.16/28": {"country": {"iso_code": "KR"}},
    "216.160.83.56/29": {"country": {"iso_code": "US"}},
}
GROUP = '  jp_partners:\n    countries: [JP]\n    source: "Partner programme, Japan"\n'
JP_SUSPENSION = {"id": "susp-jp", "models": ["small-2"], "deny_in": ["jp_partners"], "reason": "emergency order",
                 "reference": "ORDER-14"}
LOST_GROUP = ("live suspension 'susp-jp' names jurisdiction group 'jp_partners', which the bundle does not define: "
              "keep them in the bundle, or lift the suspension with the change")


def make(directory: Path) -> tuple[Stack, Path]:
    policy = directory / "policy"
    policy.mkdir()
    for source in REFERENCE_POLICY.glob("*.yaml"):
        (policy / source.name).write_text(source.read_text() + (GROUP if source.name == "jurisdictions.yaml" else ""))
    stack = Stack(directory, extra_config=admin_config(), policy_dir=policy,
                  country_db=write(directory / "City.mmdb", RECORDS))
    return stack, policy


@pytest.fixture
def made(tmp_path: Path) -> Any:
    stack, policy = make(tmp_path)
    yield stack, policy
    stack.close()


def partner(stack: Stack, ip: str = TOKYO) -> int:
    """The status the Japanese partner gets; a 451 must be the suspension's."""
    status, _, decision_id = chat(stack, "org-kyoto", model="small-2", ip=ip)
    if status == 451:
        assert audit_record(stack, decision_id)["reasons"] == ["export_suspended"]
    return status


def suspend_jp(stack: Stack) -> dict[str, Any]:
    assert partner(stack) == 200
    status, created = admin(stack, "POST", "/admin/suspensions", JP_SUSPENSION)
    assert status == 201, created
    assert partner(stack) == 451
    return created


def renamed(files: dict[str, str]) -> dict[str, str]:
    """The bundle after a routine change that renames the group."""
    assert GROUP in files["jurisdictions.yaml"]
    return files | {"jurisdictions.yaml": files["jurisdictions.yaml"].replace("  jp_partners:", "  japan_partners:")}


def bundle_files(stack: Stack) -> dict[str, str]:
    return admin(stack, "GET", "/admin/policy", token=VIEWER)[1]["files"]


def reload_failures(stack: Stack) -> float:
    with urllib.request.urlopen(stack.admin_url + "/metrics", timeout=5) as metrics:
        for line in metrics.read().decode().splitlines():
            if line.startswith('gateway_policy_reloads_total{result="failure"}'):
                return float(line.split()[-1])
    return 0.0


def test_a_reload_that_renames_the_group_of_a_live_suspension_is_refused(made: tuple[Stack, Path]) -> None:
    stack, policy = made
    suspend_jp(stack)
    version, logged, failures = version_now(stack), changes(stack), reload_failures(stack)
    jurisdictions = policy / "jurisdictions.yaml"
    jurisdictions.write_text(renamed({"jurisdictions.yaml": jurisdictions.read_text()})["jurisdictions.yaml"])

    status, answer = admin(stack, "POST", "/admin/reload")
    assert status == 409 and answer["error"]["code"] == "change_refused"
    assert answer["error"]["problems"] == [LOST_GROUP]
    assert reload_failures(stack) > failures  # counted as a refused bundle: GatewayPolicyReloadFailed
    assert version_now(stack) == version and changes(stack) == logged  # the running policy stays
    assert partner(stack) == 451
    done = gateway_admin(stack, "reload", token=OPERATOR)
    assert done.returncode == 1 and done.stderr.splitlines() == [
        "error: The change was refused. (HTTP 409, change_refused)", f"  {LOST_GROUP}"]

    # Lifting it first lets the same files in.
    assert admin(stack, "DELETE", "/admin/suspensions/susp-jp")[0] == 200
    status, answer = admin(stack, "POST", "/admin/reload")
    assert status == 200 and answer["policy_version"] != version
    assert partner(stack) == 200


def test_a_put_that_renames_the_group_is_refused_unless_it_lifts_the_suspension(made: tuple[Stack, Path]) -> None:
    stack, _ = made
    created = suspend_jp(stack)
    files, version, logged = bundle_files(stack), version_now(stack), changes(stack)

    status, answer = admin(stack, "PUT", "/admin/policy", {"files": renamed(files)})
    assert status == 409 and answer["error"]["code"] == "change_refused"
    assert answer["error"]["problems"] == [LOST_GROUP]
    assert version_now(stack) == version and changes(stack) == logged and bundle_files(stack) == files
    assert partner(stack) == 451

    status, answer = admin(stack, "PUT", "/admin/policy", {"files": renamed(files), "lift": ["susp-nope"]})
    assert status == 422 and answer["error"]["problems"] == ["lift: no live suspension 'susp-nope'"]
    assert version_now(stack) == version

    status, replaced = admin(stack, "PUT", "/admin/policy", {"files": renamed(files), "lift": ["susp-jp"]})
    assert status == 200, replaced
    assert replaced["before"] == {"bundle_version": replaced["before"]["bundle_version"],
                                  "suspensions": {"susp-jp": created["suspension"]}, "organizations": {}}
    assert replaced["after"] == {"bundle_version": replaced["after"]["bundle_version"], "lifted": ["susp-jp"], "reset": []}
    assert changes(stack, 1)[0]["after"]["lifted"] == ["susp-jp"]
    assert admin(stack, "GET", "/admin/policy", token=VIEWER)[1]["overlay"]["suspensions"] == {}
    assert bundle_files(stack) == renamed(files)
    assert partner(stack) == 200


def test_the_cli_puts_a_bundle_that_lifts_what_it_drops(made: tuple[Stack, Path], tmp_path: Path) -> None:
    stack, _ = made
    suspend_jp(stack)
    out = tmp_path / "out"
    out.mkdir()
    for name, text in renamed(bundle_files(stack)).items():
        (out / name).write_text(text)
    done = gateway_admin(stack, "policy", "put", str(out), token=OPERATOR)
    assert done.returncode == 1 and done.stderr.splitlines()[1:] == [f"  {LOST_GROUP}"]
    assert partner(stack) == 451
    done = gateway_admin(stack, "policy", "put", str(out), "--lift", "susp-jp", token=OPERATOR)
    assert done.returncode == 0, done.stderr
    assert partner(stack) == 200


def test_a_put_that_drops_an_overridden_organization_is_refused_unless_it_resets_it(made: tuple[Stack, Path]) -> None:
    stack, _ = made
    status, _ = admin(stack, "PATCH", "/admin/organizations/org-kyoto", {"status": "denied", "status_reason": "Entity List"})
    assert status == 200 and partner(stack, US_IP) == 403
    files = bundle_files(stack)
    organizations = files["organizations.yaml"]
    start = organizations.index("  org-kyoto:")
    without = files | {"organizations.yaml": organizations[:start] + organizations[organizations.index("  org-lapsed:"):]}

    status, answer = admin(stack, "PUT", "/admin/policy", {"files": without})
    assert status == 409 and answer["error"]["problems"] == [
        "live override of organization 'org-kyoto': the bundle does not define the organization: keep it in the "
        "bundle, or reset the override with the change"]
    assert partner(stack, US_IP) == 403

    status, answer = admin(stack, "PUT", "/admin/policy", {"files": without, "reset_organizations": ["org-kyoto"]})
    assert status == 200 and answer["after"]["reset"] == ["org-kyoto"]
    assert answer["before"]["organizations"] == {"org-kyoto": {"status": "denied", "status_reason": "Entity List"}}
    assert admin(stack, "GET", "/admin/policy", token=VIEWER)[1]["overlay"]["organizations"] == {}
    assert partner(stack, US_IP) == 403  # now unknown to the policy: still refused, by the bundle


def test_a_suspension_keeps_the_places_it_was_made_with(made: tuple[Stack, Path]) -> None:
    stack, _ = made
    created = suspend_jp(stack)
    recorded = {"jp_partners": {"countries": ["JP"], "regions": []}}
    assert created["suspension"]["expanded"] == recorded
    assert changes(stack, 1)[0]["after"]["expanded"] == recorded

    # The group is edited to hold Korea instead of Japan: it still exists, so the bundle is
    # accepted, and the suspension denies both what it was made with and what the group holds.
    files = bundle_files(stack)
    edited = files | {"jurisdictions.yaml": files["jurisdictions.yaml"].replace(GROUP, GROUP.replace("[JP]", "[KR]"))}
    assert admin(stack, "PUT", "/admin/policy", {"files": edited})[0] == 200
    assert partner(stack, TOKYO) == 451 and partner(stack, SEOUL) == 451 and partner(stack, US_IP) == 200

    status, listed = admin(stack, "GET", "/admin/suspensions", token=VIEWER)
    [item] = [s for s in listed["suspensions"] if s["id"] == "susp-jp"]
    assert (item["places"], item["expanded"]) == ({"countries": ["JP", "KR"], "regions": []}, recorded)
    done = gateway_admin(stack, "suspensions", token=VIEWER)
    assert done.returncode == 0
    lines = done.stdout.splitlines()
    at_jp = lines.index(next(line for line in lines if line.startswith("susp-jp: ")))
    assert lines[at_jp + 1:at_jp + 3] == [
        "  denies: JP, KR",
        "  recorded when made: JP (the groups changed since; the stricter of the two is enforced)"]
    assert admin(stack, "DELETE", "/admin/suspensions/susp-jp")[0] == 200
    assert partner(stack, TOKYO) == 200 and partner(stack, SEOUL) == 200


def restart(stack: Stack) -> None:
    """Start the gateway again over its state_dir and policy_dir (stopped by the test)."""
    stack.service = Service(stack.config, clock=lambda: at("2026-12-01T12:00:00Z").timestamp())
    stack.thread.run(stack.service.start())
    public, admin_port = stack.service.bound_ports()
    stack.url, stack.admin_url = f"http://127.0.0.1:{public}", f"http://127.0.0.1:{admin_port}"


def test_files_changed_while_stopped_do_not_drop_a_stored_suspension(made: tuple[Stack, Path]) -> None:
    stack, policy = made
    suspend_jp(stack)
    version = version_now(stack)
    stack.thread.run(stack.service.stop())
    jurisdictions = policy / "jurisdictions.yaml"
    jurisdictions.write_text(renamed({"jurisdictions.yaml": jurisdictions.read_text()})["jurisdictions.yaml"])
    restart(stack)
    assert version_now(stack) == version  # the stored bundle stays; the files were refused
    assert reload_failures(stack) == 1
    assert partner(stack) == 451


def test_a_stored_bundle_that_lacks_the_group_still_enforces_the_recorded_places(made: tuple[Stack, Path]) -> None:
    # A stored state whose bundle lacks a group a suspension names (written by an older
    # version, or restored from a backup): the suspension is kept with the places it recorded.
    stack, policy = made
    suspend_jp(stack)
    stack.thread.run(stack.service.stop())
    state_file = Path(stack.config.state_dir) / "live" / "state.json"
    state = json.loads(state_file.read_text())
    state["bundle"]["files"] = renamed(state["bundle"]["files"])
    state["bundle"]["version"] = "0123456789abcdef"
    state_file.write_text(json.dumps(state))
    restart(stack)
    assert partner(stack) == 451
    status, listed = admin(stack, "GET", "/admin/suspensions", token=VIEWER)
    [item] = [s for s in listed["suspensions"] if s["id"] == "susp-jp"]
    assert item["places"] == {"countries": ["JP"], "regions": []}
    assert item["missing"] == ["jurisdiction group 'jp_partners'"]
    done = gateway_admin(stack, "suspensions", token=VIEWER)
    assert ("  ! names jurisdiction group 'jp_partners', which the policy in force does not define: "
            "the recorded places are enforced") in done.stdout.splitlines()


class TestOrganizationReset:
    def test_resetting_the_status_resets_the_reason_it_came_with(self, made: tuple[Stack, Path]) -> None:
        stack, _ = made
        base = version_now(stack)
        assert admin(stack, "PATCH", "/admin/organizations/org-kyoto", {"status": "suspended", "status_reason": "KYC"})[0] == 200
        status, reset = admin(stack, "PATCH", "/admin/organizations/org-kyoto", {"status": None})
        assert status == 200
        assert (reset["before"], reset["after"]) == ({"status": "suspended", "status_reason": "KYC"},
                                                     {"status": None, "status_reason": None})
        assert reset["remaining"] == {} and version_now(stack) == base
        assert admin(stack, "GET", "/admin/policy", token=VIEWER)[1]["overlay"]["organizations"] == {}

    def test_a_reset_says_which_overrides_remain(self, made: tuple[Stack, Path]) -> None:
        stack, _ = made
        done = gateway_admin(stack, "org", "org-kyoto", "--status", "suspended", "--tier", "government",
                             "--vetted-until", "2027-12-31", token=OPERATOR)
        assert done.returncode == 0, done.stderr
        assert not any(line.startswith(("still", "no overrides")) for line in done.stdout.splitlines())  # nothing reset
        done = gateway_admin(stack, "org", "org-kyoto", "--status", "none", token=OPERATOR)
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines()[-1] == ("still overridden: tier government (reset with --tier none); "
                                                "vetted_until 2027-12-31 (reset with --vetted-until none)")
        assert partner(stack, US_IP) == 200
        done = gateway_admin(stack, "org", "org-kyoto", "--tier", "none", "--vetted-until", "none", token=OPERATOR)
        assert done.stdout.splitlines()[-1] == "no overrides remain: the policy files' record is in force"
        assert admin(stack, "GET", "/admin/policy", token=VIEWER)[1]["overlay"]["organizations"] == {}

