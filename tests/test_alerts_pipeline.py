"""Alerts through the real pipeline: a simulated day (mosquitto, collector, influxd) with rule profiles chosen in
the site configuration. The stored and published alert events are exactly those the same rules give on the
simulator's ground truth."""

from __future__ import annotations

import json

import pytest

from collector.alerts import run_series
from collector.rules import load_rule_file
from common.mqtt import MqttConfig
from tests.collector_harness import rows
from tests.simulated_day import AFTERNOON, run_day, simulated_day
from tests.subscriber import Recorder
from tests.test_simulator_collector import ROUNDING

INFORMATION_RULE = "wuhan-utilisation-12m"  # an information rule: no ground truth to compare its value with

pytestmark = pytest.mark.servers


def cumulative_pue(bins: list[dict]) -> list[tuple[int, float]]:
    """The trailing-12-month PUE at each bin end of a day: the run so far (PUE1, as the collector reports)."""
    series, facility, it = [], 0.0, 0.0
    for b in bins:
        facility += b["e_facility_kwh"]
        it += b["e_ups_output_kwh"]
        series.append((b["start_ms"] + 900_000, facility / it))
    return series


def test_alert_events_equal_those_of_the_ground_truth(tmp_path, servers):
    broker, influx, db = servers
    day = simulated_day(tmp_path, broker, influx, ("wuhan-2024.yaml", "operational.yaml"),
                        {"afternoon.yaml": AFTERNOON}, ["wuhan-new-large", "operational", "test-afternoon"])
    rules_folder, begin, truth = day.rules_folder, day.begin, day.truth

    test_rules = {r.id: r for r in load_rule_file(rules_folder / "afternoon.yaml").resolved()}
    wuhan = {r.id: r for r in load_rule_file(rules_folder / "wuhan-2024.yaml").resolved()}
    bin_ends = [(b["start_ms"] + 900_000, b) for b in truth["bins"]]
    # the first hour may hold a single bin of data; the last one, unless the day ends on the hour, ends after the
    # data does, and the collector evaluates a period only once the data has passed its end
    day_end = begin + day.scenario.duration_ms
    hour_ends = [(h["period"] + 3_600_000, h) for h in truth["hours"] if h["period"] + 3_600_000 <= day_end]
    expected = (
        run_series(test_rules["pue-bin-high"], [(t, b["pue1"]) for t, b in bin_ends])
        + run_series(test_rules["pue-hour-high"], [(t, h["pue"]) for t, h in hour_ends])
        + run_series(test_rules["green-bin-low"], [(t, b["green_ratio"]) for t, b in bin_ends])
        + run_series(wuhan["wuhan-pue-12m"], cumulative_pue(truth["bins"]))
    )
    assert {e.rule.id for e in expected} == {"pue-bin-high", "pue-hour-high", "green-bin-low", "wuhan-pue-12m"}
    assert "resolved" in {e.state for e in expected}

    recorder = Recorder(MqttConfig(host="127.0.0.1", port=broker.port), "dcem/v1/alerts/#")
    query = f"SELECT * FROM alert WHERE time >= {begin}ms"

    def policy_events(found: list[dict]) -> list[dict]:
        return [event for event in found if event["rule"] != INFORMATION_RULE]

    def published() -> list[dict]:
        return policy_events([json.loads(m.payload) for m in recorder.snapshot()])

    try:  # the information rule's event is not counted: it could end the wait one policy event early
        assert run_day(day, broker.port, lambda: len(policy_events(rows(db, query))) >= len(expected)
                       and len(published()) >= len(expected))
        found = rows(db, query)  # after a later round, which must have added nothing
    finally:
        recorder.client.disconnect()
    stored = policy_events(found)
    information = [row for row in found if row["rule"] == INFORMATION_RULE]
    assert [(row["state"], row["value"] < 0.60) for row in information] == [("firing", True)]  # no truth to check
    got = sorted((row["rule"], row["state"], row["time"]) for row in stored)
    assert got == sorted((e.rule.id, e.state, e.t_ms) for e in expected)
    by_key = {(row["rule"], row["time"]): row for row in stored}
    for e in expected:
        row = by_key[(e.rule.id, e.t_ms)]
        assert row["value"] == pytest.approx(e.value, rel=ROUNDING, abs=0)
        assert (row["threshold"], row["severity"], row["active"]) == (e.rule.threshold, e.rule.severity, e.active)
    assert "武汉市推进算力基础设施" in by_key[("wuhan-pue-12m", expected[-1].t_ms)]["source"]
    assert sorted((p["rule"], p["state"], p["ts_ms"]) for p in published()) == got
