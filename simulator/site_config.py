"""The collector's site configuration for a scenario: every simulated host and meter, as YAML."""

from __future__ import annotations

from pathlib import Path

import yaml

from simulator.model import hosts, meters
from simulator.scenario import Scenario


def site_config(scenario: Scenario) -> dict:
    """The site config mapping (collector/site.py format); meters sit under the facility room and rack defaults."""
    racks: dict[str, dict[str, list[str]]] = {}
    for host in hosts(scenario):
        racks.setdefault(host.room, {}).setdefault(host.rack, []).append(host.id)
    site = {
        "id": scenario.site,
        "name": scenario.name,
        "timezone": scenario.timezone,
        "grid_region": str(scenario.grid_region),
        "rooms": [{"id": room, "racks": [{"id": rack, "hosts": ids} for rack, ids in rack_map.items()]}
                  for room, rack_map in racks.items()],
        "meters": [{"id": m.id, "role": str(m.role), **({"source": str(m.source)} if m.source else {})}
                   for m in meters(scenario)],
    }
    if scenario.grid_year is not None:
        site["grid_factor_year"] = scenario.grid_year
    return {"sites": [site]}


def write_site_config(path: Path, scenario: Scenario) -> Path:
    """Write the collector site config YAML for the scenario; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(site_config(scenario), sort_keys=False), encoding="utf-8")
    return path
