"""The `gateway` command as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import GEOIP, REFERENCE_POLICY
from gateway.cli import main
from mmdb import write

POLICY = str(REFERENCE_POLICY)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_console_entry_point_runs() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "explain", "--policy", POLICY, "--org", "org-acme", "--model", "fr-5.6",
         "--country", "US", "--at", "2026-12-01T12:00:00Z", "--json"],
        capture_output=True, text=True, check=True,
    )
    result_json = json.loads(result.stdout)
    assert {k: result_json[k] for k in ("decision", "status", "reasons", "stage", "covered")} == {
        "decision": "allow", "status": 200, "reasons": [], "stage": "limited_partner", "covered": True}


def test_explain_readable_account(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "explain", "--policy", POLICY, "--org", "org-offshore", "--model", "frontier-5.6",
                       "--country", "US", "--at", "2026-12-01T12:00:00Z")
    assert code == 0
    assert "Decision: DENY (451) — jurisdiction_of_concern, jurisdiction_not_permitted" in out
    assert "COVERED" in out and "training_compute_flop 3e+26 >= 1e+26" in out
    assert "Stage in force: limited_partner since 2026-11-25T00:00:00Z" in out
    assert "Next: general from 2027-02-01T00:00:00Z" in out
    assert ("declared CN China is in countries_of_concern via ear_d5: "
            "15 CFR 740 Supp. 1, Country Group D:5 (US arms embargoed), as reviewed 2026-07-08") in out


def test_explain_from_an_ip(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "explain", "--policy", POLICY, "--org", "org-public", "--model", "frontier-5.6",
                       "--ip", "175.16.199.1", "--geoip-db", str(GEOIP / "GeoIP2-City-Test.mmdb"),
                       "--at", "2027-02-02T00:00:00Z", "--json")
    result = json.loads(out)
    assert (code, result["observed_country"], result["reasons"]) == (0, "CN", ["jurisdiction_of_concern"])


def test_explain_anonymizer_from_database(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "explain", "--policy", POLICY, "--org", "org-public", "--model", "frontier-5.6",
                       "--ip", "81.2.69.160", "--geoip-db", str(GEOIP / "GeoIP2-City-Test.mmdb"),
                       "--anonymous-ip-db", str(GEOIP / "GeoIP2-Anonymous-IP-Test.mmdb"),
                       "--at", "2027-02-02T00:00:00Z", "--json")
    assert json.loads(out)["reasons"] == ["anonymizer"]


@pytest.mark.parametrize("argv,words", [
    (["--country", "ZZ"], "not an ISO 3166-1"),
    (["--region", "UA43"], "not an ISO 3166-2"),
    (["--at", "yesterday"], "not an ISO 8601 time"),
    (["--ip", "1.2.3.4"], "--ip needs --geoip-db"),
])
def test_explain_usage_errors(capsys: pytest.CaptureFixture[str], argv: list[str], words: str) -> None:
    code, _, err = run(capsys, "explain", "--policy", POLICY, "--org", "org-acme", "--model", "small-2", *argv)
    assert code == 2 and words in err


def test_explain_decides_a_region_reported_under_another_country(capsys: pytest.CaptureFixture[str]) -> None:
    # Some databases file Crimea under RU: UA-43 is still Crimea, and embargoed (issue 12).
    code, out, err = run(capsys, "explain", "--policy", POLICY, "--org", "org-public", "--model", "small-2",
                         "--country", "RU", "--region", "UA-43", "--at", "2026-12-01T12:00:00Z")
    assert (code, err) == (0, "")
    assert "Decision: DENY (451) — jurisdiction_embargoed" in out
    assert "observed from UA-43 Crimea (reported in RU Russian Federation)" in out
    assert "observed UA-43 Crimea is in embargoed: OFAC comprehensive sanctions" in out


def test_explain_from_a_database_that_files_crimea_under_russia(capsys: pytest.CaptureFixture[str],
                                                                tmp_path: Path) -> None:
    db = write(tmp_path / "City.mmdb", {"198.51.100.0/24": {"country": {"iso_code": "RU"},
                                                            "subdivisions": [{"iso_code": "CR"}]}})
    code, out, _ = run(capsys, "explain", "--policy", POLICY, "--org", "org-public", "--model", "small-2",
                       "--ip", "198.51.100.7", "--geoip-db", str(db), "--at", "2026-12-01T12:00:00Z", "--json")
    result = json.loads(out)
    assert (code, result["observed_country"], result["observed_region"]) == (0, "RU", "UA-43")
    assert (result["status"], result["reasons"]) == (451, ["jurisdiction_embargoed"])


def test_validate_good_bundle(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "policy", "validate", POLICY)
    assert code == 0 and "valid, version" in out and "5 models" in out


def test_validate_reports_every_error(capsys: pytest.CaptureFixture[str], bundle_dir: Path) -> None:
    models = bundle_dir / "models.yaml"
    models.write_text(models.read_text().replace("stage: general\n        from: 2027-02-01", "stage: generally\n        from: 2027-02-01"))
    groups = bundle_dir / "jurisdictions.yaml"
    groups.write_text(groups.read_text().replace("countries: [US]", "countries: [U5]"))
    code, _, err = run(capsys, "policy", "validate", str(bundle_dir))
    assert code == 1
    assert "policy bundle refused: 2 errors" in err
    assert "models.yaml:19: models.frontier-5.6.release[2].stage:" in err
    assert "jurisdictions.yaml:5: groups.us.countries[0]: 'U5' is not an ISO 3166-1 alpha-2 code" in err


def test_validate_json(capsys: pytest.CaptureFixture[str], bundle_dir: Path) -> None:
    (bundle_dir / "framework.yaml").write_text("covered_model: {}\n")
    code, out, _ = run(capsys, "policy", "validate", str(bundle_dir), "--json")
    result = json.loads(out)
    assert code == 1 and result["valid"] is False
    assert {"file": "framework.yaml", "path": "review_window_max_days", "line": 1} .items() <= result["issues"][0].items() or any(
        i["path"] == "review_window_max_days" for i in result["issues"])


def test_explain_with_a_broken_policy_fails_clearly(capsys: pytest.CaptureFixture[str], bundle_dir: Path) -> None:
    (bundle_dir / "models.yaml").write_text("models: [\n")
    code, out, err = run(capsys, "explain", "--policy", str(bundle_dir), "--org", "o", "--model", "m")
    assert code == 1 and out == "" and "models.yaml" in err and "YAML syntax error" in err


def anonymizer_warnings(output: str) -> list[str]:
    return [line for line in output.splitlines() if "deny_anonymizers" in line and "no anonymous-IP database" in line]


@pytest.mark.parametrize("anonymous_ip_db, warned", [(None, True), (str(GEOIP / "GeoIP2-Anonymous-IP-Test.mmdb"), False)])
def test_policy_validate_with_a_config_warns_of_anonymizer_rules_nothing_enforces(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, anonymous_ip_db: str | None, warned: bool) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(json.dumps({"policy_dir": POLICY, "geoip": {"anonymous_ip_db": anonymous_ip_db}}))
    code, out, _ = run(capsys, "policy", "validate", POLICY, "--config", str(config))
    assert code == 0
    expected = ["warning: framework.yaml: rules.covered_models.deny_anonymizers: denies anonymizers, but no "
                "anonymous-IP database is configured (geoip.anonymous_ip_db): no request is known to come through "
                "an anonymizer, so this rule denies nothing"]
    assert anonymizer_warnings(out) == (expected if warned else [])
    code, out, _ = run(capsys, "policy", "validate", POLICY, "--config", str(config), "--json")
    issues = [issue for issue in json.loads(out)["issues"] if issue["path"] == "rules.covered_models.deny_anonymizers"]
    assert [(issue["file"], issue["severity"]) for issue in issues] == ([("framework.yaml", "warning")] if warned else [])


def test_policy_validate_without_a_config_cannot_know(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "policy", "validate", POLICY)
    assert code == 0 and anonymizer_warnings(out) == []


def test_policy_validate_names_a_bad_config(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text("geoip: {max_age_days: 0}\n")
    code, _, err = run(capsys, "policy", "validate", POLICY, "--config", str(config))
    assert code != 0 and "max_age_days" in err


# --------------------------------------------------------------------------- region overlay


def test_validate_warns_of_a_region_only_a_city_database_can_place(capsys: pytest.CaptureFixture[str],
                                                                   bundle_dir: Path) -> None:
    groups = bundle_dir / "jurisdictions.yaml"
    text = groups.read_text()
    groups.write_text(text.replace("regions: [UA-43,", "regions: [GE-AB, UA-43,", 1))  # Abkhazia: not in the overlay
    code, out, _ = run(capsys, "policy", "validate", str(bundle_dir))
    assert code == 0
    [warning] = [line for line in out.splitlines() if "GE-AB" in line]
    assert "jurisdictions.yaml:25:" in warning and ".regions[0]: 'GE-AB' is not in the embedded region overlay" in warning
    assert "only a GeoIP2/GeoLite2 City database (geoip.country_db) can place a caller in it" in warning
    assert "region overlay" not in out.replace(warning, "")  # the overlay's own regions draw none


def test_validate_warns_of_a_suspension_naming_such_a_region(capsys: pytest.CaptureFixture[str],
                                                             bundle_dir: Path) -> None:
    suspensions = bundle_dir / "suspensions.yaml"
    suspensions.write_text("suspensions:\n  - id: abkhazia\n    models: [small-2]\n    deny_in: [GE-AB, UA-43]\n"
                           "    reason: test\n")
    code, out, _ = run(capsys, "policy", "validate", str(bundle_dir))
    assert code == 0
    [warning] = [line for line in out.splitlines() if "region overlay" in line]
    assert "suspensions.yaml:4: suspensions[0].deny_in[0]: 'GE-AB' is not in the embedded region overlay" in warning


def test_validate_the_shipped_policy_draws_no_region_warning(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "policy", "validate", str(Path(__file__).resolve().parents[1] / "policies"))
    assert code == 0 and "region overlay" not in out


def overlay_address(region: str, version: int = 4) -> str:
    """An address the shipped overlay places in `region`."""
    import maxminddb

    from gateway.geo.region_overlay import default_region_overlay

    with maxminddb.open_database(str(default_region_overlay())) as reader:
        return next(str(n.network_address) for n, r in reader if r["region"] == region and n.version == version)


def test_geo_lookup_with_the_embedded_databases(capsys: pytest.CaptureFixture[str]) -> None:
    ip = overlay_address("UA-43")
    code, out, _ = run(capsys, "geo", "lookup", ip, "--json")
    report = json.loads(out)
    assert code == 0
    assert (report["region"], report["region_source"], report["anonymizer"]) == ("UA-43", "overlay", False)
    assert report["country"] in ("RU", "UA")
    assert [(d["role"], d["type"]) for d in report["databases"]] == [
        ("country", "DBIP-Country-Lite (GeoIP2-Country layout)"), ("region_overlay", "DBIP-Region-Overlay")]
    assert [d["built"][:10] for d in report["databases"]] == ["2026-06-01", "2026-06-05"]
    assert all("IP Geolocation by DB-IP" in notice for notice in report["attribution"])
    code, out, _ = run(capsys, "geo", "lookup", ip)
    assert code == 0
    assert "region      UA-43 Crimea (from the region overlay)" in out
    assert "region overlay" in out and "built 2026-06-05" in out and "IP Geolocation by DB-IP" in out


def test_geo_lookup_with_configured_databases(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(f"geoip: {{country_db: {GEOIP / 'GeoIP2-City-Test.mmdb'}, "
                      f"anonymous_ip_db: {GEOIP / 'GeoIP2-Anonymous-IP-Test.mmdb'}}}\n")
    code, out, _ = run(capsys, "geo", "lookup", "64:ff9b::5102:45a0", "--config", str(config), "--json")
    report = json.loads(out)
    assert code == 0
    assert {k: report[k] for k in ("looked_up", "country", "region", "region_source", "anonymizer")} == {
        "looked_up": "81.2.69.160", "country": "GB", "region": "GB-ENG", "region_source": "database",
        "anonymizer": True}
    assert report["anonymizer_flags"]
    assert [d["role"] for d in report["databases"]] == ["country", "anonymous_ip", "region_overlay"]
    assert report["databases"][0]["type"] == "GeoIP2-City"
    code, out, _ = run(capsys, "geo", "lookup", "81.2.69.160", "--config", str(config))
    assert "country     GB United Kingdom" in out
    assert "region      GB-ENG (from the country database's subdivisions)" in out
    assert "anonymizer  yes: " in out


def test_geo_lookup_with_the_overlay_turned_off(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text("geoip: {region_overlay: false}\n")
    code, out, _ = run(capsys, "geo", "lookup", overlay_address("UA-14"), "--config", str(config), "--json")
    report = json.loads(out)
    assert (code, report["region"], report["region_source"]) == (0, None, None)
    assert [d["role"] for d in report["databases"]] == ["country"]


@pytest.mark.parametrize("ip", ["not-an-ip", "10.0.0.1:443", ""])
def test_geo_lookup_refuses_what_is_not_an_address(capsys: pytest.CaptureFixture[str], ip: str) -> None:
    code, _, err = run(capsys, "geo", "lookup", ip)
    assert code == 2 and "is not an IP address" in err


def test_geo_lookup_of_a_missing_database_fails_clearly(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text("geoip: {country_db: absent.mmdb}\n")
    code, out, err = run(capsys, "geo", "lookup", "8.8.8.8", "--config", str(config))
    assert code == 1 and out == "" and "absent.mmdb" in err


def test_explain_from_an_ip_uses_the_region_overlay(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "explain", "--policy", POLICY, "--org", "org-public", "--model", "small-2",
                       "--ip", overlay_address("UA-40"), "--geoip-db", str(GEOIP / "GeoIP2-City-Test.mmdb"),
                       "--at", "2026-12-01T12:00:00Z", "--json")
    result = json.loads(out)
    assert (code, result["observed_region"], result["reasons"]) == (0, "UA-40", ["jurisdiction_embargoed"])


def test_validate_with_the_overlay_turned_off_warns_of_every_region(capsys: pytest.CaptureFixture[str],
                                                                    tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text("geoip: {region_overlay: false}\n")
    code, out, _ = run(capsys, "policy", "validate", POLICY, "--config", str(config))
    warned = [line for line in out.splitlines() if "is in no region overlay (geoip.region_overlay is false)" in line]
    assert code == 0 and [line.split(": ")[2] for line in warned] == [f"groups.embargoed.regions[{i}]"
                                                                       for i in range(4)]
