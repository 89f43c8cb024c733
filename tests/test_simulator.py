"""The site simulator, pure parts: exact step energies, truth sums, meter balance, messages and site config."""

from __future__ import annotations

import math
from datetime import datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collector.accounting import BIN_MS
from collector.site import load_site_config
from common.contract import Component, decode_batch, parse_topic
from simulator.cli import DEFAULT_SCENARIO
from simulator.messages import messages
from simulator.model import hosts, meters, outdoor_c, site_power, step_starts
from simulator.run import Pacer
from simulator.scenario import ScenarioError, load_scenario, start_ms
from simulator.site_config import write_site_config
from simulator.truth import KINDS, J_PER_KWH, bin_energies, figures, ground_truth, site_factors, steps, summed

START = datetime(2025, 6, 1, 0, 0)


@pytest.fixture(scope="module")
def scenario():
    return load_scenario(DEFAULT_SCENARIO).model_copy(update={"start": START})


@pytest.fixture(scope="module")
def begin(scenario):
    return start_ms(scenario, 0)


@pytest.fixture(scope="module")
def truth(scenario, begin):
    return ground_truth(scenario, begin)


def test_start_is_local_time_and_defaults_to_a_past_bin_boundary(scenario):
    assert start_ms(scenario, 0) == 1748707200000  # 2025-06-01 00:00 Asia/Shanghai = 2025-05-31 16:00 UTC
    now = 1_750_000_123_456
    default = start_ms(scenario.model_copy(update={"start": None}), now)
    assert default % BIN_MS == 0 and default + scenario.duration_ms <= now < default + scenario.duration_ms + BIN_MS


def test_energy_per_step_is_power_times_step(scenario, begin):
    host_list, meter_list = hosts(scenario), meters(scenario)
    for step in list(steps(scenario, begin))[:30]:
        power = site_power(scenario, host_list, begin, step.start_ms)
        for h in host_list:
            assert step.device_j[h.id] == power.hosts[h.id].server_w * 60
        for m in meter_list:
            assert step.device_j[m.id] == power.meter_w(m) * 60


def test_every_bin_boundary_is_a_step_boundary(scenario, begin):
    starts = set(step_starts(scenario, begin))
    assert all(b in starts for b in range(begin, begin + scenario.duration_ms, BIN_MS))
    assert len(starts) == 24 * 60


def test_run_totals_equal_the_sum_over_bins(truth):
    for kind in KINDS:
        key = f"e_{kind}_kwh"
        assert truth["run"][key] == pytest.approx(math.fsum(b[key] for b in truth["bins"]), rel=1e-12, abs=1e-12)
    assert truth["run"]["bins"] == len(truth["bins"]) == 96


def test_facility_is_grid_plus_pv_plus_green_traded_plus_diesel(truth):
    for row in truth["bins"] + [truth["run"]]:
        parts = row["e_grid_kwh"] + row["e_pv_kwh"] + row["e_green_traded_kwh"] + row["e_diesel_kwh"]
        assert row["e_facility_kwh"] == pytest.approx(parts, rel=1e-12)
        assert row["pue"] == pytest.approx(row["e_facility_kwh"] / row["e_it_kwh"], rel=1e-12)


def test_facility_equals_consumption_when_nothing_is_exported(scenario, begin):
    host_list = hosts(scenario)
    for t in step_starts(scenario, begin):
        p = site_power(scenario, host_list, begin, t)
        consumed = p.it_w + p.ups_loss_w + p.cooling_w
        assert p.grid_w + p.pv_w + p.green_w + p.diesel_w == pytest.approx(consumed, rel=1e-12)


def test_the_example_never_drives_the_utility_meter_negative(scenario, begin, truth):
    host_list = hosts(scenario)
    powers = [site_power(scenario, host_list, begin, t) for t in step_starts(scenario, begin)]
    assert min(p.grid_w for p in powers) > 1000 and max(p.export_w for p in powers) == 0
    assert truth["run"]["e_export_kwh"] == 0
    assert truth["run"]["e_diesel_kwh"] == pytest.approx(8 * 0.5) and truth["run"]["e_pv_kwh"] > 0


def test_an_oversized_pv_array_clamps_the_utility_meter_and_reports_the_export(scenario, begin):
    big = scenario.model_copy(update={"pv": scenario.pv.model_copy(update={"peak_kw": 500})})
    noon = begin + 12 * 3_600_000
    p = site_power(big, hosts(big), begin, noon)
    assert p.grid_w == 0 and p.export_w == pytest.approx(p.pv_w + p.green_w - p.it_w - p.ups_loss_w - p.cooling_w)


def test_pue_follows_the_outdoor_temperature(scenario, begin):
    host_list = hosts(scenario)
    cool, warm = begin + 5 * 3_600_000, begin + 15 * 3_600_000  # 05:00 and 15:00 local
    assert outdoor_c(scenario, 5.0) < scenario.cooling.t0_c + 1 < outdoor_c(scenario, 15.0)
    still = scenario.model_copy(update={"load_profiles": {
        name: profile.model_copy(update={"kind": "training", "job_start_h": 0.0, "job_stop_h": None})
        if profile.kind == "training" else profile for name, profile in scenario.load_profiles.items()}})
    ratios = []
    for t in (cool, warm):
        p = site_power(still, host_list, begin, t)
        ratios.append(p.cooling_w / p.it_w)
    assert ratios[1] > ratios[0] + 0.1
    bins = {b["start_ms"]: b for b in ground_truth(scenario, begin)["bins"]}
    night, afternoon = bins[begin + 1 * 3_600_000], bins[begin + 15 * 3_600_000]
    assert night["ppue_cooling"] < afternoon["ppue_cooling"]


def test_cue_uses_the_site_factors(scenario, truth):
    factors = site_factors(scenario)
    assert (factors.grid, factors.residual, factors.year) == (0.55, 0.6096, 2023)
    run = truth["run"]
    location = (run["e_grid_kwh"] + run["e_green_traded_kwh"]) * 0.55 + run["e_diesel_kwh"] * factors.diesel
    assert run["cue_location"] == pytest.approx(location / run["e_it_kwh"], rel=1e-12)
    market = run["e_grid_kwh"] * 0.6096 + run["e_diesel_kwh"] * factors.diesel
    assert run["cue_market"] == pytest.approx(market / run["e_it_kwh"], rel=1e-12)


def test_messages_decode_and_their_counters_match_the_truth(scenario, begin, truth):
    short = scenario.model_copy(update={"duration_h": 1.0})
    last: dict[str, tuple[int, int, float]] = {}
    first_ts: dict[str, int] = {}
    for message in messages(short, begin):
        identity, channel = parse_topic(message.topic)
        batch = decode_batch(message.payload)
        sample = batch.samples[0]
        kind = Component.SERVER_INPUT if batch.kind == "host" else Component.METER
        reading = next(r for r in sample.readings if r.component == kind)
        previous = last.get(identity.device)
        assert sample.seq == (previous[0] + 1 if previous else 0) and sample.ts_ms == message.ts_ms
        assert channel == "samples" and identity.site == "sim-dc1"
        first_ts.setdefault(identity.device, sample.ts_ms)
        last[identity.device] = (sample.seq, sample.ts_ms, reading.energy_j)
    expected = ground_truth(short, begin)["device_energy_j"]
    assert set(last) == set(expected) and len(last) == 24 + 6
    for device, (seq, ts, energy) in last.items():
        assert (seq, first_ts[device], ts) == (60, begin, begin + 3_600_000)
        assert energy == pytest.approx(expected[device], rel=1e-12)


def test_host_messages_carry_gpus_and_meters_carry_role_and_source(scenario, begin):
    batches = {parse_topic(m.topic)[0].device: decode_batch(m.payload)
               for m in messages(scenario.model_copy(update={"duration_h": 0.25}), begin) if m.ts_ms == begin + 60_000}
    host = batches["hall-a-r01-h01"].samples[0]
    assert [r.component for r in host.readings].count(Component.GPU) == 4 and 0 <= host.host.cpu_util <= 1
    pv = batches["pv-1"].samples[0].readings[0]
    assert (pv.role, pv.source) == ("onsite-generation", "pv")


def test_generated_site_config_loads_in_the_collector(scenario, tmp_path):
    config = load_site_config(write_site_config(tmp_path / "site.yaml", scenario))
    site = config.sites[0]
    assert site.id == "sim-dc1" and sum(len(r.hosts) for room in site.rooms for r in room.racks) == 24
    assert {(m.id, m.room, m.rack) for m in site.meters} >= {("utility-1", "facility", "main")}
    assert len(site.meters) == 6


def test_scenario_errors_name_the_field(tmp_path):
    text = DEFAULT_SCENARIO.read_text().replace("step_s: 60", "step_s: 70")
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ScenarioError) as error:
        load_scenario(path)
    assert "step_s: step_s must divide 900 s" in str(error.value)


def test_pacer_spaces_messages_by_simulated_time_over_speed():
    now = [100.0]
    slept = []
    pacer = Pacer(60.0, clock=lambda: now[0], sleep=lambda s: (slept.append(s), now.__setitem__(0, now[0] + s)))
    for ts in (0, 60_000, 120_000):
        pacer.wait(ts)
    assert slept == [pytest.approx(1.0), pytest.approx(1.0)]


@settings(max_examples=25, deadline=None)
@given(hours=st.integers(1, 48), offset_bins=st.integers(0, 95), step=st.sampled_from([30, 60, 300, 900]),
       seed=st.integers(0, 1000))
def test_truth_per_day_is_the_sum_of_its_bins(hours, offset_bins, step, seed):
    base = load_scenario(DEFAULT_SCENARIO)
    scenario = base.model_copy(update={"duration_h": float(hours), "step_s": step, "seed": seed,
                                       "start": datetime(2025, 3, 1, 0, 0)})
    begin = start_ms(scenario, 0) + offset_bins * BIN_MS
    truth = ground_truth(scenario, begin)
    factors = site_factors(scenario)
    assert sum(day["bins"] for day in truth["days"]) == len(truth["bins"]) == hours * 4
    for day in truth["days"]:
        members = [b for b in truth["bins"] if _local_date(scenario, b["start_ms"]) == day["period"]]
        assert day["bins"] == len(members)
        for kind in KINDS:
            total = math.fsum(b[f"e_{kind}_kwh"] for b in members)
            assert day[f"e_{kind}_kwh"] == pytest.approx(total, rel=1e-12, abs=1e-12)
        energies = {kind: day[f"e_{kind}_kwh"] for kind in KINDS}
        assert day["pue"] == pytest.approx(figures(energies, factors)["pue"], rel=1e-12)
    assert summed(bin_energies(scenario, begin).values())["it"] == pytest.approx(truth["run"]["e_it_kwh"], rel=1e-12)
    assert truth["run"]["e_it_kwh"] * J_PER_KWH == pytest.approx(
        sum(v for k, v in truth["device_energy_j"].items() if "-r" in k), rel=1e-12)


def _local_date(scenario, ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=scenario.zone).date().isoformat()
