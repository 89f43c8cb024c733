"""A fake `pynvml` (nvidia-ml-py) backed by in-memory GPUs, for machines without an NVIDIA driver.

Errors, constants and ctypes structures are the real module's, so `except pynvml.NVMLError_NotSupported`
means the same thing as in production; only the functions the NVML sensor calls are faked. Tests call
`install(monkeypatch, gpus)`, which puts this module in sys.modules["pynvml"] and returns the controller.
"""

from __future__ import annotations

import functools
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pynvml as _real  # imported before install() shadows it in sys.modules

globals().update(
    {name: value for name, value in vars(_real).items() if name.startswith(("NVML_", "NVMLError", "c_nvml"))}
)

MILLIWATTS_PER_WATT = 1000


@dataclass
class FakeGpu:
    """One GPU. `failing` maps a pynvml function name to the NVMLError subclass it raises."""

    uuid: str
    name: str = "NVIDIA H100 80GB HBM3"
    energy_mj: int = 0
    power_mw: int = 0
    average_power_mw: int = 0
    limit_mw: int = 700_000
    util_percent: int = 50
    temp_c: int = 60
    mem_used: int = 10 * 2**30
    mem_total: int = 80 * 2**30
    supports_energy: bool = True
    supports_field_values: bool = True
    supports_average_field: bool = True
    lost: bool = False
    failing: dict[str, type[_real.NVMLError]] = field(default_factory=dict)

    def run(self, seconds: float, watts: float) -> None:
        """Draw `watts` steadily for `seconds`: advance the energy counter and set both power readings."""
        self.energy_mj += round(watts * seconds * MILLIWATTS_PER_WATT)
        self.power_mw = self.average_power_mw = round(watts * MILLIWATTS_PER_WATT)


@dataclass(frozen=True)
class FakeHandle:
    gpu: FakeGpu
    session: int  # handles from before an nvmlShutdown are stale


@dataclass
class FakeNvml:
    """The controller: the GPUs, the driver's condition and a count of every pynvml call."""

    gpus: list[FakeGpu]
    init_error: type[_real.NVMLError] | None = None
    initialised: bool = False
    session: int = 0
    calls: Counter[str] = field(default_factory=Counter)


_active: FakeNvml | None = None


def install(monkeypatch: Any, gpus: list[FakeGpu]) -> FakeNvml:
    """Make `import pynvml` return this fake, driving `gpus`, for the current test."""
    controller = FakeNvml(gpus)
    monkeypatch.setattr(sys.modules[__name__], "_active", controller)
    monkeypatch.setitem(sys.modules, "pynvml", sys.modules[__name__])
    return controller


def make_gpus(count: int, **attributes: Any) -> list[FakeGpu]:
    """`count` GPUs with distinct UUIDs, all with the given attributes."""
    return [FakeGpu(uuid=f"GPU-{index:08d}-fake", **attributes) for index in range(count)]


def _api(function: Callable[..., Any]) -> Callable[..., Any]:
    """Count the call, and refuse it like NVML does before nvmlInit."""

    @functools.wraps(function)
    def counted(*args: Any) -> Any:
        nvml = _controller()
        nvml.calls[function.__name__] += 1
        if function.__name__ != "nvmlInit" and not nvml.initialised:
            raise _real.NVMLError_Uninitialized()
        return function(*args)

    return counted


def _controller() -> FakeNvml:
    assert _active is not None, "call install() first"
    return _active


def _gpu(handle: FakeHandle, function: str) -> FakeGpu:
    if handle.session != _controller().session:
        raise _real.NVMLError_Uninitialized()
    gpu = handle.gpu
    if gpu.lost:
        raise _real.NVMLError_GpuIsLost()
    if function in gpu.failing:
        raise gpu.failing[function]()
    return gpu


@_api
def nvmlInit() -> None:
    nvml = _controller()
    if nvml.init_error is not None:
        raise nvml.init_error()
    nvml.initialised = True


@_api
def nvmlShutdown() -> None:
    nvml = _controller()
    nvml.initialised = False
    nvml.session += 1


@_api
def nvmlDeviceGetCount() -> int:
    return len(_controller().gpus)


@_api
def nvmlDeviceGetHandleByIndex(index: int) -> FakeHandle:
    nvml = _controller()
    return FakeHandle(nvml.gpus[index], nvml.session)


@_api
def nvmlDeviceGetHandleByUUID(uuid: str) -> FakeHandle:
    nvml = _controller()
    for gpu in nvml.gpus:
        if gpu.uuid == uuid:
            if gpu.lost:
                raise _real.NVMLError_GpuIsLost()
            return FakeHandle(gpu, nvml.session)
    raise _real.NVMLError_NotFound()


@_api
def nvmlDeviceGetUUID(handle: FakeHandle) -> str:
    return _gpu(handle, "nvmlDeviceGetUUID").uuid


@_api
def nvmlDeviceGetName(handle: FakeHandle) -> str:
    return _gpu(handle, "nvmlDeviceGetName").name


@_api
def nvmlDeviceGetTotalEnergyConsumption(handle: FakeHandle) -> int:
    gpu = _gpu(handle, "nvmlDeviceGetTotalEnergyConsumption")
    if not gpu.supports_energy:
        raise _real.NVMLError_NotSupported()
    return gpu.energy_mj


@_api
def nvmlDeviceGetFieldValues(handle: FakeHandle, field_ids: list[int]) -> Any:
    """The real return shape: a ctypes array of c_nvmlFieldValue_t, each with its own nvmlReturn."""
    gpu = _gpu(handle, "nvmlDeviceGetFieldValues")
    has_average = gpu.supports_field_values and gpu.supports_average_field
    supported = {
        _real.NVML_FI_DEV_POWER_INSTANT: (gpu.supports_field_values, gpu.power_mw),
        _real.NVML_FI_DEV_POWER_AVERAGE: (has_average, gpu.average_power_mw),
    }
    values = (_real.c_nvmlFieldValue_t * len(field_ids))()
    for value, field_id in zip(values, field_ids):
        value.fieldId = field_id
        is_supported, milliwatts = supported.get(field_id, (False, 0))
        if is_supported:
            value.nvmlReturn = _real.NVML_SUCCESS
            value.valueType = _real.NVML_VALUE_TYPE_UNSIGNED_INT
            value.value.uiVal = milliwatts
        else:
            value.nvmlReturn = _real.NVML_ERROR_NOT_SUPPORTED
    return values


@_api
def nvmlDeviceGetPowerUsage(handle: FakeHandle) -> int:
    return _gpu(handle, "nvmlDeviceGetPowerUsage").average_power_mw


@_api
def nvmlDeviceGetEnforcedPowerLimit(handle: FakeHandle) -> int:
    return _gpu(handle, "nvmlDeviceGetEnforcedPowerLimit").limit_mw


@_api
def nvmlDeviceGetUtilizationRates(handle: FakeHandle) -> Any:
    utilization = _real.c_nvmlUtilization_t()
    utilization.gpu = _gpu(handle, "nvmlDeviceGetUtilizationRates").util_percent
    return utilization


@_api
def nvmlDeviceGetTemperature(handle: FakeHandle, sensor: int) -> int:
    assert sensor == _real.NVML_TEMPERATURE_GPU
    return _gpu(handle, "nvmlDeviceGetTemperature").temp_c


@_api
def nvmlDeviceGetMemoryInfo(handle: FakeHandle) -> Any:
    gpu = _gpu(handle, "nvmlDeviceGetMemoryInfo")
    memory = _real.c_nvmlMemory_t()
    memory.used, memory.total, memory.free = gpu.mem_used, gpu.mem_total, gpu.mem_total - gpu.mem_used
    return memory
