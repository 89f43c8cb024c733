"""Rule evaluation (collector/alerts.py) over metric series built by hand: hold time, hysteresis, no data."""

from __future__ import annotations

import pytest

from collector.alerts import OK, AlertState, cleared, holds, run_series, step
from collector.rules import Rule

MIN = 60_000


def rule(**overrides) -> Rule:
    fields = dict(id="pue-high", title="PUE above 1.25", metric="pue", period="1h", comparison=">",
                  threshold=1.25, hold_s=0, hysteresis=0.0, severity="critical")
    return Rule(**{**fields, **overrides})


def states(events) -> list[tuple[str, int, float | None]]:
    return [(e.state, e.t_ms, e.value) for e in events]


@pytest.mark.parametrize("comparison, value, expected", [
    (">", 1.26, True), (">", 1.25, False), (">=", 1.25, True), (">=", 1.2499, False),
    ("<", 0.79, True), ("<", 0.80, False), ("<=", 0.80, True), ("<=", 0.8001, False),
    (">", None, False), ("<", None, False), ("missing", None, True), ("missing", 1.3, False),
])
def test_condition_table(comparison, value, expected):
    threshold = None if comparison == "missing" else (0.80 if "<" in comparison else 1.25)
    assert holds(rule(comparison=comparison, threshold=threshold), value) is expected


@pytest.mark.parametrize("comparison, threshold, hysteresis, value, expected", [
    (">", 1.25, 0.01, 1.245, False), (">", 1.25, 0.01, 1.24, True), (">", 1.25, 0.0, 1.25, True),
    (">=", 1.25, 0.0, 1.25, False), ("<", 0.8, 0.02, 0.81, False), ("<", 0.8, 0.02, 0.83, True),
    ("<=", 0.8, 0.0, 0.8, False), ("<=", 0.8, 0.0, 0.8001, True),
    (">", 1.25, 0.01, None, False), ("missing", None, 0.0, 1.4, True), ("missing", None, 0.0, None, False),
])
def test_clear_table(comparison, threshold, hysteresis, value, expected):
    assert cleared(rule(comparison=comparison, threshold=threshold, hysteresis=hysteresis), value) is expected


def test_fires_only_after_the_hold_time():
    r = rule(hold_s=30 * 60)
    series = [(0, 1.3), (15 * MIN, 1.3), (29 * MIN, 1.3), (30 * MIN, 1.3), (45 * MIN, 1.3)]
    assert states(run_series(r, series)) == [("firing", 30 * MIN, 1.3)]
    assert run_series(r, series[:3]) == []  # 29 minutes is not 30


def test_a_break_restarts_the_hold():
    r = rule(hold_s=30 * 60)
    series = [(0, 1.3), (15 * MIN, 1.2), (30 * MIN, 1.3), (45 * MIN, 1.3), (60 * MIN, 1.3)]
    events = run_series(r, series)
    assert states(events) == [("firing", 60 * MIN, 1.3)]
    assert events[0].since_ms == 60 * MIN


def test_hold_zero_fires_on_the_first_breach():
    assert states(run_series(rule(), [(0, 1.2), (MIN, 1.26)])) == [("firing", MIN, 1.26)]


def test_pue_hovering_at_the_threshold_fires_once_and_resolves_with_hysteresis():
    r = rule(hysteresis=0.01)
    series = [(0, 1.24), (1, 1.251), (2, 1.249), (3, 1.252), (4, 1.2450), (5, 1.2501), (6, 1.2400), (7, 1.239)]
    assert states(run_series(r, series)) == [("firing", 1, 1.251), ("resolved", 6, 1.24)]


def test_without_hysteresis_hovering_flaps():
    series = [(0, 1.251), (1, 1.249), (2, 1.252)]
    assert [e.state for e in run_series(rule(), series)] == ["firing", "resolved", "firing"]


def test_no_data_breaks_a_pending_hold_but_keeps_a_firing_alert():
    r = rule(hold_s=15 * 60)
    pending_then_gap = [(0, 1.3), (10 * MIN, None), (15 * MIN, 1.3), (25 * MIN, 1.3)]
    assert run_series(r, pending_then_gap) == []
    firing_then_gap = [(0, 1.3), (15 * MIN, 1.3), (30 * MIN, None), (45 * MIN, None), (60 * MIN, 1.2)]
    assert states(run_series(r, firing_then_gap)) == [("firing", 15 * MIN, 1.3), ("resolved", 60 * MIN, 1.2)]


def test_missing_rule_fires_on_absent_values_and_resolves_when_data_returns():
    r = rule(id="pue-missing", comparison="missing", threshold=None, hold_s=30 * 60, period="15m")
    series = [(0, 1.4), (15 * MIN, None), (30 * MIN, None), (45 * MIN, None), (60 * MIN, 1.4)]
    assert states(run_series(r, series)) == [("firing", 45 * MIN, None), ("resolved", 60 * MIN, 1.4)]


def test_below_rule_with_hysteresis():
    r = rule(id="green-low", metric="green_ratio", period="12m", comparison="<=", threshold=0.80, hysteresis=0.01)
    series = [(0, 0.85), (1, 0.80), (2, 0.805), (3, 0.81), (4, 0.811)]
    assert states(run_series(r, series)) == [("firing", 1, 0.80), ("resolved", 4, 0.811)]


def test_step_returns_the_pending_state_with_its_start():
    r = rule(hold_s=3600)
    state, change = step(r, OK, 1000, 1.3)
    assert (state, change) == (AlertState("pending", 1000), None)
    assert step(r, state, 1000 + 3_600_000, 1.3) == (AlertState("firing", 3_601_000), "firing")


def test_series_of_several_sites_are_independent():
    r = rule(hold_s=15 * 60)
    site_a = [(0, 1.3), (15 * MIN, 1.3)]
    site_b = [(0, 1.3), (15 * MIN, 1.2)]
    assert [(e.site, e.state) for e in run_series(r, site_a, "a") + run_series(r, site_b, "b")] == [("a", "firing")]
