"""A simulated day through the real pipeline (mosquitto, collector, influxd) with rule profiles chosen in the
site configuration: the setup the alert and Grafana server tests share."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from collector.config import CollectorConfig
from collector.rules import SHIPPED_RULES
from simulator.cli import DEFAULT_SCENARIO
from simulator.messages import messages
from simulator.run import publish
from simulator.scenario import Scenario, load_scenario, start_ms
from simulator.site_config import write_site_config
from simulator.truth import ground_truth
from tests.collector_harness import RunningCollector, wait_for
from tests.test_simulator_collector import collector_config

# A test profile whose firing and resolving the simulated day exercises
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


@dataclass(frozen=True)
class SimulatedDay:
    scenario: Scenario
    begin: int  # the first simulated instant (UTC epoch ms)
    truth: dict  # simulator.truth.ground_truth
    rules_folder: Path
    collector: CollectorConfig


def simulated_day(tmp_path: Path, broker, influx, shipped: Iterable[str], extra: Mapping[str, str],
                  profiles: list[str]) -> SimulatedDay:
    """The default scenario over 24 h in 5-minute steps, ending now; a rules folder with the `shipped` rule files
    and the `extra` ones (file name -> YAML); the site selects `profiles`."""
    rules_folder = tmp_path / "rules"
    rules_folder.mkdir()
    for name in shipped:
        shutil.copy(SHIPPED_RULES / name, rules_folder)
    for name, text in extra.items():
        (rules_folder / name).write_text(text, encoding="utf-8")
    scenario = load_scenario(DEFAULT_SCENARIO).model_copy(update={"duration_h": 24.0, "step_s": 300})
    begin = start_ms(scenario, int(time.time() * 1000))
    site_yaml = write_site_config(tmp_path / "site" / "site.yaml", scenario)
    config = yaml.safe_load(site_yaml.read_text())
    config["sites"][0]["rules"] = profiles
    site_yaml.write_text(yaml.safe_dump(config, allow_unicode=True))
    collector = CollectorConfig.model_validate(
        {**collector_config(tmp_path, broker, influx, site_yaml).model_dump(), "rules": {"folder": rules_folder}})
    return SimulatedDay(scenario, begin, ground_truth(scenario, begin), rules_folder, collector)


def run_day(day: SimulatedDay, port: int, done: Callable[[], object], timeout_s: float = 90):
    """Run the collector, publish the day at full speed, wait until `done()` holds, give the collector one more
    metrics round (it must add nothing), stop it; returns `done()`'s last value."""
    running = RunningCollector(day.collector)
    try:
        publish(messages(day.scenario, day.begin), "127.0.0.1", port, speed=0, max_inflight=200)
        result = wait_for(done, timeout_s=timeout_s)
        time.sleep(1.0)
        return result
    finally:
        running.close()
