"""The simulator's fast host encoder (simulator.messages.HostEncoder) writes exactly the contract models' bytes, and
the throughput benchmark's live engine (bench/stream_publisher.SimulatedSite) publishes the simulator's model:
valid contract messages whose energies integrate the model's step powers."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from common.contract import Component, decode_batch
from simulator.cli import DEFAULT_SCENARIO
from simulator.messages import HostEncoder, host_payload, json_float, messages, session_id
from simulator.model import HostPower, hosts, site_power
from simulator.scenario import HostProfile, load_scenario, start_ms

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import stream_publisher as sp  # noqa: E402

SCENARIO = load_scenario(DEFAULT_SCENARIO)
START = start_ms(SCENARIO, 1_750_000_000_000)


class _Float(BaseModel):
    x: float


@settings(max_examples=3000, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False))
def test_json_float_writes_a_float_as_the_contract_encoder_does(value):
    assert json_float(value) == _Float(x=value).model_dump_json()[5:-1]


@pytest.mark.parametrize("value", [1e-5, 1.5e-5, 9.999999999999999e-5, 1e-4, 2.5e-7, -3e-5, 1e16, 1e22, 5e-324,
                                   0.0, -0.0, 123456.789])
def test_json_float_at_the_edges_of_the_decimal_form(value):
    assert json_float(value) == _Float(x=value).model_dump_json()[5:-1]


def test_the_simulator_s_own_messages_are_what_the_encoder_writes():
    host_list = {h.id: h for h in hosts(SCENARIO)}
    for message in list(messages(SCENARIO, START))[:200]:
        batch = decode_batch(message.payload)
        if batch.kind != "host":
            continue
        host = host_list[message.topic.split("/")[5]]
        sample = batch.samples[0]
        server = next(r for r in sample.readings if r.component == Component.SERVER_INPUT)
        gpus = [r for r in sample.readings if r.component == Component.GPU]
        power = HostPower(server.power_w or 0.0, sample.host.cpu_util, gpus[0].util if gpus else 0.0,
                          gpus[0].power_w or 0.0 if gpus else 0.0)
        fast = HostEncoder(host, batch.session).payload(
            power, sample.seq, sample.ts_ms, sample.interval_s, server.energy_j, gpus[0].energy_j if gpus else 0.0,
            server.power_w is None)
        assert fast == message.payload


finite = st.floats(min_value=0, max_value=1e9, allow_nan=False)


@settings(max_examples=500, deadline=None)
@given(gpus=st.integers(0, 16), logical_cpus=st.integers(1, 4096), mem_total_gb=st.floats(0.001, 1e5),
       server_w=finite, cpu_util=st.floats(0, 1), gpu_util=st.floats(0, 1), gpu_w=finite,
       seq=st.integers(0, 2**53), ts_ms=st.integers(1, 2**53), interval_s=st.floats(1e-6, 3600),
       energy_j=st.floats(0, 1e18), gpu_energy_j=st.floats(0, 1e18), opening=st.booleans())
def test_the_fast_encoder_writes_the_contract_models_bytes(gpus, logical_cpus, mem_total_gb, server_w, cpu_util,
                                                           gpu_util, gpu_w, seq, ts_ms, interval_s, energy_j,
                                                           gpu_energy_j, opening):
    host = hosts(SCENARIO)[0]
    profile = HostProfile(idle_w=1.0, peak_w=2.0, gpus=gpus, logical_cpus=logical_cpus, mem_total_gb=mem_total_gb)
    host = type(host)(host.room, host.rack, host.id, profile, host.load, host.scale)
    power = HostPower(server_w, cpu_util, gpu_util, gpu_w)
    session = session_id(START, host.id)
    args = (power, seq, ts_ms, interval_s, energy_j, gpu_energy_j, opening)
    assert HostEncoder(host, session).payload(*args) == host_payload(host, *args, session)


def test_the_benchmark_stream_publishes_the_model_s_power_and_its_integral():
    scenario = sp.bench_scenario(130, gpus=2)
    assert [(room.racks, room.hosts_per_rack) for room in scenario.rooms] == [(3, 40), (1, 10)]
    devices = len(hosts(scenario)) + 3
    begin = 1_750_000_000_000
    site = sp.SimulatedSite(scenario, sp.publish_order(devices, "random"), begin, steps=3)
    site.check()
    i = next(k for k, encoder in enumerate(site.encoders) if encoder is not None)
    topic, opening = site.message(i, begin + 4_000)
    first = decode_batch(opening).samples[0]
    assert first.seq == 0 and first.readings[0].energy_j == 0.0 and first.readings[0].power_w is None
    _, later = site.message(i, begin + 16_000)  # 6 s of step 0 and 6 s of step 1
    sample = decode_batch(later).samples[0]
    host = next(h for h in hosts(scenario) if h.id == topic.split("/")[5])
    step0, step1 = (site_power(scenario, [host], begin, begin + k * 10_000).hosts[host.id] for k in (0, 1))
    assert sample.seq == 1 and sample.ts_ms == begin + 16_000
    assert sample.readings[0].power_w == step1.server_w
    assert sample.readings[0].energy_j == pytest.approx(step0.server_w * 6 + step1.server_w * 6, rel=1e-12)
    assert [r.energy_j for r in sample.readings[1:]] == [pytest.approx(step0.gpu_w * 6 + step1.gpu_w * 6)] * 2
    meter = next(k for k, encoder in enumerate(site.encoders) if encoder is None)
    assert decode_batch(site.message(meter, begin + 5_000)[1]).kind == "meter"
