"""Table tests of the power estimates in agent/power_model.py and the CPU model sensor in agent/sensors/host.py."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from agent.power_model import components_for_server, cpu_model_power_w, server_input_w
from agent.sensors.host import CpuModelSensor
from common.contract import Component, Method, Reading


def reading(component: Component, reading_id: str, power_w: float = 10.0) -> Reading:
    return Reading(component=component, id=reading_id, method=Method.RAPL, power_w=power_w)


@pytest.mark.parametrize(
    ("util", "tdp_w", "sockets", "idle_fraction", "expected_w"),
    [
        (0.0, 200, 2, 0.3, 120.0),
        (0.5, 200, 2, 0.3, 260.0),
        (1.0, 200, 2, 0.3, 400.0),
        (0.25, 100, 1, 0.2, 40.0),  # 100 x (0.2 + 0.8 x 0.25)
        (0.7, 150, 4, 0.0, 420.0),  # no idle power: purely proportional
        (0.7, 150, 1, 1.0, 150.0),  # idle == TDP: flat
    ],
)
def test_cpu_model_power(util: float, tdp_w: float, sockets: int, idle_fraction: float, expected_w: float) -> None:
    assert cpu_model_power_w(util, tdp_w, sockets, idle_fraction) == pytest.approx(expected_w)


@pytest.mark.parametrize("util", [-0.01, 1.01, math.nan, math.inf])
def test_cpu_model_power_refuses_util_outside_0_to_1(util: float) -> None:
    with pytest.raises(ValueError, match="util"):
        cpu_model_power_w(util, 200, 2, 0.3)


PKG0 = reading(Component.CPU_PACKAGE, "package-0")
PKG1 = reading(Component.CPU_PACKAGE, "package-1")
CORE0 = reading(Component.CPU_CORE, "package-0-core")
UNCORE0 = reading(Component.CPU_UNCORE, "package-0-uncore")
DRAM0 = reading(Component.DRAM, "package-0-dram")
PSYS = reading(Component.PSYS, "psys")
GPU0 = reading(Component.GPU, "GPU-0")
GPU1 = reading(Component.GPU, "GPU-1")
CPU_MODEL = Reading(component=Component.CPU_PACKAGE, id="cpu-model", method=Method.MODEL, power_w=50.0)


@pytest.mark.parametrize(
    ("readings", "expected"),
    [
        ([PSYS, PKG0, PKG1, CORE0, UNCORE0, DRAM0, GPU0, GPU1], [PSYS, GPU0, GPU1]),
        ([PKG0, CORE0, UNCORE0, DRAM0, PKG1, GPU0], [PKG0, DRAM0, PKG1, GPU0]),
        ([PKG0, CORE0, UNCORE0], [PKG0]),
        ([CPU_MODEL, GPU0], [CPU_MODEL, GPU0]),
        ([GPU0, GPU1], [GPU0, GPU1]),
        ([PSYS], [PSYS]),
        ([CORE0, UNCORE0], []),
        ([], []),
    ],
    ids=["psys-wins", "packages-dram-gpu", "package-only", "cpu-model", "gpus-only", "psys-only", "core-uncore-never",
         "empty"],
)
def test_components_for_server(readings: list[Reading], expected: list[Reading]) -> None:
    assert components_for_server(iter(readings)) == expected


@pytest.mark.parametrize(
    ("component_w", "overhead_w", "efficiency", "expected_w"),
    [
        (100, 60, 0.8, 200.0),
        (0, 60, 0.8, 75.0),
        (0, 0, 0.5, 0.0),
        (440, 60, 1.0, 500.0),
        (334, 42, 0.94, 400.0),
    ],
)
def test_server_input(component_w: float, overhead_w: float, efficiency: float, expected_w: float) -> None:
    assert server_input_w(component_w, overhead_w, efficiency) == pytest.approx(expected_w)


@pytest.mark.parametrize("efficiency", [0.0, -0.5, 1.01, math.nan])
def test_server_input_refuses_efficiency_outside_0_to_1(efficiency: float) -> None:
    with pytest.raises(ValueError, match="psu_efficiency"):
        server_input_w(100, 60, efficiency)


def test_cpu_model_sensor_integrates_its_power_over_time() -> None:
    host = SimpleNamespace(last_util=0.0)
    sensor = CpuModelSensor(host, tdp_w=200, sockets=2, idle_fraction=0.3)

    first = sensor.read(10.0)  # like a counter: the first read starts the count, no interval, no power
    assert [(r.component, r.method, r.power_w, r.energy_j) for r in first] == [
        (Component.CPU_PACKAGE, Method.MODEL, None, 0.0)]
    assert first[0].estimated

    host.last_util = 0.5
    assert sensor.read(11.0)[0].power_w == pytest.approx(260.0)  # the interval's util sets its power
    host.last_util = 1.0
    last = sensor.read(13.0)[0]
    assert last.power_w == pytest.approx(400.0)
    assert last.energy_j == pytest.approx(260.0 * 1 + 400.0 * 2)
