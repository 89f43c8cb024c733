"""The simulator's Modbus mode: its meters served by pymodbus's server, read by the meter gateway's own code one
simulated step at a time, published through a real mosquitto (and stored by the real collector): the meters'
energy equals the truth as their registers hold it, which stays within the registers' resolution of the model.
"""

from __future__ import annotations

import json
import math
import socket
from datetime import datetime

import pytest
import yaml
from pymodbus.client import ModbusTcpClient

from agent.gateway.cli import build_config, parse_args
from agent.gateway.config import GatewayConfig
from agent.gateway.registers import RegisterSpec, load_profile, profile_names
from common.contract import SAMPLES_CHANNEL, decode_batch, parse_topic, subscription
from common.mqtt import MqttConfig
from simulator import cli
from simulator.model import hosts, meters
from simulator.modbus import (
    MeterServer,
    gateway_config,
    publish_with_gateway,
    register_steps,
    registered_truth,
    write_gateway_config,
)
from simulator.scenario import load_scenario, start_ms
from simulator.site_config import site_config
from simulator.truth import J_PER_KWH, ground_truth, steps
from tests.collector_harness import RunningCollector, rows, wait_for
from tests.servers import Mosquitto, free_port
from tests.subscriber import Recorder
from tests.test_simulator_collector import assert_stored_bins_equal, collector_config

NOON = datetime(2025, 6, 1, 12, 0)  # PV produces, so every meter moves


@pytest.fixture(scope="module")
def scenario():
    return load_scenario(cli.DEFAULT_SCENARIO).model_copy(update={"start": NOON, "duration_h": 0.5, "step_s": 300})


def resolution_kwh(kwh: float, spec: RegisterSpec) -> float:
    """The gap between neighbouring values a register of `spec` can hold near `kwh`."""
    if spec.data_type != "float32":
        return spec.scale
    return math.ldexp(1.0, math.frexp(kwh / spec.scale)[1] - 24) * spec.scale if kwh else 0.0


def exact_cumulative_kwh(scenario, begin) -> list[dict[str, float]]:
    """The model's cumulative energy of every meter at every step boundary."""
    totals = {m.id: 0.0 for m in meters(scenario)}
    out = [dict(totals)]
    for step in steps(scenario, begin):
        totals = {m: kwh + step.device_j[m] / J_PER_KWH for m, kwh in totals.items()}
        out.append(totals)
    return out


@pytest.mark.parametrize("profile", profile_names())
def test_registers_hold_the_cumulative_energy_to_their_resolution(scenario, profile):
    begin = start_ms(scenario, 0)
    register_map = load_profile(profile)
    spec = register_map.energy
    boundaries = list(register_steps(scenario, begin, register_map))
    assert [b.ts_ms for b in boundaries] == [begin + k * scenario.step_ms for k in range(len(boundaries))]
    assert all(raw == 0 for raw in boundaries[0].energy.values())
    for held, exact in zip(boundaries, exact_cumulative_kwh(scenario, begin), strict=True):
        for meter_id, kwh in exact.items():
            assert abs(held.energy[meter_id] * spec.scale - kwh) <= resolution_kwh(kwh, spec) / 2, meter_id
    if register_map.power is not None:
        assert boundaries[1].power["pv-1"] * register_map.power.scale > 0


@pytest.mark.parametrize("profile", ["generic", "acrel-adl3000"])
def test_registered_truth_counts_the_registers_increases_and_keeps_the_hosts(scenario, profile):
    begin = start_ms(scenario, 0)
    register_map = load_profile(profile)
    spec = register_map.energy
    truth, exact = registered_truth(scenario, begin, register_map), ground_truth(scenario, begin)
    last = list(register_steps(scenario, begin, register_map))[-1]
    assert truth["meter_registers"]["name"] == profile
    for h in hosts(scenario):
        assert truth["device_energy_j"][h.id] == exact["device_energy_j"][h.id]
    for meter_id, raw in last.energy.items():
        assert truth["device_energy_j"][meter_id] == pytest.approx(raw * spec.scale * J_PER_KWH, rel=1e-12)
    for got, model in zip(truth["bins"], exact["bins"], strict=True):
        assert got["e_it_kwh"] == model["e_it_kwh"]
        for kind in ("grid", "ups_output", "cooling", "pv", "green_traded"):
            bound = resolution_kwh(exact["run"][f"e_{kind}_kwh"], spec)  # a bin: two roundings of at most half
            assert abs(got[f"e_{kind}_kwh"] - model[f"e_{kind}_kwh"]) <= bound, kind


def test_the_gateway_config_loads_in_the_gateway_and_names_the_site_configs_meters(scenario, tmp_path):
    config = gateway_config(scenario, 5021, "acrel-adl3000", ("broker.local", 1884), tmp_path / "spool")
    path = write_gateway_config(tmp_path / "gateway.toml", config)
    loaded = build_config(parse_args(["--config", str(path)]))
    assert loaded == GatewayConfig.model_validate(config)
    assert (loaded.mqtt.host, loaded.mqtt.port, loaded.identity.site) == ("broker.local", 1884, scenario.site)
    assert [(m.unit_id, m.port, m.profile) for m in loaded.meters] == [
        (unit, 5021, "acrel-adl3000") for unit in range(1, len(loaded.meters) + 1)]
    site_meters = site_config(scenario)["sites"][0]["meters"]
    assert [(m.id, str(m.role)) for m in loaded.meters] == [(m["id"], m["role"]) for m in site_meters]
    assert all(str(m.source) == site["source"] for m, site in zip(loaded.meters, site_meters) if "source" in site)


def test_the_server_answers_per_unit_and_refuses_writes_and_unknown_addresses():
    generic = load_profile("generic")
    with MeterServer(free_port(), [1, 2], generic) as server:
        server.hold(2, 12.5, 3.0)
        client = ModbusTcpClient("127.0.0.1", port=server.port, timeout=2, retries=0)
        try:
            assert client.read_holding_registers(0, count=4, device_id=1).registers == [0, 0, 0, 0]
            answer = client.read_holding_registers(0, count=4, device_id=2).registers
            assert answer == [0x4148, 0, 0x4040, 0]  # 12.5 and 3.0 as float32, high word first
            assert client.read_holding_registers(10, count=2, device_id=2).exception_code == 2
            assert client.write_register(0, 1, device_id=2).isError()
        finally:
            client.close()


@pytest.mark.servers
def test_gateway_publishes_each_meters_registers_at_every_step(scenario, tmp_path):
    begin = start_ms(scenario, 0)
    broker = Mosquitto(tmp_path / "broker")
    broker.start()
    try:
        mqtt = MqttConfig(host="127.0.0.1", port=broker.port)
        recorder = Recorder(mqtt, subscription(SAMPLES_CHANNEL))
        config = GatewayConfig.model_validate(gateway_config(scenario, free_port(), broker=("127.0.0.1", broker.port)))
        instants = scenario.duration_ms // scenario.step_ms + 1
        assert publish_with_gateway(scenario, begin, config) == len(hosts(scenario)) * instants
        meter_ids = [m.id for m in meters(scenario)]
        expected = len(meter_ids) * instants + len(hosts(scenario)) * instants

        def samples(messages):
            return sum(len(decode_batch(m.payload).samples) for m in messages)

        assert recorder.wait_until(lambda messages: samples(messages) >= expected, timeout_s=20)
        recorder.close()
    finally:
        broker.stop()
    by_meter = {}
    for message in recorder.snapshot():
        batch = decode_batch(message.payload)
        if batch.kind == "meter":
            identity, _ = parse_topic(message.topic)
            by_meter.setdefault(identity.device, []).extend(batch.samples)
            assert not batch.session.startswith("sim-")  # the gateway's session, not the simulator's
    register_map = load_profile("generic")
    boundaries = list(register_steps(scenario, begin, register_map))
    truth = registered_truth(scenario, begin, register_map)
    assert sorted(by_meter) == sorted(meter_ids)
    for meter_id, published in by_meter.items():
        published.sort(key=lambda sample: sample.seq)
        assert [s.seq for s in published] == list(range(instants))
        assert [s.ts_ms for s in published] == [b.ts_ms for b in boundaries]
        assert [s.readings[0].energy_j for s in published] == [
            pytest.approx(b.energy[meter_id] * J_PER_KWH, rel=1e-15, abs=0) for b in boundaries]
        assert published[-1].readings[0].energy_j == pytest.approx(truth["device_energy_j"][meter_id], rel=1e-12)
        assert [s.readings[0].power_w for s in published] == [
            pytest.approx(b.power[meter_id] * 1000, rel=1e-15, abs=0) for b in boundaries]


@pytest.mark.servers
def test_stored_metrics_equal_the_registered_truth(tmp_path, servers):
    """Through the CLI: site config, gateway config, Modbus meters, the collector, influxd, and the truth file."""
    broker, influx, db = servers
    scenario_file = tmp_path / "one-hour.yaml"
    one_hour = load_scenario(cli.DEFAULT_SCENARIO).model_copy(update={"duration_h": 1.0, "step_s": 300})
    scenario_file.write_text(yaml.safe_dump(one_hour.model_dump(mode="json", exclude_none=True)))
    paths = {name: tmp_path / name for name in ("site.yaml", "gateway.toml", "truth.json")}
    cli.main(["--scenario", str(scenario_file), "--site-config", str(paths["site.yaml"])])
    running = RunningCollector(collector_config(tmp_path, broker, influx, paths["site.yaml"]))
    try:
        assert cli.main(["--scenario", str(scenario_file), "--broker", f"127.0.0.1:{broker.port}", "--modbus",
                         "--modbus-port", str(free_port()), "--gateway-config", str(paths["gateway.toml"]),
                         "--truth", str(paths["truth.json"])]) == 0
        truth = json.loads(paths["truth.json"].read_text())
        query = f"SELECT * FROM site_metrics WHERE period='15m' AND pue_status='ok' AND time >= {truth['start_ms']}ms"

        def complete():  # every bin stored, and from every meter's final samples
            found = rows(db, query)
            return len(found) == len(truth["bins"]) and all(row["coverage"] == 1 for row in found) and found

        found = wait_for(complete, timeout_s=30)
    finally:
        running.close()
    assert found and truth["meter_registers"]["name"] == "generic"
    assert_stored_bins_equal(found, {b["start_ms"]: b for b in truth["bins"]})


def test_a_busy_port_is_reported_as_such():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError, match="cannot listen on 127.0.0.1"):
            MeterServer(taken.getsockname()[1], [1], load_profile("generic"))
