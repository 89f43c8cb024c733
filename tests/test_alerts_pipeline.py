"""Alerts through the real pipeline: a simulated day (mosquitto, collector, influxd) with rule profiles chosen in
the site configuration. The stored and published alert events are exactly those the same rules give on the
simulator's ground truth."""

from __future__ import annotations

import json
import shutil
import time

import pytest
import yaml

from collector.alerts import run_series
from collector.config import CollectorConfig
from collector.rules import SHIPPED_RULES, load_rule_file
from common.mqtt import MqttConfig
from simulator.cli import DEFAULT_SCENARIO
from simulator.messages import messages
from simulator.run import publish
from simulator.scenario import load_scenario, start_ms
from simulator.site_config import write_site_config
from simulator.truth import ground_truth
from tests.collector_harness import RunningCollector, rows, wait_for
from tests.subscriber import Recorder
from tests.test_simulator_collector import ROUNDING, collector_config

pytestmark = pytest.mark.servers

AFTERNOON = """
profile: test-afternoon
title: Rules whose firing and resolving the simulated day exercises
applies_to: the simulated site
source: {document: test rules}
rules:
  - id: pue-bin-high
    title: 15-minute PUE above 1.42 for 30 minutes
    metric: pue
    period: 15m
    comparison: ">"
    threshold: 1.42
    hold_s: 1800
    hysteresis: 0.03
    severity: warning
  - id: pue-hour-high
    title: hourly PUE above 1.40
    metric: pue
    period: 1h
    comparison: ">"
    threshold: 1.40
    hysteresis: 0.02
    severity: warning
  - id: green-bin-low
    title: 15-minute green ratio below 20 %
    metric: green_ratio
    period: 15m
    comparison: "<"
    threshold: 0.20
    hold_s: 900
    hysteresis: 0.05
    severity: info
"""


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
    rules_folder = tmp_path / "rules"
    rules_folder.mkdir()
    for name in ("wuhan-2024.yaml", "operational.yaml"):
        shutil.copy(SHIPPED_RULES / name, rules_folder)
    (rules_folder / "afternoon.yaml").write_text(AFTERNOON, encoding="utf-8")
    scenario = load_scenario(DEFAULT_SCENARIO).model_copy(update={"duration_h": 24.0, "step_s": 300})
    begin = start_ms(scenario, int(time.time() * 1000))
    truth = ground_truth(scenario, begin)
    site_yaml = write_site_config(tmp_path / "site" / "site.yaml", scenario)
    config = yaml.safe_load(site_yaml.read_text())
    config["sites"][0]["rules"] = ["wuhan-new-large", "operational", "test-afternoon"]
    site_yaml.write_text(yaml.safe_dump(config, allow_unicode=True))

    test_rules = {r.id: r for r in load_rule_file(rules_folder / "afternoon.yaml").resolved()}
    wuhan = {r.id: r for r in load_rule_file(rules_folder / "wuhan-2024.yaml").resolved()}
    bin_ends = [(b["start_ms"] + 900_000, b) for b in truth["bins"]]
    hour_ends = [(h["period"] + 3_600_000, h) for h in truth["hours"]]  # the first hour holds one bin of data
    expected = (
        run_series(test_rules["pue-bin-high"], [(t, b["pue1"]) for t, b in bin_ends])
        + run_series(test_rules["pue-hour-high"], [(t, h["pue"]) for t, h in hour_ends])
        + run_series(test_rules["green-bin-low"], [(t, b["green_ratio"]) for t, b in bin_ends])
        + run_series(wuhan["wuhan-pue-12m"], cumulative_pue(truth["bins"]))
    )
    assert {e.rule.id for e in expected} == {"pue-bin-high", "pue-hour-high", "green-bin-low", "wuhan-pue-12m"}
    assert "resolved" in {e.state for e in expected}

    collector = CollectorConfig.model_validate(
        {**collector_config(tmp_path, broker, influx, site_yaml).model_dump(), "rules": {"folder": rules_folder}})
    recorder = Recorder(MqttConfig(host="127.0.0.1", port=broker.port), "dcem/v1/alerts/#")
    running = RunningCollector(collector)
    query = f"SELECT * FROM alert WHERE time >= {begin}ms"
    try:
        publish(messages(scenario, begin), "127.0.0.1", broker.port, speed=0, max_inflight=200)
        stored = wait_for(lambda: len(rows(db, query)) >= len(expected) and rows(db, query), timeout_s=90)
        time.sleep(1.0)  # a later round must add nothing
        stored = rows(db, query)
        assert recorder.wait_until(lambda m: len(m) >= len(expected))
    finally:
        running.close()
        recorder.client.disconnect()
    information = [row for row in stored if row["rule"] == "wuhan-utilisation-12m"]
    assert [(row["state"], row["value"] < 0.60) for row in information] == [("firing", True)]  # no truth to check
    stored = [row for row in stored if row["rule"] != "wuhan-utilisation-12m"]
    got = sorted((row["rule"], row["state"], row["time"]) for row in stored)
    assert got == sorted((e.rule.id, e.state, e.t_ms) for e in expected)
    by_key = {(row["rule"], row["time"]): row for row in stored}
    for e in expected:
        row = by_key[(e.rule.id, e.t_ms)]
        assert row["value"] == pytest.approx(e.value, rel=ROUNDING, abs=0)
        assert (row["threshold"], row["severity"], row["active"]) == (e.rule.threshold, e.rule.severity, e.active)
    assert "武汉市推进算力基础设施" in by_key[("wuhan-pue-12m", expected[-1].t_ms)]["source"]
    published = [json.loads(m.payload) for m in recorder.snapshot()]
    published = [p for p in published if p["rule"] != "wuhan-utilisation-12m"]
    assert sorted((p["rule"], p["state"], p["ts_ms"]) for p in published) == got
