"""Tests of agent/sampler.py with stub sensors and a fake clock: sessions, seq, rebasing, the server estimate."""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace

import pytest

from agent.energy import AmbiguousInterval
from agent.sampler import SERVER_READING_ID, Sampler
from agent.sensors.host import CpuModelSensor
from common.contract import Component, HostStats, Method, Reading, Sample, SampleBatch, decode_batch, encode

EPOCH_MS = 1_700_000_000_000
OVERHEAD_W = 60.0
EFFICIENCY = 0.8


class Clock:
    def __init__(self, start_s: float = 100.0) -> None:
        self.now_s = start_s

    def monotonic_s(self) -> float:
        return self.now_s

    def wall_ms(self) -> int:
        return EPOCH_MS + int(self.now_s * 1000)


class CounterSensor:
    """Behaves like a RAPL zone: a cumulative energy counter that does not start at 0, and no power on the
    first read. powers[i] is the mean power of the interval ending at read i+1. Reads listed in raise_on
    (0-based) raise AmbiguousInterval; the counter keeps running through them."""

    state = "ok"

    def __init__(self, component: Component, reading_id: str, powers: Sequence[float], start_j: float = 5_000.0,
                 raise_on: Sequence[int] = ()):
        self.name = f"stub-{reading_id}"
        self.component = component
        self.reading_id = reading_id
        self.powers = list(powers)
        self.energy_j = start_j
        self.raise_on = set(raise_on)
        self.reads = 0
        self.last_s: float | None = None
        self.read_times: list[float] = []

    def read(self, now_s: float) -> list[Reading]:
        index = self.reads
        self.reads += 1
        self.read_times.append(now_s)
        power_w = None
        if self.last_s is not None:
            power_w = self.powers.pop(0)
            self.energy_j += power_w * (now_s - self.last_s)
        self.last_s = now_s
        if index in self.raise_on:
            raise AmbiguousInterval("stub counter may have wrapped twice")
        return [Reading(component=self.component, id=self.reading_id, method=Method.RAPL, power_w=power_w,
                        energy_j=self.energy_j)]

    def close(self) -> None:
        pass


class FixedSensor:
    """Returns the same readings every time."""

    name = "fixed"
    state = "ok"

    def __init__(self, *readings: Reading) -> None:
        self.readings = list(readings)

    def read(self, now_s: float) -> list[Reading]:
        return list(self.readings)

    def close(self) -> None:
        pass


def make_sampler(sensors: Sequence[object], clock: Clock, host: object | None = None) -> Sampler:
    return Sampler(sensors, host, OVERHEAD_W, EFFICIENCY, clock.wall_ms, clock.monotonic_s)


def take(sampler: Sampler, clock: Clock, times: Sequence[float]) -> list[Sample | None]:
    taken = []
    for now_s in times:
        clock.now_s = now_s
        taken.append(sampler.sample())
    return taken


def find(sample: Sample, component: Component, reading_id: str) -> Reading:
    [found] = [r for r in sample.readings if r.component == component and r.id == reading_id]
    return found


def server(sample: Sample) -> Reading:
    return find(sample, Component.SERVER_INPUT, SERVER_READING_ID)


TIMES = [100.0, 101.0, 103.0, 103.5]
PACKAGE_W = [100.0, 140.0, 80.0]
DRAM_W = [20.0, 20.0, 20.0]
# (package + dram + overhead) / efficiency for each interval, times its length; core power never counts
SERVER_W = [(100 + 20 + 60) / 0.8, (140 + 20 + 60) / 0.8, (80 + 20 + 60) / 0.8]  # 225, 275, 200
SERVER_J = [0.0, 225.0 * 1.0, 225.0 + 275.0 * 2.0, 225.0 + 550.0 + 200.0 * 0.5]  # 0, 225, 775, 875


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def rapl_like(clock: Clock) -> tuple[Sampler, list[CounterSensor]]:
    sensors = [
        CounterSensor(Component.CPU_PACKAGE, "package-0", PACKAGE_W, start_j=5_000.0),
        CounterSensor(Component.CPU_CORE, "package-0-core", [999.0, 999.0, 999.0], start_j=7.0),
        CounterSensor(Component.DRAM, "package-0-dram", DRAM_W, start_j=0.0),
    ]
    return make_sampler(sensors, clock), sensors


def test_seq_counts_from_zero_and_timestamps_come_from_the_wall_clock(rapl_like, clock: Clock) -> None:
    sampler, _ = rapl_like
    samples = take(sampler, clock, TIMES)
    assert [s.seq for s in samples] == [0, 1, 2, 3]
    assert [s.ts_ms for s in samples] == [EPOCH_MS + int(t * 1000) for t in TIMES]
    assert [s.interval_s for s in samples[1:]] == [1.0, 2.0, 0.5]


def test_sensors_are_read_with_the_monotonic_clock(rapl_like, clock: Clock) -> None:
    sampler, sensors = rapl_like
    take(sampler, clock, TIMES)
    assert sensors[0].read_times == TIMES


def test_energy_counters_are_rebased_to_zero_per_session(rapl_like, clock: Clock) -> None:
    sampler, _ = rapl_like
    samples = take(sampler, clock, TIMES)
    package_j = [find(s, Component.CPU_PACKAGE, "package-0").energy_j for s in samples]
    core_j = [find(s, Component.CPU_CORE, "package-0-core").energy_j for s in samples]
    dram_j = [find(s, Component.DRAM, "package-0-dram").energy_j for s in samples]
    assert package_j == pytest.approx([0.0, 100.0, 380.0, 420.0])
    assert core_j == pytest.approx([0.0, 999.0, 2997.0, 3496.5])
    assert dram_j == pytest.approx([0.0, 20.0, 60.0, 70.0])


def test_server_input_is_modelled_from_components_overhead_and_efficiency(rapl_like, clock: Clock) -> None:
    sampler, _ = rapl_like
    samples = take(sampler, clock, TIMES)
    readings = [server(s) for s in samples]
    assert all(r.method == Method.MODEL and r.estimated for r in readings)
    assert [r.power_w for r in readings[1:]] == pytest.approx(SERVER_W)
    assert [r.energy_j for r in readings] == pytest.approx(SERVER_J)


def test_first_sample_has_no_server_power(rapl_like, clock: Clock) -> None:
    sampler, _ = rapl_like
    [first] = take(sampler, clock, TIMES[:1])
    assert server(first).power_w is None
    assert server(first).energy_j == 0.0


def test_samples_fit_the_wire_contract(rapl_like, clock: Clock) -> None:
    sampler, _ = rapl_like
    samples = take(sampler, clock, TIMES)
    batch = SampleBatch(kind="host", session=sampler.session, samples=samples)
    assert decode_batch(encode(batch)) == batch


def test_host_stats_are_attached() -> None:
    stats = HostStats(cpu_util=0.5, logical_cpus=4, mem_used_bytes=1, mem_total_bytes=2)
    host = SimpleNamespace(read=lambda: stats)
    clock = Clock()
    sampler = make_sampler([], clock, host=host)
    assert sampler.sample().host == stats


def test_ambiguous_interval_starts_a_new_session(clock: Clock) -> None:
    package = CounterSensor(Component.CPU_PACKAGE, "package-0", [100.0] * 10, start_j=5_000.0, raise_on=[2])
    sampler = make_sampler([package], clock)
    before = take(sampler, clock, [100.0, 101.0])
    old_session = sampler.session

    clock.now_s = 2_000.0
    assert sampler.sample() is None
    assert sampler.session != old_session

    after = take(sampler, clock, [2_001.0, 2_002.0])
    assert [s.seq for s in before] == [0, 1]
    assert [s.seq for s in after] == [0, 1]
    first = after[0]
    assert find(first, Component.CPU_PACKAGE, "package-0").energy_j == 0.0  # though the stub's counter kept going
    assert server(first).energy_j == 0.0
    assert server(first).power_w is None  # no interval yet in the new session
    assert find(after[1], Component.CPU_PACKAGE, "package-0").energy_j == pytest.approx(100.0)
    assert server(after[1]).energy_j == pytest.approx((100 + 60) / 0.8 * 1.0)


def test_each_session_gets_a_distinct_id(clock: Clock) -> None:
    sampler = make_sampler([], clock)
    seen = {sampler.session}
    for _ in range(20):
        sampler.start_session()
        seen.add(sampler.session)
    assert len(seen) == 21
    assert all(8 <= len(s) <= 64 for s in seen)


def test_lost_gpu_does_not_block_the_server_estimate(clock: Clock) -> None:
    package = CounterSensor(Component.CPU_PACKAGE, "package-0", [100.0, 100.0])
    lost_gpu = FixedSensor(Reading(component=Component.GPU, id="GPU-0", method=Method.NVML_ENERGY, state="lost"))
    sampler = make_sampler([package, lost_gpu], clock)
    samples = take(sampler, clock, [100.0, 101.0, 102.0])
    assert find(samples[1], Component.GPU, "GPU-0").state == "lost"
    assert [server(s).power_w for s in samples[1:]] == pytest.approx([200.0, 200.0])  # (100 + 60) / 0.8
    assert server(samples[2]).energy_j == pytest.approx(400.0)


def test_a_component_without_power_adds_nothing_to_the_server_estimate(clock: Clock) -> None:
    """A reading with no power (a GPU whose counter just started, or one that reports none) adds nothing;
    the estimate goes on from the others, so the host's IT energy never stalls."""
    package = CounterSensor(Component.CPU_PACKAGE, "package-0", [100.0, 100.0])  # 100 W
    new_gpu = FixedSensor(Reading(component=Component.GPU, id="GPU-0", method=Method.NVML_ENERGY, energy_j=0.0))
    sampler = make_sampler([package, new_gpu], clock)
    samples = take(sampler, clock, [100.0, 101.0])
    assert server(samples[1]).power_w == pytest.approx((100 + 60) / 0.8)  # overhead 60 W, PSU 0.8
    assert server(samples[1]).energy_j == pytest.approx(200.0)


def test_cpu_model_sensor_feeds_the_server_estimate(clock: Clock) -> None:
    host = SimpleNamespace(last_util=0.5)
    sampler = make_sampler([CpuModelSensor(host, tdp_w=200, sockets=2, idle_fraction=0.3)], clock)
    samples = take(sampler, clock, [100.0, 102.0])
    cpu = find(samples[1], Component.CPU_PACKAGE, "cpu-model")
    assert cpu.estimated and cpu.power_w == pytest.approx(260.0) and cpu.energy_j == pytest.approx(520.0)
    assert server(samples[1]).power_w == pytest.approx((260 + 60) / 0.8)
    assert server(samples[1]).energy_j == pytest.approx((260 + 60) / 0.8 * 2)


def test_a_stall_longer_than_the_contract_allows_does_not_crash_the_sampler(clock: Clock) -> None:
    host = SimpleNamespace(last_util=0.5)
    sampler = make_sampler([CpuModelSensor(host, tdp_w=200, sockets=2, idle_fraction=0.3)], clock)
    take(sampler, clock, [100.0, 101.0])
    clock.now_s = 101.0 + 3_700.0  # e.g. a VM paused for an hour: the CPU model cannot notice
    result = sampler.sample()
    assert result is None or result.interval_s <= 3600
