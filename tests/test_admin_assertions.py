"""A bundle or live change that would break an assertion of assertions.yaml is
refused whole (409, the admin API's error shape, with the counterexample), and
the running policy stays: PUT /admin/policy, a reload of the files, a live
organization change."""

from __future__ import annotations

from pathlib import Path

from test_admin import VIEWER, admin, changes, chat, make_stack, version_now

from e2e import US_IP

ASSERTIONS = """assertions:
  embargo-holds:
    description: "Nothing is served to an embargoed place"
    never_allow:
      jurisdictions: [embargoed]
  listed-entity-never-served:
    description: "The listed entity reaches no model"
    never_allow:
      organizations: [org-listed]
"""
NO_EMBARGO = ("deny_jurisdictions: [embargoed]", "deny_jurisdictions: []")


def test_a_bundle_or_live_change_that_breaks_an_assertion_is_refused(tmp_path: Path, bundle_dir: Path) -> None:
    (bundle_dir / "assertions.yaml").write_text(ASSERTIONS)
    stack = make_stack(tmp_path, policy_dir=bundle_dir)
    try:
        files = admin(stack, "GET", "/admin/policy", token=VIEWER)[1]["files"]
        version, logged = version_now(stack), changes(stack)

        broken = files | {"framework.yaml": files["framework.yaml"].replace(*NO_EMBARGO)}
        status, answer = admin(stack, "PUT", "/admin/policy", {"files": broken})
        assert status == 409 and answer["error"]["code"] == "change_refused", answer
        [problem] = answer["error"]["problems"]
        assert "'embargo-holds' would be violated" in problem and "allow 200" in problem

        (bundle_dir / "framework.yaml").write_text(broken["framework.yaml"])
        status, answer = admin(stack, "POST", "/admin/reload")
        assert status == 409 and "embargo-holds" in answer["error"]["problems"][0]

        status, answer = admin(stack, "PATCH", "/admin/organizations/org-listed", {"status": "active"})
        assert status == 409 and "'listed-entity-never-served' would be violated" in answer["error"]["problems"][0]
        assert version_now(stack) == version and changes(stack) == logged  # nothing changed
        assert chat(stack, "org-listed", model="small-2", ip=US_IP)[0] == 403

        # A change the assertions allow still goes through.
        status, _ = admin(stack, "PATCH", "/admin/organizations/org-listed", {"status_reason": "still listed"})
        assert status == 200
    finally:
        stack.close()
