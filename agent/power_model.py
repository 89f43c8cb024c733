"""Pure power arithmetic for estimates: the CPU fallback model and the server input estimate.

Server input power is what PUE's IT energy needs (power at the equipment input, not inside the CPU).
The agent cannot measure it, so it estimates it from what it can see and labels it Method.MODEL.
"""

from __future__ import annotations

from collections.abc import Iterable

from common.contract import Component, Reading

# RAPL psys covers the whole SoC platform (packages and DRAM); core and uncore sit inside a package.
_PLATFORM = {Component.PSYS}
_PACKAGE_LEVEL = {Component.CPU_PACKAGE, Component.DRAM}


def cpu_model_power_w(util: float, tdp_w: float, sockets: int, idle_fraction: float) -> float:
    """Linear CPU power model: each socket draws idle_fraction x TDP at rest and TDP at full load."""
    if not 0 <= util <= 1:
        raise ValueError(f"util must be within 0..1, got {util}")
    per_socket = tdp_w * (idle_fraction + (1 - idle_fraction) * util)
    return per_socket * sockets


def components_for_server(readings: Iterable[Reading]) -> list[Reading]:
    """The readings that add up to the host's component power without counting anything twice.

    psys when the platform reports it, else CPU packages plus DRAM; core and uncore never (they are
    inside the package); plus every GPU, and the CPU model estimate when RAPL is absent.
    """
    readings = list(readings)
    has_psys = any(r.component in _PLATFORM for r in readings)
    cpu_level = _PLATFORM if has_psys else _PACKAGE_LEVEL
    return [r for r in readings if r.component in cpu_level or r.component == Component.GPU]


def server_input_w(component_w: float, overhead_w: float, psu_efficiency: float) -> float:
    """Estimated power at the server's input: (components + platform overhead) / PSU efficiency."""
    if not 0 < psu_efficiency <= 1:
        raise ValueError(f"psu_efficiency must be within (0, 1], got {psu_efficiency}")
    return (component_w + overhead_w) / psu_efficiency
