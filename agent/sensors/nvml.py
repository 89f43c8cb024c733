"""NVIDIA GPU power, energy, utilisation, temperature and memory through NVML (nvidia-ml-py, module `pynvml`).

pynvml is imported only when the sensor is opened, so the agent runs on hosts without an NVIDIA driver.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from agent.energy import integrate_power_j
from common.contract import Component, Method, Reading

log = logging.getLogger(__name__)

DEFAULT_REINIT_INTERVAL_S = 60.0
MAX_NAME_LENGTH = 96
INSTANT_POWER = "instant power"
AVERAGE_POWER = "average power"


class NvmlUnavailable(Exception):
    """NVML cannot report any GPU here, so the agent omits the GPU section.

    `state` goes into the agent status: "absent" (no driver, or no GPU), "permission-denied", or "error".
    """

    def __init__(self, state: str, message: str):
        super().__init__(message)
        self.state = state


@dataclass
class _Gpu:
    """One physical GPU and what the sensor remembers about it between reads."""

    uuid: str
    name: str
    handle: Any  # None while the GPU is lost
    method: Method = Method.NVML_ENERGY
    unsupported: set[str] = field(default_factory=set)
    energy_j: float = 0.0  # cumulative since the agent's session started
    counter_mj: int | None = None  # the driver's energy counter at the last read
    read_s: float | None = None  # when energy_j was last brought up to date; None means no baseline yet
    lost_since_s: float | None = None

    def add_counter(self, now_s: float, counter_mj: int) -> float | None:
        """Add the counter's increase since the last read; return the mean power over that interval."""
        previous_mj, previous_s = self.counter_mj, self.read_s
        self.counter_mj, self.read_s = counter_mj, now_s
        if previous_mj is None or previous_s is None:
            return None
        # A lower value means the driver restarted its counter from 0 during the interval.
        delta_j = (counter_mj - previous_mj if counter_mj >= previous_mj else counter_mj) / 1000
        self.energy_j += delta_j
        return delta_j / (now_s - previous_s)

    def add_power(self, now_s: float, power_w: float | None) -> float | None:
        """Integrate power_w over the interval since the last read (it is that interval's mean) and return it."""
        if power_w is None:
            return None
        if self.read_s is not None:
            self.energy_j += integrate_power_j(power_w, now_s - self.read_s)
        self.read_s = now_s
        return power_w

    def restart_baseline(self) -> None:
        """Count energy from the next read on, on top of energy_j (a lost GPU's counter may have reset)."""
        self.counter_mj = self.read_s = None


class NvmlSensor:
    """One Reading per physical NVIDIA GPU, identified by its UUID. Create it with `NvmlSensor.open()`.

    Energy comes from the driver's total-energy counter (Volta and newer, Method.NVML_ENERGY) or, on a GPU
    without one, from integrating its 1 s average power (Method.NVML_POWER); the first read sets the baseline
    and reports energy_j 0.0. Power is reported both instantaneous and as the driver's 1 s average.

    MIG: power and energy exist only per physical GPU, and NVML's device indices list only physical GPUs
    (MIG instances hang off them and are never visited), so each Reading describes a whole board.

    A value the GPU does not offer (NotSupported, NoPermission) is left out and never asked for again.
    A GPU that is lost (GpuIsLost or Unknown) gets a state="lost" Reading while the others carry on; NVML is
    re-initialised at most every reinit_interval_s to bring it back, and its energy then continues from where
    it stopped. `state` is "ok", "fallback" (some GPU has no energy counter) or "degraded" (some GPU lost).
    """

    name = "nvml"

    def __init__(self, nvml: ModuleType, gpus: list[_Gpu], reinit_interval_s: float):
        self.state = "ok"
        self._nvml = nvml
        self._gpus = gpus
        self._reinit_interval_s = reinit_interval_s
        self._reinit_due_s: float | None = None
        self._last_read_s: float | None = None
        self._lost_errors = (nvml.NVMLError_GpuIsLost, nvml.NVMLError_Unknown)
        self._unsupported_errors = (
            nvml.NVMLError_NotSupported,
            nvml.NVMLError_NoPermission,
            nvml.NVMLError_FunctionNotFound,
        )
        self._power_field_ids = [nvml.NVML_FI_DEV_POWER_INSTANT, nvml.NVML_FI_DEV_POWER_AVERAGE]
        self._value_members = {
            nvml.NVML_VALUE_TYPE_DOUBLE: "dVal",
            nvml.NVML_VALUE_TYPE_UNSIGNED_INT: "uiVal",
            nvml.NVML_VALUE_TYPE_UNSIGNED_LONG: "ulVal",
            nvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG: "ullVal",
            nvml.NVML_VALUE_TYPE_SIGNED_LONG_LONG: "sllVal",
            nvml.NVML_VALUE_TYPE_SIGNED_INT: "siVal",
            nvml.NVML_VALUE_TYPE_UNSIGNED_SHORT: "usVal",
        }

    @property
    def gpus(self) -> tuple[str, ...]:
        """The uuids of the physical GPUs this sensor reads."""
        return tuple(gpu.uuid for gpu in self._gpus)

    @classmethod
    def open(cls, reinit_interval_s: float = DEFAULT_REINIT_INTERVAL_S) -> NvmlSensor:
        """Initialise NVML and find the physical GPUs; raise NvmlUnavailable when there is nothing to read."""
        try:
            import pynvml as nvml
        except ImportError:
            raise NvmlUnavailable("absent", "nvidia-ml-py (module pynvml) is not installed") from None
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as exc:
            raise _unavailable(nvml, exc) from None
        try:
            gpus = _physical_gpus(nvml)
        except nvml.NVMLError as exc:
            _shutdown(nvml)
            raise _unavailable(nvml, exc) from None
        if not gpus:
            _shutdown(nvml)
            raise NvmlUnavailable("absent", "the NVIDIA driver is loaded but reports no usable GPU")
        log.info("NVML: %d GPU(s): %s", len(gpus), ", ".join(f"{gpu.name} {gpu.uuid}" for gpu in gpus))
        return cls(nvml, gpus, reinit_interval_s)

    def read(self, now_s: float) -> list[Reading]:
        """One Reading per GPU for the interval ending at now_s (monotonic seconds)."""
        if self._last_read_s is not None and now_s <= self._last_read_s:
            raise ValueError(f"now_s={now_s} is not later than the previous read at {self._last_read_s}")
        self._last_read_s = now_s
        if self._reinit_due_s is not None and now_s >= self._reinit_due_s:
            self._reinit(now_s)
        readings = []
        for gpu in self._gpus:
            if gpu.handle is not None:
                try:
                    readings.append(self._read_gpu(gpu, now_s))
                    continue
                except self._lost_errors as exc:
                    self._mark_lost(gpu, now_s, exc)
            readings.append(
                Reading(component=Component.GPU, id=gpu.uuid, method=gpu.method, name=gpu.name, state="lost")
            )
        self.state = self._summary()
        return readings

    def close(self) -> None:
        """Shut NVML down."""
        _shutdown(self._nvml)

    def _read_gpu(self, gpu: _Gpu, now_s: float) -> Reading:
        nvml, handle = self._nvml, gpu.handle
        instant_w, average_w = self._power_w(gpu)
        power_w = self._update_energy(gpu, now_s, average_w if average_w is not None else instant_w)
        limit_mw = self._optional(gpu, "power limit", nvml.nvmlDeviceGetEnforcedPowerLimit, handle)
        utilization = self._optional(gpu, "utilisation", nvml.nvmlDeviceGetUtilizationRates, handle)
        temp_c = self._optional(gpu, "temperature", nvml.nvmlDeviceGetTemperature, handle, nvml.NVML_TEMPERATURE_GPU)
        memory = self._optional(gpu, "memory", nvml.nvmlDeviceGetMemoryInfo, handle)
        if gpu.lost_since_s is not None:
            log.info("GPU %s (%s) is back after %.0f s", gpu.uuid, gpu.name, now_s - gpu.lost_since_s)
            gpu.lost_since_s = None
        return Reading(
            component=Component.GPU,
            id=gpu.uuid,
            method=gpu.method,
            name=gpu.name,
            power_w=power_w,
            energy_j=gpu.energy_j if gpu.read_s is not None else None,
            power_instant_w=instant_w,
            power_avg_w=average_w,
            power_limit_w=limit_mw / 1000 if limit_mw is not None else None,
            util=utilization.gpu / 100 if utilization is not None else None,
            temp_c=temp_c,
            mem_used_bytes=memory.used if memory is not None else None,
            mem_total_bytes=memory.total if memory is not None else None,
        )

    def _power_w(self, gpu: _Gpu) -> tuple[float | None, float | None]:
        """(instantaneous, 1 s average) power in W; without the power field values, GetPowerUsage as the average."""
        nvml = self._nvml
        if not {INSTANT_POWER, AVERAGE_POWER} <= gpu.unsupported:
            fields = self._optional(
                gpu, "power field values", nvml.nvmlDeviceGetFieldValues, gpu.handle, self._power_field_ids
            )
            if fields is not None:
                instant_w = self._optional(gpu, INSTANT_POWER, self._field_w, fields[0])
                average_w = self._optional(gpu, AVERAGE_POWER, self._field_w, fields[1])
                if instant_w is not None or average_w is not None:
                    return instant_w, average_w
        usage_mw = self._optional(gpu, "power usage", nvml.nvmlDeviceGetPowerUsage, gpu.handle)
        return None, usage_mw / 1000 if usage_mw is not None else None

    def _field_w(self, value: Any) -> float:
        """Watts from one c_nvmlFieldValue_t holding milliwatts; raises the field's own NVML error."""
        if value.nvmlReturn != self._nvml.NVML_SUCCESS:
            raise self._nvml.NVMLError(value.nvmlReturn)
        return getattr(value.value, self._value_members[value.valueType]) / 1000

    def _update_energy(self, gpu: _Gpu, now_s: float, sampled_power_w: float | None) -> float | None:
        """Bring gpu.energy_j up to now_s; return the interval's mean power, or None when it is unknown."""
        if gpu.method is Method.NVML_ENERGY:
            counter_mj = self._optional(
                gpu, "energy counter", self._nvml.nvmlDeviceGetTotalEnergyConsumption, gpu.handle
            )
            if counter_mj is not None:
                return gpu.add_counter(now_s, counter_mj)
            if "energy counter" not in gpu.unsupported:
                return None
            gpu.method = Method.NVML_POWER
        return gpu.add_power(now_s, sampled_power_w)

    def _optional(self, gpu: _Gpu, feature: str, call: Callable[..., Any], *args: Any) -> Any:
        """call(*args), or None if it fails. A feature the GPU lacks is remembered and not asked for again;
        the errors of a lost GPU propagate."""
        if feature in gpu.unsupported:
            return None
        try:
            return call(*args)
        except self._lost_errors:
            raise
        except self._unsupported_errors as exc:
            gpu.unsupported.add(feature)
            log.info("GPU %s: %s unavailable (%s); left out from now on", gpu.uuid, feature, exc)
        except self._nvml.NVMLError as exc:
            log.debug("GPU %s: reading %s failed: %s", gpu.uuid, feature, exc)
        return None

    def _mark_lost(self, gpu: _Gpu, now_s: float, error: Exception) -> None:
        if gpu.lost_since_s is None:
            gpu.lost_since_s = now_s
            log.warning(
                "GPU %s (%s) lost: %s; the other GPUs carry on, NVML is re-initialised every %.0f s to recover it",
                gpu.uuid,
                gpu.name,
                error,
                self._reinit_interval_s,
            )
        gpu.handle = None
        gpu.restart_baseline()
        if self._reinit_due_s is None:
            self._reinit_due_s = now_s + self._reinit_interval_s

    def _reinit(self, now_s: float) -> None:
        """Restart NVML and look every GPU up again by UUID: no handle survives nvmlShutdown.

        The energy counters of the healthy GPUs keep running in the driver, so their baselines stay valid.
        """
        nvml = self._nvml
        self._reinit_due_s = None
        _shutdown(nvml)
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as exc:
            for gpu in self._gpus:
                self._mark_lost(gpu, now_s, exc)
            return
        for gpu in self._gpus:
            try:
                gpu.handle = nvml.nvmlDeviceGetHandleByUUID(gpu.uuid)
            except nvml.NVMLError as exc:
                self._mark_lost(gpu, now_s, exc)

    def _summary(self) -> str:
        if any(gpu.lost_since_s is not None for gpu in self._gpus):
            return "degraded"
        if any(gpu.method is Method.NVML_POWER for gpu in self._gpus):
            return "fallback"
        return "ok"


def _physical_gpus(nvml: ModuleType) -> list[_Gpu]:
    """Every GPU by index (physical ones only, even with MIG enabled); a GPU already lost is skipped."""
    gpus = []
    for index in range(nvml.nvmlDeviceGetCount()):
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            uuid, name = nvml.nvmlDeviceGetUUID(handle), nvml.nvmlDeviceGetName(handle)
        except (nvml.NVMLError_GpuIsLost, nvml.NVMLError_Unknown) as exc:
            log.warning("GPU %d skipped: %s", index, exc)
            continue
        gpus.append(_Gpu(uuid=uuid, name=name[:MAX_NAME_LENGTH], handle=handle))
    return gpus


def _unavailable(nvml: ModuleType, error: Exception) -> NvmlUnavailable:
    if isinstance(error, (nvml.NVMLError_LibraryNotFound, nvml.NVMLError_DriverNotLoaded)):
        return NvmlUnavailable("absent", f"no NVIDIA driver on this host ({error})")
    if isinstance(error, nvml.NVMLError_NoPermission):
        return NvmlUnavailable(
            "permission-denied", f"NVML refused access ({error}); the agent's user cannot open /dev/nvidia*"
        )
    return NvmlUnavailable("error", f"NVML failed: {error}")


def _shutdown(nvml: ModuleType) -> None:
    """nvmlShutdown, ignoring a library that is not initialised (after a failed re-init, or a second close)."""
    with contextlib.suppress(nvml.NVMLError):
        nvml.nvmlShutdown()
