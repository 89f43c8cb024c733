"""Power sources behind one interface (base.Sensor): RAPL, NVML, and the CPU model fallback.

`open_sensors` tries each hardware reader once at start, says clearly in one log line what it found or why
not, and falls back to the CPU model when RAPL cannot be read.
"""

from __future__ import annotations

import logging

from agent.config import AgentConfig
from agent.sensors.base import Sensor
from agent.sensors.host import CpuModelSensor, HostStatsReader
from agent.sensors.nvml import NvmlSensor, NvmlUnavailable
from agent.sensors.rapl import RaplSensor, RaplUnavailable
from common.logs import event

log = logging.getLogger(__name__)


def open_sensors(config: AgentConfig, host: HostStatsReader) -> tuple[list[Sensor], dict[str, str]]:
    """The sensors this machine supports, CPU first, and the state of each one it could not open (for the
    status message: "absent", "permission-denied", "disabled"). Raises ValueError for an unusable
    sampling interval."""
    sensors: list[Sensor] = []
    unavailable: dict[str, str] = {}
    rapl_problem = "disabled in config (rapl.enabled = false)"
    unavailable["rapl"] = "disabled"
    if config.rapl.enabled:
        try:
            sensors.append(RaplSensor.open(config.rapl.root, config.rapl.max_power_w, config.sampling.interval_s))
            event(log, logging.INFO, "rapl-found", zones=len(sensors[0].zones))
            rapl_problem = ""
            del unavailable["rapl"]
        except RaplUnavailable as exc:
            rapl_problem = str(exc)
            unavailable["rapl"] = exc.state
    if rapl_problem:
        model = config.cpu_model
        sensors.append(CpuModelSensor(host, model.tdp_w, model.sockets, model.idle_fraction))
        event(log, logging.WARNING, "cpu-power-estimated", why=rapl_problem,
              model=f"{model.sockets} x {model.tdp_w:g} W TDP, idle {model.idle_fraction:.0%}",
              note="CPU power and server input are reported with method=model")
    if config.nvml.enabled:
        try:
            sensors.append(NvmlSensor.open(reinit_interval_s=config.nvml.reinit_interval_s))
            event(log, logging.INFO, "gpus-found", count=len(sensors[-1].gpus))
        except NvmlUnavailable as exc:
            event(log, logging.INFO, "no-gpu-section", why=str(exc))
            unavailable["nvml"] = exc.state
    else:
        unavailable["nvml"] = "disabled"
    return sensors, unavailable
