"""A simulated day through the real collector (mosquitto, influxd): every stored 15-minute and hourly PUE,
green ratio, CUE and energy equals the simulator's ground truth to floating-point rounding.

The site has a UPS output meter, so the collector reports PUE1 (IT from that meter); the simulator's UPS output
is the hosts' summed server input, so PUE1 also equals the estimated PUE, and the hosts' energy per rack adds
up to the truth's E_IT.
"""

from __future__ import annotations

import time

import pytest

from collector.config import CollectorConfig
from simulator.cli import DEFAULT_SCENARIO
from simulator.messages import messages
from simulator.run import publish
from simulator.scenario import load_scenario, start_ms
from simulator.site_config import write_site_config
from simulator.truth import ground_truth
from tests.collector_harness import RunningCollector, rows, wait_for

pytestmark = pytest.mark.servers

ROUNDING = 1e-9


def collector_config(tmp_path, broker, influx, site_yaml) -> CollectorConfig:
    return CollectorConfig.model_validate({
        "site_config": str(site_yaml),
        "mqtt": {"host": "127.0.0.1", "port": broker.port},
        "influx": {"api": "v1", "url": influx.url, "database": "dcem"},
        "state": {"folder": str(tmp_path / "state")},
        "ingest": {"flush_interval_s": 0.05},
        "report": {"metrics_interval_s": 0.5},
    })


def assert_stored_bins_equal(found: list[dict], truth: dict[int, dict]) -> None:
    """Every stored 15-minute site_metrics row equals its truth bin (by start ms): PUE1 with full coverage, E_IT
    (the UPS output meter), green ratio, E_facility, green energy and CUE."""
    assert sorted(row["time"] for row in found) == sorted(truth)
    for row in found:
        expected = truth[row["time"]]
        assert row["pue_category"] == "PUE1" and row["coverage"] == 1
        assert row["pue"] == pytest.approx(expected["pue1"], rel=ROUNDING, abs=0)
        assert row["e_it_kwh"] == pytest.approx(expected["e_ups_output_kwh"], rel=ROUNDING, abs=0)
        for field in ("green_ratio", "e_facility_kwh", "green_kwh", "cue_location", "cue_market"):
            assert row[field] == pytest.approx(expected[field], rel=ROUNDING, abs=0), field


def test_stored_15_minute_metrics_equal_the_ground_truth(tmp_path, servers):
    broker, influx, db = servers
    scenario = load_scenario(DEFAULT_SCENARIO).model_copy(update={"duration_h": 24.0, "step_s": 300})
    begin = start_ms(scenario, int(time.time() * 1000))
    whole_truth = ground_truth(scenario, begin)
    truth = {b["start_ms"]: b for b in whole_truth["bins"]}
    site_yaml = write_site_config(tmp_path / "site" / "site.yaml", scenario)
    running = RunningCollector(collector_config(tmp_path, broker, influx, site_yaml))
    query = f"SELECT * FROM site_metrics WHERE period='15m' AND pue_status='ok' AND time >= {begin}ms"
    try:
        assert publish(messages(scenario, begin), "127.0.0.1", broker.port, speed=0, max_inflight=200) == 289 * 30
        found = wait_for(lambda: len(rows(db, query)) == len(truth) and rows(db, query), timeout_s=90)
        time.sleep(1.0)  # the last metrics round, after the final messages
    finally:
        running.close()
    assert found, rows(db, "SELECT time, pue_status, coverage FROM site_metrics WHERE period='15m'")
    assert_stored_bins_equal(found, truth)
    for row in found:
        assert row["pue"] == pytest.approx(truth[row["time"]]["pue"], rel=ROUNDING, abs=0)
    racks = rows(db, f"SELECT sum(energy_kwh) AS it FROM rack_energy WHERE time >= {begin}ms GROUP BY time(15m)")
    hosts_it = {row["time"]: row["it"] for row in racks if row["it"] is not None}
    assert hosts_it.keys() == truth.keys()
    for start, kwh in hosts_it.items():
        assert kwh == pytest.approx(truth[start]["e_it_kwh"], rel=ROUNDING, abs=0)

    hours = {row["time"]: row for row in rows(db, f"SELECT * FROM site_metrics WHERE period='1h' AND time >= {begin}ms")}
    whole_hours = [h for h in whole_truth["hours"] if h["bins"] == 4]
    assert whole_hours
    for expected in whole_hours:
        row = hours[expected["period"]]
        for field in ("pue", "green_ratio", "e_facility_kwh", "cue_location", "cue_market"):
            assert row[field] == pytest.approx(expected[field], rel=ROUNDING, abs=0), (field, expected["period"])
    stored_day_it = sum(row["e_it_kwh"] for row in found)
    assert stored_day_it == pytest.approx(whole_truth["run"]["e_ups_output_kwh"], rel=ROUNDING)
