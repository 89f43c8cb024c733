"""The power model: every device's power (W) at a simulated instant. Pure: time is a parameter.

Power is constant within a step and equal to its value at the step's start, so a step's energy is exactly
P x step_s; every 15-minute bin boundary is a step boundary (step_s divides 900 s).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import StrEnum

from common.contract import EnergySource, MeterRole
from simulator.scenario import HostProfile, OfficeLoad, Scenario, TrainingLoad

MS_PER_H = 3_600_000


class Quantity(StrEnum):
    """What a meter measures in the model."""

    GRID = "grid"
    GREEN_TRADED = "green-traded"
    PV = "pv"
    DIESEL = "diesel"
    UPS_OUTPUT = "ups-output"
    COOLING = "cooling"


@dataclass(frozen=True)
class Host:
    """A simulated server: where it sits, its profiles, and its seeded load scale."""

    room: str
    rack: str
    id: str
    profile: HostProfile
    load: TrainingLoad | OfficeLoad
    scale: float


@dataclass(frozen=True)
class Meter:
    """A simulated facility meter and the quantity it measures."""

    id: str
    role: MeterRole
    source: EnergySource | None
    quantity: Quantity


@dataclass(frozen=True)
class HostPower:
    """A host's server-input power, utilisations and per-GPU power over one step."""

    server_w: float
    cpu_util: float
    gpu_util: float
    gpu_w: float


@dataclass(frozen=True)
class SitePower:
    """Every power in the site over one step (W), and the outdoor temperature that drove cooling."""

    outdoor_c: float
    hosts: dict[str, HostPower]
    it_w: float
    ups_loss_w: float
    cooling_w: float
    pv_w: float
    green_w: float
    diesel_w: float
    grid_w: float
    export_w: float  # PV surplus the utility meter cannot count (it never runs backwards)

    def meter_w(self, meter: Meter) -> float:
        """The power a meter sees."""
        return {
            Quantity.GRID: self.grid_w, Quantity.GREEN_TRADED: self.green_w, Quantity.PV: self.pv_w,
            Quantity.DIESEL: self.diesel_w, Quantity.UPS_OUTPUT: self.it_w, Quantity.COOLING: self.cooling_w,
        }[meter.quantity]


def hosts(scenario: Scenario) -> list[Host]:
    """The scenario's hosts; ids are unique in the site: {room}-r{rack:02d}-h{n:02d}."""
    out = []
    for room in scenario.rooms:
        for r in range(1, room.racks + 1):
            for n in range(1, room.hosts_per_rack + 1):
                host_id = f"{room.id}-r{r:02d}-h{n:02d}"
                draw = random.Random(f"{scenario.seed}:{host_id}").uniform(-1.0, 1.0)
                out.append(Host(room.id, f"r{r:02d}", host_id, scenario.host_profiles[room.host_profile],
                                scenario.load_profiles[room.load_profile], 1.0 + scenario.host_jitter * draw))
    return out


def meters(scenario: Scenario) -> list[Meter]:
    """The facility meters: utility, UPS output and cooling always; green feeder, PV and diesel when configured."""
    out = [Meter("utility-1", MeterRole.FACILITY_INPUT, EnergySource.GRID, Quantity.GRID)]
    if scenario.green_feeder_kw > 0:
        out.append(Meter("green-feeder-1", MeterRole.FACILITY_INPUT, EnergySource.GREEN_TRADED, Quantity.GREEN_TRADED))
    if scenario.pv is not None:
        out.append(Meter("pv-1", MeterRole.ONSITE_GENERATION, EnergySource.PV, Quantity.PV))
    if scenario.diesel is not None:
        out.append(Meter("diesel-1", MeterRole.ONSITE_GENERATION, EnergySource.DIESEL, Quantity.DIESEL))
    out.append(Meter("ups-1", MeterRole.UPS_OUTPUT, None, Quantity.UPS_OUTPUT))
    out.append(Meter("cooling-1", MeterRole.COOLING, None, Quantity.COOLING))
    return out


def step_starts(scenario: Scenario, start_ms: int) -> range:
    """The start instant (UTC epoch ms) of every step of the run."""
    return range(start_ms, start_ms + scenario.duration_ms, scenario.step_ms)


def step_energy_j(power_w: float, scenario: Scenario) -> float:
    """A step's energy: its power (constant within the step) times step_s."""
    return power_w * scenario.step_s


def local_hour(scenario: Scenario, t_ms: int) -> float:
    """Local wall-clock hour of day (0 <= h < 24) at t_ms in the site's time zone."""
    local = datetime.fromtimestamp(t_ms / 1000, tz=timezone.utc).astimezone(scenario.zone)
    return local.hour + local.minute / 60 + (local.second + local.microsecond / 1e6) / 3600


def outdoor_c(scenario: Scenario, hour: float) -> float:
    """Outdoor temperature: mean + amplitude x cos(2 pi (h - warmest_h) / 24)."""
    w = scenario.weather
    return w.mean_c + w.amplitude_c * math.cos(2 * math.pi * (hour - w.warmest_h) / 24)


def busy_fraction(load: TrainingLoad | OfficeLoad, hour: float, elapsed_h: float) -> float:
    """0..1: how busy a load profile is (training: its job window; office: a half sine over the day)."""
    if isinstance(load, TrainingLoad):
        stop = math.inf if load.job_stop_h is None else load.job_stop_h
        return 1.0 if load.job_start_h <= elapsed_h < stop else 0.0
    if load.day_start_h <= hour < load.day_end_h:
        return math.sin(math.pi * (hour - load.day_start_h) / (load.day_end_h - load.day_start_h))
    return 0.0


def host_power(host: Host, hour: float, elapsed_h: float) -> HostPower:
    """server-input = idle + (peak - idle) x cpu_util + gpus x (gpu_idle + (gpu_peak - gpu_idle) x gpu_util)."""
    f = busy_fraction(host.load, hour, elapsed_h) * host.scale
    cpu = min(1.0, host.load.cpu_idle + (host.load.cpu_busy - host.load.cpu_idle) * f)
    gpu = min(1.0, host.load.gpu_idle + (host.load.gpu_busy - host.load.gpu_idle) * f)
    p = host.profile
    gpu_w = p.gpu_idle_w + (p.gpu_peak_w - p.gpu_idle_w) * gpu
    return HostPower(p.idle_w + (p.peak_w - p.idle_w) * cpu + p.gpus * gpu_w, cpu, gpu, gpu_w)


def pv_w(scenario: Scenario, hour: float) -> float:
    """PV output: peak x sin(pi (h - sunrise) / (sunset - sunrise)) between sunrise and sunset, else 0."""
    pv = scenario.pv
    if pv is None or not pv.sunrise_h < hour < pv.sunset_h:
        return 0.0
    return pv.peak_kw * 1000 * math.sin(math.pi * (hour - pv.sunrise_h) / (pv.sunset_h - pv.sunrise_h))


def diesel_w(scenario: Scenario, elapsed_h: float) -> float:
    """The generator's output: its kW during a test run, else 0."""
    runs = scenario.diesel.runs if scenario.diesel else ()
    return sum(r.kw * 1000 for r in runs if r.at_h <= elapsed_h < r.at_h + r.duration_min / 60)


def site_power(scenario: Scenario, host_list: list[Host], start_ms: int, t_ms: int) -> SitePower:
    """Every device's power over the step starting at t_ms (the run started at start_ms)."""
    hour = local_hour(scenario, t_ms)
    elapsed_h = (t_ms - start_ms) / MS_PER_H
    host_powers = {h.id: host_power(h, hour, elapsed_h) for h in host_list}
    it = math.fsum(p.server_w for p in host_powers.values())
    temp = outdoor_c(scenario, hour)
    c = scenario.cooling
    cooling = it * (c.a + c.b * max(0.0, temp - c.t0_c))
    ups_loss = scenario.ups.fixed_w + scenario.ups.k * it
    pv, green, diesel = pv_w(scenario, hour), scenario.green_feeder_kw * 1000, diesel_w(scenario, elapsed_h)
    grid = it + ups_loss + cooling - pv - green - diesel
    return SitePower(temp, host_powers, it, ups_loss, cooling, pv, green, diesel, max(0.0, grid), max(0.0, -grid))
