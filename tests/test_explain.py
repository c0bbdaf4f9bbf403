"""Explanations that cite their legal source: `gateway explain`, `gateway audit
explain` and the provenance of a place in a jurisdiction group (issue 13).
The admin API's side is in test_admin.py and test_admin_cli.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from conftest import REFERENCE_POLICY
from test_cli import run
from gateway.policy import countries
from gateway.policy.load import load_bundle
from gateway.policy.provenance import provenance

SHIPPED = str(Path(__file__).parent.parent / "policies")
AT = "2026-12-03T12:00:00Z"
D5 = "EAR, 15 CFR Part 740 Supplement No. 1, Country Group D:5 (US arms embargoed countries)"


def explain(capsys: pytest.CaptureFixture[str], *argv: str, policy: str = SHIPPED,
            at: str = AT) -> tuple[str, dict[str, Any]]:
    """The readable account and the JSON one of the same facts."""
    argv = ("explain", "--policy", policy, "--at", at, *argv)
    code, text, err = run(capsys, *argv)
    assert (code, err) == (0, "")
    code, out, err = run(capsys, *argv, "--json")
    assert (code, err) == (0, "")
    return text, json.loads(out)


class TestLegalSource:
    def test_a_country_cites_the_list_it_came_through(self, capsys: pytest.CaptureFixture[str]) -> None:
        text, account = explain(capsys, "--org", "org-partner-jp", "--model", "example-frontier-1", "--country", "CN")
        assert account["reasons"] == ["jurisdiction_of_concern"]
        assert (f"jurisdiction_of_concern: covered_models.deny_jurisdictions (observed CN China is in "
                f"countries_of_concern via ear_d5: {D5}, checked 2026-07-08)") in text
        [match] = account["matches"]
        assert {k: match[k] for k in ("group", "place", "place_name", "via", "chain", "source", "as_of")} == {
            "group": "countries_of_concern", "place": "CN", "place_name": "China", "via": "ear_d5",
            "chain": ["countries_of_concern", "ear_d5"], "source": D5, "as_of": "2026-07-08"}

    def test_a_place_the_group_lists_itself_cites_the_group(self, capsys: pytest.CaptureFixture[str]) -> None:
        text, account = explain(capsys, "--org", "org-partner-jp", "--model", "example-frontier-1", "--country", "MO")
        [match] = account["matches"]
        assert (match["via"], match["chain"]) == ("countries_of_concern", ["countries_of_concern"])
        assert match["source"].startswith("Policy group: EAR Country Groups D:5 + E:1 + E:2, plus Macau")
        assert "observed MO Macao is in countries_of_concern: Policy group:" in text

    def test_a_region_is_named_beside_its_code(self, capsys: pytest.CaptureFixture[str]) -> None:
        # Reported under RU, as some databases file Crimea: still Crimea, still OFAC's.
        text, account = explain(capsys, "--org", "org-developer-us", "--model", "example-small-1",
                                "--country", "RU", "--region", "UA-43")
        assert "observed from UA-43 Crimea (reported in RU Russian Federation)." in text
        assert "(observed UA-43 Crimea is in embargoed via ofac_comprehensive: OFAC comprehensive sanctions" in text
        assert "Crimea region of Ukraine (EO 13685)" in text
        [match] = account["matches"]
        assert (match["place"], match["place_name"], match["via"]) == ("UA-43", "Crimea", "ofac_comprehensive")
        assert account["place_names"] == {"RU": "Russian Federation", "UA-43": "Crimea", "US": "United States"}

    def test_a_list_without_a_date_is_cited_without_one(self, capsys: pytest.CaptureFixture[str]) -> None:
        text, account = explain(capsys, "--org", "org-public", "--model", "small-2", "--country", "CU",
                                policy=str(REFERENCE_POLICY))
        assert account["matches"][0]["as_of"] is None
        assert "CU Cuba is in embargoed: OFAC comprehensive sanctions: Cuba, Iran, North Korea; Crimea, " \
               "Sevastopol, Donetsk, Luhansk)" in text


class TestConcealed:
    def test_a_404_for_a_known_model_says_it_is_concealed(self, capsys: pytest.CaptureFixture[str]) -> None:
        # example-frontier-3 is internal: the stage admits no tier.
        text, account = explain(capsys, "--org", "org-developer-us", "--model", "example-frontier-3",
                                "--country", "US")
        assert (account["status"], account["concealed"]) == (404, True)
        assert "The model example-frontier-3 is concealed from this caller: it is answered 404" in text

    def test_an_unknown_model_is_not_concealed_but_unknown(self, capsys: pytest.CaptureFixture[str]) -> None:
        text, account = explain(capsys, "--org", "org-developer-us", "--model", "example-nope", "--country", "US")
        assert (account["status"], account["concealed"]) == (404, False)
        assert "concealed" not in text and "Model 'example-nope' is not in the policy" in text

    def test_a_403_is_not_concealment(self, capsys: pytest.CaptureFixture[str]) -> None:
        _, account = explain(capsys, "--org", "org-suspended", "--model", "example-small-1", "--country", "US")
        assert (account["status"], account["concealed"]) == (403, False)


class TestUnknownOrganization:
    def test_an_unknown_org_is_said_plainly_with_near_names(self, capsys: pytest.CaptureFixture[str]) -> None:
        text, account = explain(capsys, "--org", "org-typo", "--model", "fable", "--country", "US",
                                policy=str(REFERENCE_POLICY))
        assert ("Organization 'org-typo' is not in the policy, so every request it makes is denied (org_unknown). "
                "Did you mean org-kyoto?") in text
        assert (account["organization"], account["org_suggestions"]) == (None, ["org-kyoto"])

    def test_several_near_names_nearest_first(self, capsys: pytest.CaptureFixture[str]) -> None:
        text, account = explain(capsys, "--org", "org-partner-j", "--model", "example-small-1", "--country", "US")
        assert account["org_suggestions"][0] == "org-partner-jp"
        assert "Did you mean org-partner-jp, " in text

    def test_no_near_name_is_said_too(self, capsys: pytest.CaptureFixture[str]) -> None:
        text, account = explain(capsys, "--org", "org-typo", "--model", "example-small-1", "--country", "US")
        assert account["org_suggestions"] == []
        assert "'org-typo' is not in the policy" in text and "No organization in the policy has a similar id." in text

    def test_a_known_org_is_described(self, capsys: pytest.CaptureFixture[str]) -> None:
        text, account = explain(capsys, "--org", "org-lapsed-partner", "--model", "example-small-1", "--country", "US")
        assert account["organization"] | {"name": None} == {
            "id": "org-lapsed-partner", "name": None, "country": "US", "tier": "vetted_partner",
            "effective_tier": "standard", "vetted_until": "2026-10-31", "lapsed": True, "status": "active",
            "status_reason": None}
        assert "declared country US United States, tier vetted_partner, vetted until 2026-10-31 — lapsed" in text


class TestAuditExplain:
    def record(self, tmp_path: Path, **fields: Any) -> Path:
        base = {"time": "2026-12-01T12:00:00.000000Z", "decision_id": "d-1", "method": "POST",
                "path": "/v1/chat/completions", "org": "org-partner-jp", "observed_country": "CN",
                "observed_region": None, "anonymizer": False, "requested_model": "example-frontier-1",
                "decision": "deny", "status": 451, "reasons": ["jurisdiction_of_concern"],
                "policy_version": load_bundle(SHIPPED).policy.version}
        path = tmp_path / "audit.jsonl"
        lines = [json.dumps(base | {"decision_id": "other"}), "not json", json.dumps(base | fields)]
        path.write_text("\n".join(lines) + "\n")
        return path

    def test_a_recorded_decision_is_explained_as_explain_would(self, capsys: pytest.CaptureFixture[str],
                                                                tmp_path: Path) -> None:
        audit = str(self.record(tmp_path))
        code, text, _ = run(capsys, "audit", "explain", "d-1", "--audit", audit, "--policy", SHIPPED)
        assert code == 0
        assert text.startswith("Recorded decision d-1 at 2026-12-01T12:00:00.000000Z: deny (451) — "
                               "jurisdiction_of_concern, under policy ")
        assert f"(observed CN China is in countries_of_concern via ear_d5: {D5}, checked 2026-07-08)" in text
        code, out, _ = run(capsys, "audit", "explain", "d-1", "--audit", audit, "--policy", SHIPPED, "--json")
        account = json.loads(out)
        assert account.pop("recorded") | {"policy_version": None} == {
            "decision_id": "d-1", "time": "2026-12-01T12:00:00.000000Z", "decision": "deny", "status": 451,
            "reasons": ["jurisdiction_of_concern"], "policy_version": None, "same_policy": True,
            "same_reasons": True}
        _, direct = explain(capsys, "--org", "org-partner-jp", "--model", "example-frontier-1", "--country", "CN",
                            at="2026-12-01T12:00:00Z")
        assert account == direct

    def test_another_bundle_is_said_to_differ(self, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
        audit = str(self.record(tmp_path, policy_version="0123456789abcdef"))
        code, text, _ = run(capsys, "audit", "explain", "d-1", "--audit", audit, "--policy", SHIPPED)
        assert code == 0 and "not the recorded one: the account below may differ" in text

    @pytest.mark.parametrize("fields,words", [
        ({"decision_id": "d-2"}, "decision d-1 is not in"),
        ({"org": None, "reasons": ["credential_missing"], "status": 401}, "never identified as an organization's "
                                                                          "(credential_missing, status 401)"),
        ({"requested_model": None, "path": "/v1/models"}, "named no model"),
        ({"time": "yesterday"}, "not an ISO 8601 time"),
        ({"observed_country": 7}, "observed place is malformed"),
    ])
    def test_a_record_without_a_model_decision_is_refused_plainly(self, capsys: pytest.CaptureFixture[str],
                                                                  tmp_path: Path, fields: dict[str, Any],
                                                                  words: str) -> None:
        audit = str(self.record(tmp_path, **fields))
        code, out, err = run(capsys, "audit", "explain", "d-1", "--audit", audit, "--policy", SHIPPED)
        assert (code, out) == (1, "") and words in err

    def test_a_missing_file_is_a_usage_error(self, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
        code, _, err = run(capsys, "audit", "explain", "d-1", "--audit", str(tmp_path / "nope"), "--policy", SHIPPED)
        assert code == 2 and "is not a file" in err


class TestProvenance:
    def bundle(self, tmp_path: Path, groups: str) -> Path:
        for source in REFERENCE_POLICY.glob("*.yaml"):
            (tmp_path / source.name).write_text(source.read_text())
        original = (tmp_path / "jurisdictions.yaml").read_text()
        (tmp_path / "jurisdictions.yaml").write_text(original + groups)
        return tmp_path

    def test_a_place_is_traced_through_nested_includes_in_listing_order(self, tmp_path: Path) -> None:
        policy = load_bundle(self.bundle(tmp_path, """
  outer:
    include: [middle, ear_e1]
    source: "Outer policy group"
  middle:
    include: [ear_d5]
    regions: [UA-23]
    source: "Middle group"
    as_of: 2026-01-02
""")).policy
        found = provenance(policy, "outer", "IR")  # in ear_d5 (through middle) and in ear_e1: the first listed
        assert found is not None and (found.chain, found.via) == (("outer", "middle", "ear_d5"), "ear_d5")
        assert found.source is not None and found.source.startswith("15 CFR 740 Supp. 1, Country Group D:5")
        region = provenance(policy, "outer", "UA-23")
        assert region is not None and (region.via, region.as_of) == ("middle", "2026-01-02")
        assert provenance(policy, "outer", "JP") is None
        assert provenance(policy, "no-such-group", "IR") is None


def test_every_country_code_has_a_name() -> None:
    assert set(countries.NAMES) == countries.ALPHA2
    # Never inverted ("Congo, The Democratic Republic of the"): a name reads in a sentence.
    assert not [name for name in countries.NAMES.values() if name.endswith((" of", " of the", ", British", ", U.S."))]


@pytest.mark.parametrize("code,label", [
    ("UA-43", "UA-43 Crimea"), ("UA-40", "UA-40 Sevastopol"), ("UA-14", "UA-14 Donetsk"), ("UA-09", "UA-09 Luhansk"),
    ("UA-23", "UA-23 Zaporizhzhia"), ("UA-65", "UA-65 Kherson"), ("CN", "CN China"), ("IR", "IR Iran"),
    ("KP", "KP North Korea"), ("XK", "XK Kosovo"), ("UA-30", "UA-30"),
])
def test_places_are_labelled_with_their_names(code: str, label: str) -> None:
    assert countries.label(code) == label


def test_every_region_a_shipped_policy_names_has_a_name() -> None:
    groups = load_bundle(SHIPPED).policy.documents["jurisdictions.yaml"]["groups"]
    regions = {code for group in groups.values() for code in group.get("regions", [])}
    assert regions and all(countries.name_of(code) for code in regions)
