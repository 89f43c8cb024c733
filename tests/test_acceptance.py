"""Acceptance: a simulated day of a site with two rooms of three racks, through agent-format host messages, the
meter gateway reading the site's meters over real Modbus TCP, mosquitto, dcem-collector (a process) and influxd.
Every stored 15-minute, hourly and daily PUE, CUE and green ratio, every energy total per rack, meter and site,
equals the simulator's ground truth (as the meters' registers hold it) to floating-point rounding."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import pytest
import yaml

from simulator import cli
from simulator.model import hosts, meters
from simulator.scenario import load_scenario
from tests.collector_harness import rows, start_collector_process, wait_for, write_toml
from tests.servers import free_port
from tests.test_simulator_collector import ROUNDING, assert_stored_bins_equal

pytestmark = pytest.mark.servers

# stored field: truth field (the site has a UPS output meter, so its PUE is PUE1 with IT energy from that meter)
PERIOD_FIELDS = {"pue": "pue1", "e_it_kwh": "e_ups_output_kwh", "green_ratio": "green_ratio",
                 "e_facility_kwh": "e_facility_kwh", "green_kwh": "green_kwh", "cue_location": "cue_location",
                 "cue_market": "cue_market"}


def test_a_simulated_day_through_agents_gateway_broker_collector_and_influxdb_equals_the_truth(tmp_path, servers):
    broker, influx, db = servers
    scenario = load_scenario(cli.DEFAULT_SCENARIO).model_copy(update={"duration_h": 24.0, "step_s": 300})
    assert len({h.room for h in hosts(scenario)}) == 2 and len({(h.room, h.rack) for h in hosts(scenario)}) == 6
    scenario_file = tmp_path / "day.yaml"
    scenario_file.write_text(yaml.safe_dump(scenario.model_dump(mode="json", exclude_none=True)))
    site_yaml, truth_file = tmp_path / "site.yaml", tmp_path / "truth.json"
    assert cli.main(["--scenario", str(scenario_file), "--site-config", str(site_yaml)]) == 0
    collector = start_collector_process(write_toml(tmp_path / "collector.toml", {
        "site_config": site_yaml,
        "mqtt": {"host": "127.0.0.1", "port": broker.port},
        "influx": {"api": "v1", "url": influx.url, "database": "dcem"},
        "state": {"folder": tmp_path / "collector"},
        "ingest": {"flush_interval_s": 0.05},
        "report": {"metrics_interval_s": 0.5},
    }))
    try:
        assert cli.main(["--scenario", str(scenario_file), "--broker", f"127.0.0.1:{broker.port}", "--modbus",
                         "--modbus-port", str(free_port()), "--gateway-config", str(tmp_path / "gateway.toml"),
                         "--truth", str(truth_file)]) == 0
        truth = json.loads(truth_file.read_text())
        begin = truth["start_ms"]
        bins_query = f"SELECT * FROM site_metrics WHERE period='15m' AND pue_status='ok' AND time >= {begin}ms"
        complete = wait_for(lambda: (found := rows(db, bins_query)) and len(found) == len(truth["bins"])
                            and all(row["coverage"] == 1 for row in found) and found, timeout_s=120)
        stored = {period: {row["time"]: row for row in rows(
            db, f"SELECT * FROM site_metrics WHERE period='{period}' AND time >= {begin - 86_400_000}ms")}
            for period in ("1h", "1d")}
        racks = rows(db, f"SELECT sum(energy_kwh) FROM rack_energy WHERE time >= {begin}ms")
        room_kwh = {room: rows(db, f"SELECT sum(energy_kwh) FROM room_energy WHERE room='{room}' "
                                   f"AND time >= {begin}ms")[0]["sum"] for room in {h.room for h in hosts(scenario)}}
        meter_kwh = {m.id: rows(db, f"SELECT sum(energy_kwh) FROM meter_energy WHERE meter='{m.id}' "
                                    f"AND time >= {begin}ms")[0]["sum"] for m in meters(scenario)}
    finally:
        collector.terminate()
        assert collector.wait(30) == 0
    assert complete, rows(db, "SELECT time, pue_status, coverage FROM site_metrics WHERE period='15m'")
    assert truth["meter_registers"]["name"] == "generic"

    assert_stored_bins_equal(complete, {b["start_ms"]: b for b in truth["bins"]})
    for hour in truth["hours"]:
        row = stored["1h"][hour["period"]]
        for field, expected in PERIOD_FIELDS.items():
            assert row[field] == pytest.approx(hour[expected], rel=ROUNDING, abs=0), (field, hour["period"])
    zone = ZoneInfo(truth["timezone"])
    for day in truth["days"]:
        start = int(datetime.fromisoformat(day["period"]).replace(tzinfo=zone).astimezone(timezone.utc).timestamp()
                    * 1000)
        for field, expected in PERIOD_FIELDS.items():
            assert stored["1d"][start][field] == pytest.approx(day[expected], rel=ROUNDING, abs=0), (field, day["period"])
    run = truth["run"]
    assert racks[0]["sum"] == pytest.approx(run["e_it_kwh"], rel=ROUNDING)
    for room, kwh in room_kwh.items():  # each room: the energy of its hosts, whichever rack they are in
        room_j = sum(truth["device_energy_j"][h.id] for h in hosts(scenario) if h.room == room)
        assert kwh == pytest.approx(room_j / 3.6e6, rel=ROUNDING), room
    for meter_id, kwh in meter_kwh.items():
        assert kwh == pytest.approx(truth["device_energy_j"][meter_id] / 3.6e6, rel=ROUNDING), meter_id
    assert sum(row["e_facility_kwh"] for row in complete) == pytest.approx(run["e_facility_kwh"], rel=ROUNDING)
