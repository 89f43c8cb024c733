"""Host facts from psutil, and the CPU power model used where RAPL is absent (VMs, no permission)."""

from __future__ import annotations

import psutil

from agent.energy import integrate_power_j
from agent.power_model import cpu_model_power_w
from common.contract import Component, HostStats, Method, Reading


class HostStatsReader:
    """CPU utilisation (from cpu_times deltas, so no other psutil caller disturbs it), frequency, memory."""

    def __init__(self) -> None:
        self._previous = psutil.cpu_times()
        self._logical_cpus = psutil.cpu_count(logical=True) or 1
        self.last_util = 0.0

    def read(self) -> HostStats:
        current = psutil.cpu_times()
        self.last_util = _busy_fraction(self._previous, current)
        self._previous = current
        memory = psutil.virtual_memory()
        try:
            frequency = psutil.cpu_freq()
        except (OSError, NotImplementedError):
            frequency = None
        return HostStats(
            cpu_util=self.last_util,
            cpu_freq_mhz=frequency.current if frequency and frequency.current > 0 else None,
            logical_cpus=self._logical_cpus,
            mem_used_bytes=memory.total - memory.available,
            mem_total_bytes=memory.total,
        )


def _busy_fraction(before, after) -> float:
    idle = (after.idle + getattr(after, "iowait", 0.0)) - (before.idle + getattr(before, "iowait", 0.0))
    total = sum(after) - sum(before)
    if total <= 0:
        return 0.0
    return min(1.0, max(0.0, 1.0 - idle / total))


class CpuModelSensor:
    """CPU package power estimated from utilisation and TDP; every reading says Method.MODEL."""

    name = "cpu-model"
    state = "fallback"

    def __init__(self, host: HostStatsReader, tdp_w: float, sockets: int, idle_fraction: float):
        self._host = host
        self._tdp_w = tdp_w
        self._sockets = sockets
        self._idle_fraction = idle_fraction
        self._energy_j = 0.0
        self._last_s: float | None = None

    def read(self, now_s: float) -> list[Reading]:
        """Like a counter, the first read only starts the count: no interval yet, so no power."""
        power_w = None
        if self._last_s is not None:
            power_w = cpu_model_power_w(self._host.last_util, self._tdp_w, self._sockets, self._idle_fraction)
            self._energy_j += integrate_power_j(power_w, now_s - self._last_s)
        self._last_s = now_s
        return [Reading(component=Component.CPU_PACKAGE, id="cpu-model", method=Method.MODEL,
                        power_w=power_w, energy_j=self._energy_j)]

    def close(self) -> None:
        pass
