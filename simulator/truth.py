"""Ground truth: energies per 15-minute bin and per period, and the metrics a correct collector must report.

Pure, and independent of collector.metrics: the formulas of docs/metrics.md are restated here.
  E_facility = grid + green-traded (facility-input feeders) + pv + diesel (on-site generation)
  green = pv + green-traded;  green ratio = min(1, green / E_facility)
  PUE (estimated) = E_facility / E_IT, E_IT = sum of the hosts' server-input energy; PUE1 uses the UPS output
  carbon location = (grid + green-traded) x grid factor + diesel x diesel factor
  carbon market = grid x residual factor + diesel x diesel factor (no ledger instruments)
  CUE = carbon / E_IT of the best metering point: the UPS output meter, which every simulated site has (the
  collector's PUE1 category; the hosts' sum, up to a register's resolution in the Modbus mode)
  pPUE cooling = (E_IT + E_cooling) / E_IT
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from collector.accounting import BIN_MS
from collector.factors import diesel_factor, grid_factor, residual_factor
from simulator.model import Quantity, hosts, meters, site_power, step_energy_j, step_starts
from simulator.scenario import Scenario

J_PER_KWH = 3_600_000.0
HOUR_MS = 4 * BIN_MS
KINDS = ("it", "ups_output", "cooling", "grid", "green_traded", "pv", "diesel", "export")
_KIND_OF = {Quantity.GRID: "grid", Quantity.GREEN_TRADED: "green_traded", Quantity.PV: "pv",
            Quantity.DIESEL: "diesel", Quantity.UPS_OUTPUT: "ups_output", Quantity.COOLING: "cooling"}


@dataclass(frozen=True)
class Factors:
    """kgCO2/kWh: the region's grid factor, the national residual of the same year (else the latest), diesel."""

    grid: float
    residual: float
    diesel: float
    year: int


@dataclass(frozen=True)
class Step:
    """One step's energy (J) per device id, and the site's unmetered export."""

    start_ms: int
    device_j: dict[str, float]
    export_j: float


def site_factors(scenario: Scenario) -> Factors:
    """The factors the collector selects for this site (collector.report.site_factors' rule)."""
    grid = grid_factor(scenario.grid_region, scenario.grid_year)
    try:
        residual = residual_factor(grid.year)
    except ValueError:
        residual = residual_factor(None)
    return Factors(grid.value_kg_per_kwh, residual.value_kg_per_kwh, diesel_factor(None).value_kg_per_kwh, grid.year)


def steps(scenario: Scenario, start_ms: int) -> Iterator[Step]:
    """Every step's energy per device (hosts and meters), in time order."""
    host_list, meter_list = hosts(scenario), meters(scenario)
    for t in step_starts(scenario, start_ms):
        power = site_power(scenario, host_list, start_ms, t)
        device_j = {h.id: step_energy_j(power.hosts[h.id].server_w, scenario) for h in host_list}
        device_j |= {m.id: step_energy_j(power.meter_w(m), scenario) for m in meter_list}
        yield Step(t, device_j, step_energy_j(power.export_w, scenario))


def bin_energies(scenario: Scenario, start_ms: int, run_steps: Iterable[Step] | None = None
                 ) -> dict[int, dict[str, float]]:
    """kWh per kind (KINDS) for every 15-minute bin, keyed by bin start (UTC epoch ms); of `run_steps` when
    given (see ground_truth), else of the model's steps."""
    host_ids = {h.id for h in hosts(scenario)}
    kind_of = {m.id: _KIND_OF[m.quantity] for m in meters(scenario)}
    joules: dict[int, dict[str, list[float]]] = {}
    for step in steps(scenario, start_ms) if run_steps is None else run_steps:
        parts = joules.setdefault(step.start_ms - step.start_ms % BIN_MS, {kind: [] for kind in KINDS})
        for device, j in step.device_j.items():
            parts["it" if device in host_ids else kind_of[device]].append(j)
        parts["export"].append(step.export_j)
    return {start: {kind: math.fsum(js) / J_PER_KWH for kind, js in parts.items()} for start, parts in joules.items()}


def device_energies_j(scenario: Scenario, start_ms: int, run_steps: Iterable[Step] | None = None
                      ) -> dict[str, float]:
    """Each device's energy over the whole run (J); of `run_steps` when given, else of the model's steps."""
    totals: dict[str, list[float]] = {}
    for step in steps(scenario, start_ms) if run_steps is None else run_steps:
        for device, j in step.device_j.items():
            totals.setdefault(device, []).append(j)
    return {device: math.fsum(js) for device, js in totals.items()}


def figures(energy_kwh: dict[str, float], factors: Factors) -> dict[str, float | None]:
    """The metrics of a set of bins from their summed energies (kWh)."""
    e = energy_kwh
    facility = e["grid"] + e["green_traded"] + e["pv"] + e["diesel"]
    green = e["pv"] + e["green_traded"]
    diesel_kg = e["diesel"] * factors.diesel
    location_kg = (e["grid"] + e["green_traded"]) * factors.grid + diesel_kg
    market_kg = e["grid"] * factors.residual + diesel_kg
    return {
        **{f"e_{kind}_kwh": kwh for kind, kwh in e.items()},
        "e_facility_kwh": facility,
        "green_kwh": green,
        "green_ratio": min(1.0, green / facility) if facility > 0 else None,
        "pue": _ratio(facility, e["it"]),
        "pue1": _ratio(facility, e["ups_output"]),
        "ppue_cooling": _ratio(e["it"] + e["cooling"], e["it"]),
        "carbon_location_kg": location_kg,
        "carbon_market_kg": market_kg,
        "cue_location": _ratio(location_kg, e["ups_output"]),
        "cue_market": _ratio(market_kg, e["ups_output"]),
    }


def summed(bins: Iterable[dict[str, float]]) -> dict[str, float]:
    """Energies (kWh per kind) of several bins added up."""
    selected = list(bins)
    return {kind: math.fsum(b[kind] for b in selected) for kind in KINDS}


def ground_truth(scenario: Scenario, start_ms: int, run_steps: Iterable[Step] | None = None) -> dict:
    """The truth of a run: factors, and figures per bin, per UTC hour, per local day and for the whole run.

    `run_steps` replaces the model's step energies: the Modbus mode passes the meters' energies as their
    registers hold them (simulator.modbus.registered_steps)."""
    factors = site_factors(scenario)
    run_steps = list(steps(scenario, start_ms) if run_steps is None else run_steps)
    bins = bin_energies(scenario, start_ms, run_steps)
    groups = {
        "hours": lambda s: s - s % HOUR_MS,
        "days": lambda s: _local_date(scenario, s),
    }
    periods = {name: _grouped(bins, key, factors) for name, key in groups.items()}
    return {
        "site": scenario.site,
        "timezone": scenario.timezone,
        "start_ms": start_ms,
        "end_ms": start_ms + scenario.duration_ms,
        "step_s": scenario.step_s,
        "factors": {"grid": factors.grid, "residual": factors.residual, "diesel": factors.diesel,
                    "year": factors.year, "region": str(scenario.grid_region)},
        "bins": [{"start_ms": s, "bins": 1, **figures(e, factors)} for s, e in sorted(bins.items())],
        **periods,
        "run": {"bins": len(bins), **figures(summed(bins.values()), factors)},
        "device_energy_j": device_energies_j(scenario, start_ms, run_steps),
    }


def write_truth(path: Path, truth: dict) -> None:
    """Write the truth as indented JSON."""
    Path(path).write_text(json.dumps(truth, indent=1) + "\n", encoding="utf-8")


def _grouped(bins: dict[int, dict[str, float]], key, factors: Factors) -> list[dict]:
    groups: dict[object, list[dict[str, float]]] = {}
    for start, energy in sorted(bins.items()):
        groups.setdefault(key(start), []).append(energy)
    return [{"period": label, "bins": len(members), **figures(summed(members), factors)}
            for label, members in groups.items()]


def _local_date(scenario: Scenario, ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).astimezone(scenario.zone).date().isoformat()


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator > 0 else None
