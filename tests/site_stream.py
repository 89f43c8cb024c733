"""A small site for collector tests: its site configuration, and contract messages for hosts and meters
drawing constant power, so every stored figure can be computed by hand."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from common.contract import (
    Component,
    EnergySource,
    HostStats,
    Method,
    MeterRole,
    Reading,
    Sample,
    SampleBatch,
    encode,
)

MIN_MS = 60_000
BIN_MS = 15 * MIN_MS
HOUR_MS = 4 * BIN_MS

SITE_YAML = """
sites:
  - id: dc1
    name: "Test site"
    timezone: Asia/Shanghai
    grid_region: central
    grid_factor_year: 2023
    rooms:
      - id: hall-a
        racks:
          - id: r01
            hosts: [h01, h02]
    meters:
      - id: utility-1
        role: facility-input
        source: grid
      - id: pv-1
        role: onsite-generation
        source: pv
"""


@dataclass(frozen=True)
class Device:
    room: str
    rack: str
    name: str
    kind: str  # host or meter
    watts: float
    role: MeterRole | None = None
    source: EnergySource | None = None

    def topic(self, root: str = "dcem") -> str:
        return f"{root}/v1/dc1/{self.room}/{self.rack}/{self.name}/samples"


HOSTS = [Device("hall-a", "r01", "h01", "host", 500.0), Device("hall-a", "r01", "h02", "host", 300.0)]
METERS = [Device("facility", "main", "utility-1", "meter", 900.0, MeterRole.FACILITY_INPUT, EnergySource.GRID),
          Device("facility", "main", "pv-1", "meter", 300.0, MeterRole.ONSITE_GENERATION, EnergySource.PV)]
DEVICES = HOSTS + METERS


def write_site_config(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "site.yaml"
    path.write_text(SITE_YAML)
    return path


def sample(device: Device, seq: int, ts_ms: int, start_ms: int, step_ms: int) -> Sample:
    """The device's sample at ts_ms: constant power since start_ms, so energy = watts x elapsed."""
    energy_j = device.watts * (ts_ms - start_ms) / 1000
    if device.kind == "host":
        readings = [Reading(component=Component.SERVER_INPUT, id="input", method=Method.MODEL,
                            power_w=device.watts, energy_j=energy_j)]
        host = HostStats(cpu_util=0.5, logical_cpus=8, mem_used_bytes=1, mem_total_bytes=2)
    else:
        readings = [Reading(component=Component.METER, id="main", method=Method.METER, power_w=device.watts,
                            energy_j=energy_j, role=device.role, source=device.source)]
        host = None
    return Sample(seq=seq, ts_ms=ts_ms, interval_s=step_ms / 1000, readings=readings, host=host)


def messages(device: Device, session: str, start_ms: int, end_ms: int, step_ms: int = MIN_MS,
             per_message: int = 1) -> list[tuple[str, bytes]]:
    """(topic, payload) for samples every step_ms from start_ms to end_ms inclusive."""
    samples = [sample(device, seq, ts, start_ms, step_ms)
               for seq, ts in enumerate(range(start_ms, end_ms + 1, step_ms))]
    out = []
    for i in range(0, len(samples), per_message):
        batch = SampleBatch(kind=device.kind, session=session, samples=samples[i:i + per_message])
        out.append((device.topic(), encode(batch)))
    return out
