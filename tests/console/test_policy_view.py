"""The Policy page's rows: groups as written with their sources, organizations with the
vetting that lapses soon named, soonest first."""

from __future__ import annotations

from dataclasses import replace
from datetime import date

from conftest import at
from gateway.console.policy_view import group_rows, lapsing, org_rows, vetting_of
from gateway.policy.snapshot import Policy

NOW = at("2026-12-01T12:00:00Z").timestamp()
DAY = 86_400


def test_vetting_lapsing_within_30_days_counts_whole_days_left(reference_policy: Policy) -> None:
    org = reference_policy.organizations["org-expiring"]  # vetted through 2026-12-15
    assert vetting_of(org, NOW) == ("lapsing", 14)
    assert vetting_of(org, org.lapses_at - 1) == ("lapsing", 0)  # its last second: lapses today
    assert vetting_of(org, org.lapses_at) == ("lapsed", None)
    assert vetting_of(org, org.lapses_at - 30 * DAY) == ("current", 30)
    assert vetting_of(org, org.lapses_at - 30 * DAY + 1) == ("lapsing", 29)
    assert vetting_of(reference_policy.organizations["org-caisi"], NOW) == ("not vetted", None)


def test_the_lapsing_note_is_in_words(reference_policy: Policy) -> None:
    [row] = lapsing(reference_policy, NOW)
    assert row.id == "org-expiring" and row.note == "Vetting lapses in 14 days"
    [lapsed] = [r for r in org_rows(reference_policy, NOW)[0] if r.id == "org-lapsed"]
    assert lapsed.note == "Vetting lapsed: counts as standard" and lapsed.effective_tier == "standard"
    one_day = reference_policy.organizations["org-expiring"].lapses_at - DAY - 1
    assert lapsing(reference_policy, one_day)[0].note == "Vetting lapses in 1 day"


def test_organizations_lapsing_first_then_filtered_and_bounded(reference_policy: Policy) -> None:
    rows, matched = org_rows(reference_policy, NOW)
    assert [r.id for r in rows[:2]] == ["org-expiring", "org-lapsed"] and matched == len(reference_policy.organizations)
    rows, matched = org_rows(reference_policy, NOW, "KYOTO")
    assert [r.id for r in rows] == ["org-kyoto"] and matched == 1
    rows, matched = org_rows(reference_policy, NOW, "", limit=3)
    assert len(rows) == 3 and matched == len(reference_policy.organizations)


def test_many_lapsing_organizations_soonest_first(reference_policy: Policy) -> None:
    acme = reference_policy.organizations["org-acme"]
    soon = replace(acme, id="org-soon", vetted_until=date(2026, 12, 3), lapses_at=at("2026-12-04T00:00:00Z").timestamp())
    policy = replace(reference_policy, organizations={**reference_policy.organizations, "org-soon": soon})
    assert [r.id for r in lapsing(policy, NOW)] == ["org-soon", "org-expiring"]


def test_groups_as_written_with_their_sources_and_expanded_size(reference_policy: Policy) -> None:
    rows = {row.name: row for row in group_rows(reference_policy)}
    concern = rows["countries_of_concern"]
    assert concern.includes == ("ear_d5", "ear_e1", "ear_e2")
    assert concern.source == "D:5 + E:1 + E:2, plus Macau (AI Diffusion IFR Tier 3)"
    assert concern.members == len(reference_policy.groups["countries_of_concern"].countries) \
        + len(reference_policy.groups["countries_of_concern"].regions)
    assert concern.countries == ("MO Macao",)  # its own listing, named; the rest come through its includes
    assert rows["embargoed"].regions[0] == "UA-43 Crimea"
