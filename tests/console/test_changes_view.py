"""What the Changes page reads from its forms (the admin API's change bodies, or problems
in plain words) and how it shows proposals and the change log."""

from __future__ import annotations

from starlette.datastructures import ImmutableMultiDict

from gateway.console.changes_view import api_key, history_row, places, proposal_view, suspension, valid_id
from gateway.policy.snapshot import Policy


def form(**fields: str | list[str]) -> ImmutableMultiDict:
    pairs = [(k, v) for k, values in fields.items() for v in (values if isinstance(values, list) else [values])]
    return ImmutableMultiDict(pairs)


def draft(reference_policy: Policy, **fields: str | list[str]):  # noqa: ANN201
    filled = form(**fields)
    return suspension(filled, filled.getlist, reference_policy)


def test_places_are_iso_codes_in_any_case_and_unknown_ones_are_named() -> None:
    assert places("se, ua-43  JP;SE") == (["SE", "UA-43", "JP"], [])
    codes, problems = places("SE XX ZZ-1234")
    assert codes == ["SE"]
    assert problems == ["'XX' is not an ISO 3166-1 country code (such as SE) or an ISO 3166-2 region code (such as UA-43).",
                        "'ZZ-1234' is not an ISO 3166-1 country code (such as SE) or an ISO 3166-2 region code (such as UA-43)."]
    assert places("") == ([], [])


def test_a_suspension_form_becomes_the_admin_apis_body(reference_policy: Policy) -> None:
    made = draft(reference_policy, models=["fable", "fr-5.6"], places="se", groups=["embargoed"], scope="deny_in",
                 reason=" Export order ", reference="BIS-1", until="2026-12-31T18:00")
    assert made.problems == []
    assert made.body == {"models": ["fable", "fr-5.6"], "deny_in": ["SE", "embargoed"], "reason": "Export order",
                         "reference": "BIS-1", "until": "2026-12-31T18:00:00Z"}
    outside = draft(reference_policy, models="fable", groups="us", scope="deny_outside", reason="r")
    assert outside.body == {"models": ["fable"], "deny_outside": ["us"], "reason": "r"} and outside.problems == []


def test_an_empty_suspension_form_says_everything_missing_at_once(reference_policy: Policy) -> None:
    assert draft(reference_policy).problems == ["Choose at least one model.",
                                                "Name at least one country, region or jurisdiction group.",
                                                "Give a reason: it is recorded with the change."]


def test_unknown_names_and_values_are_named(reference_policy: Policy) -> None:
    problems = draft(reference_policy, models=["fable", "gpt-x"], groups="allies", places="SE", scope="everywhere",
                     reason="r", until="tomorrow").problems
    assert problems == ["There is no model 'gpt-x' in the policy in force.", "There is no jurisdiction group 'allies'.",
                        "Choose whether to deny in those places or outside them.",
                        "'tomorrow' is not a time; write it as 2026-12-31T18:00 (UTC)."]


def test_an_api_key_form_sends_the_hash_never_a_secret() -> None:
    digest = "AB" * 32
    made = api_key(form(org_id="org-acme", sha256=f" {digest} ", label="", reason="CI"))
    assert made.problems == [] and made.body == {"org_id": "org-acme", "sha256": digest.lower(), "label": None, "reason": "CI"}
    assert api_key(form(sha256=digest)).problems == ["Name the organization the key is for."]


def test_a_proposal_is_shown_with_its_delta_in_words_and_its_simulation() -> None:
    proposal = {
        "id": "prop-1", "kind": "suspension.lift", "target": "susp-se", "state": "open", "proposer": "ops-alice",
        "created": "2026-12-01T12:00:00.000Z", "expires_at": "2026-12-04T12:00:00+00:00", "reason": "withdrawn",
        "reference": None, "approvals": [], "approvals_needed": 1,
        "diff": {"action": "suspension.lift", "before": {"id": "susp-se"}, "after": None, "changes": None},
        "access_delta": {"kind": "loosening", "times": ["2026-12-01T12:00:00Z"], "models": ["fable"],
                         "granted": [{"model": "fable", "tier": "standard", "places": ["SE"], "at": "2026-12-01T12:00:00Z"}],
                         "removed": [], "credentials_reinstated": [], "credentials_suspended": []},
        "simulation": {"records": 10, "replayed": 8, "would_flip": {"deny_to_allow": 3, "allow_to_deny": 0},
                       "by_org": [{"org": "org-public", "deny_to_allow": 3, "allow_to_deny": 0, "examples": []}],
                       "by_country": []},
    }
    shown = proposal_view(proposal)
    assert shown.open and shown.label == "Lift a suspension" and shown.after is None
    assert (shown.created, shown.expires_at) == ("2026-12-01T12:00:00Z", "2026-12-04T12:00:00Z")
    assert '"id": "susp-se"' in shown.before
    assert shown.delta_lines[1] == "  grants fable [standard] from 2026-12-01T12:00:00Z: SE"
    assert shown.simulation["to_allow"] == 3 and shown.simulation["by_org"] == ["org-public: 3 would be allowed, 0 denied"]


def test_a_change_log_record_says_who_approved_it() -> None:
    row = history_row({"change_id": "chg-1", "time": "t", "actor": "ops-alice", "action": "suspension.lift",
                       "target": "susp-se", "access": "loosening", "proposal": "prop-1", "approved_by": ["ops-carol"]})
    assert (row.actor, row.action, row.target) == ("ops-alice", "suspension.lift", "susp-se")
    assert row.details == "loosening; proposal prop-1; approved by ops-carol"


def test_ids_are_names_as_the_policy_writes_them() -> None:
    assert valid_id("bis/2026-11+eu@x") and valid_id("prop-20261201-0a1b2c3d")
    assert not valid_id("<script>") and not valid_id("") and not valid_id("a" * 129) and not valid_id(None)
