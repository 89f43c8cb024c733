"""open_sensors: what the agent picks on a machine with RAPL and GPUs, with neither, or with NVML turned off."""

from __future__ import annotations

import logging
from pathlib import Path

from agent.config import AgentConfig
from agent.sensors import open_sensors
from agent.sensors.host import CpuModelSensor, HostStatsReader
from tests.fakes import pynvml as fake_nvml

POWERCAP = Path(__file__).parent / "testdata" / "powercap"


def config(powercap: Path, nvml: bool = True) -> AgentConfig:
    return AgentConfig.model_validate({
        "identity": {"site": "dc1", "room": "a", "rack": "r1", "host": "h1"},
        "rapl": {"root": str(powercap)},
        "nvml": {"enabled": nvml},
    })


def test_rapl_and_eight_gpus(monkeypatch):
    fake_nvml.install(monkeypatch, fake_nvml.make_gpus(8))
    sensors, unavailable = open_sensors(config(POWERCAP / "two-socket-dram"), HostStatsReader())
    assert [s.name for s in sensors] == ["rapl", "nvml"] and unavailable == {}
    assert len(sensors[1].gpus) == 8
    readings = [r for s in sensors for r in s.read(1.0)]
    assert sum(r.component == "gpu" for r in readings) == 8


def test_no_rapl_and_no_driver_falls_back_to_the_cpu_model(monkeypatch, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    controller = fake_nvml.install(monkeypatch, [])
    controller.init_error = fake_nvml.NVMLError_LibraryNotFound
    sensors, unavailable = open_sensors(config(tmp_path / "no-powercap"), HostStatsReader())
    assert len(sensors) == 1 and isinstance(sensors[0], CpuModelSensor)
    assert unavailable == {"rapl": "absent", "nvml": "absent"}
    events = [r.getMessage() for r in caplog.records]
    assert "cpu-power-estimated" in events and "no-gpu-section" in events


def test_nvml_disabled_is_not_touched(monkeypatch):
    controller = fake_nvml.install(monkeypatch, fake_nvml.make_gpus(2))
    sensors, unavailable = open_sensors(config(POWERCAP / "package-only", nvml=False), HostStatsReader())
    assert [s.name for s in sensors] == ["rapl"] and unavailable == {"nvml": "disabled"}
    assert sum(controller.calls.values()) == 0
