"""The release timeline's geometry: stages side by side on one axis, today's line where
today is, suspensions as bars over the time they are in force."""

from __future__ import annotations

from dataclasses import replace

import pytest

from conftest import at
from gateway.console.timeline_view import MAX_TICKS, WIDTH, axis, timeline
from gateway.policy.snapshot import Policy, Suspension, merge, place_member

NOW = at("2026-12-01T12:00:00Z").timestamp()


def suspension(id_: str, starts: str | None = None, ends: str | None = None, scope: str = "deny_in") -> Suspension:
    return Suspension(id_, frozenset({"fable"}), scope, merge(("SE",), [place_member("SE")]),
                      at(starts).timestamp() if starts else None, at(ends).timestamp() if ends else None,
                      "a reason", None, "enforce")


def test_stages_are_contiguous_bands_and_the_last_runs_to_the_axis_end(reference_policy: Policy) -> None:
    drawn = timeline(reference_policy.models["frontier-5.6"], NOW)
    assert [b.stage for b in drawn.bands] == ["government_review", "limited_partner", "general"]
    assert [b.status for b in drawn.bands] == ["past", "in_force", "upcoming"]
    for band, following in zip(drawn.bands, drawn.bands[1:]):
        assert band.x + band.width == pytest.approx(following.x, abs=0.2)
    last = drawn.bands[-1]
    assert last.until is None and last.x + last.width == pytest.approx(WIDTH, abs=0.2)
    assert drawn.bands[0].x > 0  # padded: the first stage's start is not on the frame
    assert (drawn.bands[1].starts, drawn.bands[1].until) == ("2026-11-25", "2027-02-01")
    assert drawn.stage_now == "limited_partner"


def test_todays_line_is_where_today_is_on_the_axis(reference_policy: Policy) -> None:
    drawn = timeline(reference_policy.models["frontier-5.6"], NOW)
    in_force = drawn.bands[1]
    assert in_force.x < drawn.today_x < in_force.x + in_force.width
    # Proportional: 6.5 days into a 68-day stage.
    assert (drawn.today_x - in_force.x) / in_force.width == pytest.approx(6.5 / 68, abs=0.01)


def test_an_unreleased_model_shows_today_before_its_first_stage(reference_policy: Policy) -> None:
    drawn = timeline(reference_policy.models["nextgen-7"], NOW)
    assert drawn.stage_now is None
    assert 0 < drawn.today_x < drawn.bands[0].x
    assert all(b.status == "upcoming" for b in drawn.bands)


def test_a_suspension_in_force_until_lifted_spans_today_to_the_axis_end(reference_policy: Policy) -> None:
    fable = replace(reference_policy.models["fable"], suspensions=(suspension("now-on"),))
    drawn = timeline(fable, NOW)
    [bar] = drawn.suspensions
    assert bar.status == "in_force" and bar.scope == "deny in SE" and (bar.starts, bar.until) == (None, None)
    assert bar.x == 0 and bar.x + bar.width == pytest.approx(WIDTH)
    assert drawn.suspended_now == (bar,)


def test_suspensions_ended_and_upcoming_are_drawn_over_their_own_time(reference_policy: Policy) -> None:
    ended = suspension("ended", "2026-11-03T00:00:00Z", "2026-11-21T00:00:00Z", scope="deny_outside")
    later = suspension("later", "2027-03-01T00:00:00Z", "2027-04-01T00:00:00Z")
    drawn = timeline(replace(reference_policy.models["fable"], suspensions=(ended, later)), NOW)
    first, second = drawn.suspensions
    assert (first.status, second.status) == ("ended", "upcoming") and drawn.suspended_now == ()
    assert first.scope == "deny outside SE"
    assert first.x + first.width < drawn.today_x < second.x
    # The axis grew to hold the later suspension, so it ends before the frame does.
    assert second.x + second.width < WIDTH
    _, end = axis(replace(reference_policy.models["fable"], suspensions=(later,)), NOW)
    assert end > at("2027-04-01T00:00:00Z").timestamp()


def test_ticks_are_month_starts_in_order_and_never_crowd_the_axis(reference_policy: Policy) -> None:
    for model in reference_policy.models.values():
        drawn = timeline(model, NOW)
        xs = [t.x for t in drawn.ticks]
        assert 1 <= len(xs) <= MAX_TICKS, model.id
        assert xs == sorted(xs) and all(0 <= x <= WIDTH for x in xs)
    small = timeline(reference_policy.models["small-2"], NOW)  # 2025-01 to now: thinned to MAX_TICKS at most
    assert small.ticks[0].label.endswith("2024") or small.ticks[0].label.endswith("2025")


def test_a_single_stage_starting_now_still_has_an_axis(reference_policy: Policy) -> None:
    small = reference_policy.models["small-2"]
    starts = small.stage_starts[0]
    drawn = timeline(small, starts)
    assert drawn.end - drawn.start > 0
    assert drawn.today_x == drawn.bands[0].x
