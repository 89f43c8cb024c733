"""Scale-out by per-site partitioning: two dcem-collector processes on one broker and one InfluxDB, each subscribed to
its own site (`ingest.sites`). Each site's stored 15-minute PUE, green ratio, CUE and energy equal that site's
ground truth, and neither collector sees the other's messages."""

from __future__ import annotations

import subprocess
import threading
import time

import pytest
import yaml

from simulator.cli import DEFAULT_SCENARIO
from simulator.messages import messages
from simulator.run import publish
from simulator.scenario import load_scenario, start_ms
from simulator.site_config import site_config
from simulator.truth import ground_truth
from tests.collector_harness import rows, start_collector_process, wait_for, write_toml

pytestmark = pytest.mark.servers

ROUNDING = 1e-9
SITES = {"east": {"seed": 1, "grid_region": "east"}, "west": {"seed": 2, "grid_region": "northwest"}}


def test_two_collectors_share_the_sites_and_every_site_total_is_exact(tmp_path, servers):
    broker, influx, db = servers
    base = load_scenario(DEFAULT_SCENARIO)
    scenarios = {site: base.model_copy(update={"site": site, "duration_h": 6.0, "step_s": 300, **changes})
                 for site, changes in SITES.items()}
    begin = start_ms(scenarios["east"], int(time.time() * 1000))
    truths = {site: ground_truth(s, begin) for site, s in scenarios.items()}
    site_yaml = tmp_path / "sites.yaml"  # one file listing both sites, as the operator keeps it
    site_yaml.write_text(yaml.safe_dump({"sites": [site_config(s)["sites"][0] for s in scenarios.values()]}))

    def collector(site: str) -> subprocess.Popen:
        return start_collector_process(write_toml(tmp_path / f"collector-{site}.toml", {
            "site_config": site_yaml,
            "mqtt": {"host": "127.0.0.1", "port": broker.port},
            "influx": {"api": "v1", "url": influx.url, "database": "dcem"},
            "state": {"folder": tmp_path / f"state-{site}"},
            "ingest": {"client_id": f"dcem-collector-{site}", "sites": [site], "flush_interval_s": 0.05},
            "report": {"metrics_interval_s": 0.5, "stats_interval_s": 0.5},
        }))

    running = {site: collector(site) for site in SITES}
    sent: dict[str, int] = {}

    def send(site: str) -> None:
        sent[site] = publish(messages(scenarios[site], begin), "127.0.0.1", broker.port, speed=0,
                             max_inflight=100, client_id=f"simulator-{site}")

    def query(site: str) -> str:
        return f"SELECT * FROM site_metrics WHERE site='{site}' AND period='15m' AND pue_status='ok' AND time >= {begin}ms"

    try:
        publishers = [threading.Thread(target=send, args=(site,)) for site in SITES]
        for thread in publishers:
            thread.start()
        for thread in publishers:
            thread.join(120)
        for site in SITES:
            assert wait_for(lambda: len(rows(db, query(site))) == len(truths[site]["bins"]), timeout_s=90), site
        time.sleep(1.0)  # a last metrics round
    finally:
        for process in running.values():
            process.terminate()
        for process in running.values():
            assert process.wait(30) == 0

    for site in SITES:  # each collector's own statistics: its site's messages only, nothing rejected
        stats = rows(db, "SELECT last(accepted) AS accepted, last(rejected) AS rejected FROM collector_stats "
                         f"WHERE collector='dcem-collector-{site}'")
        assert (stats[0]["accepted"], stats[0]["rejected"]) == (sent[site], 0)
        truth = {b["start_ms"]: b for b in truths[site]["bins"]}
        stored = rows(db, query(site))
        assert sorted(row["time"] for row in stored) == sorted(truth)
        for row in stored:
            expected = truth[row["time"]]
            for field in ("pue", "green_ratio", "e_facility_kwh", "cue_location", "cue_market"):
                assert row[field] == pytest.approx(expected[field], rel=ROUNDING, abs=0), (site, field)
        total_it = sum(row["e_it_kwh"] for row in stored)
        assert total_it == pytest.approx(truths[site]["run"]["e_ups_output_kwh"], rel=ROUNDING)
    assert truths["east"]["run"]["cue_location"] != truths["west"]["run"]["cue_location"]  # different grids
