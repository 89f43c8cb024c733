"""NvmlSensor against the fake pynvml in tests/fakes/pynvml.py (no driver or GPU needed)."""

from __future__ import annotations

import logging
import sys

import pytest

from agent.sensors.nvml import NvmlSensor, NvmlUnavailable
from common.contract import Component, Method, Reading
from tests.fakes import pynvml as fake
from tests.fakes.pynvml import FakeGpu, FakeNvml, install, make_gpus

CALLS_PER_GPU_READ = 6  # energy counter, field values, power limit, utilisation, temperature, memory


def by_id(readings: list[Reading]) -> dict[str, Reading]:
    return {reading.id: reading for reading in readings}


def open_with(monkeypatch: pytest.MonkeyPatch, gpus: list[FakeGpu], **options: float) -> tuple[NvmlSensor, FakeNvml]:
    controller = install(monkeypatch, gpus)
    return NvmlSensor.open(**options), controller


def test_eight_gpus_report_session_energy_and_interval_power(monkeypatch):
    gpus = make_gpus(8)
    for index, gpu in enumerate(gpus):
        gpu.energy_mj = 987_654_321 + index * 1_000_000  # counted since the driver loaded, not since our start
        gpu.power_mw, gpu.average_power_mw = 412_345, 300_000
    sensor, _ = open_with(monkeypatch, gpus)

    first = sensor.read(100.0)
    assert [reading.id for reading in first] == [gpu.uuid for gpu in gpus]
    assert first[0] == Reading(
        component=Component.GPU,
        id=gpus[0].uuid,
        method=Method.NVML_ENERGY,
        name="NVIDIA H100 80GB HBM3",
        power_w=None,
        energy_j=0.0,
        power_instant_w=412.345,
        power_avg_w=300.0,
        power_limit_w=700.0,
        util=0.5,
        temp_c=60,
        mem_used_bytes=10 * 2**30,
        mem_total_bytes=80 * 2**30,
    )

    for index, gpu in enumerate(gpus):
        gpu.run(1.0, 100 + 10 * index)
    second = sensor.read(101.0)
    for index, reading in enumerate(second):
        assert reading.energy_j == pytest.approx(100 + 10 * index)
        assert reading.power_w == pytest.approx(100 + 10 * index)

    for gpu in gpus:
        gpu.run(2.0, 300)
    third = sensor.read(103.0)
    for index, reading in enumerate(third):
        assert reading.energy_j == pytest.approx(100 + 10 * index + 600)
        assert reading.power_w == pytest.approx(300)
    assert sensor.state == "ok"


def test_steady_state_makes_only_the_needed_calls(monkeypatch):
    sensor, nvml = open_with(monkeypatch, make_gpus(8))
    sensor.read(1.0)
    nvml.calls.clear()
    for second in range(2, 12):
        sensor.read(float(second))
    assert sum(nvml.calls.values()) == 10 * 8 * CALLS_PER_GPU_READ
    assert nvml.calls["nvmlInit"] == 0


def test_counter_restarted_by_the_driver_counts_its_new_value(monkeypatch):
    gpus = make_gpus(1, energy_mj=5_000_000)
    sensor, _ = open_with(monkeypatch, gpus)
    sensor.read(1.0)
    gpus[0].energy_mj = 150_000
    assert sensor.read(2.0)[0].energy_j == pytest.approx(150)


def test_without_energy_counter_power_is_integrated(monkeypatch):
    gpus = make_gpus(2, supports_energy=False, average_power_mw=200_000)
    sensor, nvml = open_with(monkeypatch, gpus)

    first = sensor.read(10.0)[0]
    assert (first.method, first.energy_j, first.power_w) == (Method.NVML_POWER, 0.0, 200.0)
    gpus[0].run(1.0, 250)
    assert sensor.read(11.0)[0].energy_j == pytest.approx(250)
    gpus[0].run(2.0, 100)
    reading = sensor.read(13.0)[0]
    assert (reading.energy_j, reading.power_w) == (pytest.approx(450), 100.0)
    assert sensor.state == "fallback"
    assert nvml.calls["nvmlDeviceGetTotalEnergyConsumption"] == 2  # asked once per GPU


def test_without_power_fields_getpowerusage_is_the_average(monkeypatch):
    gpus = make_gpus(1, supports_field_values=False, power_mw=420_000, average_power_mw=400_000)
    sensor, nvml = open_with(monkeypatch, gpus)
    for second in range(3):
        reading = sensor.read(float(second))[0]
        assert (reading.power_instant_w, reading.power_avg_w) == (None, 400.0)
    assert nvml.calls["nvmlDeviceGetFieldValues"] == 1


def test_without_field_values_function_getpowerusage_is_the_average(monkeypatch):
    gpus = make_gpus(1, failing={"nvmlDeviceGetFieldValues": fake.NVMLError_FunctionNotFound}, average_power_mw=90_000)
    sensor, nvml = open_with(monkeypatch, gpus)
    for second in range(3):
        assert sensor.read(float(second))[0].power_avg_w == 90.0
    assert nvml.calls["nvmlDeviceGetFieldValues"] == 1


def test_gpu_without_average_field_integrates_instant_power(monkeypatch):
    gpus = make_gpus(1, supports_energy=False, supports_average_field=False, power_mw=150_000)
    sensor, nvml = open_with(monkeypatch, gpus)
    sensor.read(0.0)
    reading = sensor.read(2.0)[0]
    assert (reading.power_instant_w, reading.power_avg_w, reading.energy_j) == (150.0, None, 300.0)
    assert nvml.calls["nvmlDeviceGetPowerUsage"] == 0


@pytest.mark.parametrize("error", [fake.NVMLError_NotSupported, fake.NVMLError_NoPermission])
@pytest.mark.parametrize(
    ("function", "omitted"),
    [
        ("nvmlDeviceGetTemperature", "temp_c"),
        ("nvmlDeviceGetUtilizationRates", "util"),
        ("nvmlDeviceGetMemoryInfo", "mem_used_bytes"),
        ("nvmlDeviceGetEnforcedPowerLimit", "power_limit_w"),
    ],
)
def test_value_the_gpu_refuses_is_omitted_and_not_asked_again(monkeypatch, error, function, omitted):
    gpus = make_gpus(2)
    gpus[0].failing[function] = error
    sensor, nvml = open_with(monkeypatch, gpus)
    for second in range(5):
        gpus[0].run(1.0, 100)
        refusing, other = sensor.read(float(second))
        assert getattr(refusing, omitted) is None
        assert getattr(other, omitted) is not None
    assert refusing.energy_j == pytest.approx(400)
    assert nvml.calls[function] == 1 + 5  # once for the refusing GPU, every read for the other


def test_transient_error_omits_the_value_once(monkeypatch):
    gpus = make_gpus(1)
    gpus[0].failing["nvmlDeviceGetTemperature"] = fake.NVMLError_Timeout
    sensor, _ = open_with(monkeypatch, gpus)
    assert sensor.read(1.0)[0].temp_c is None
    del gpus[0].failing["nvmlDeviceGetTemperature"]
    assert sensor.read(2.0)[0].temp_c == 60


def test_lost_gpu_is_reported_and_recovered_without_energy_going_backwards(monkeypatch, caplog):
    gpus = make_gpus(4)
    sensor, nvml = open_with(monkeypatch, gpus, reinit_interval_s=10.0)
    lost = gpus[2]
    history: dict[str, list[float]] = {gpu.uuid: [] for gpu in gpus}

    def step(now_s: float) -> dict[str, Reading]:
        for gpu in gpus:
            gpu.run(1.0, 200)
        readings = by_id(sensor.read(now_s))
        for reading in readings.values():
            if reading.energy_j is not None:
                history[reading.id].append(reading.energy_j)
        return readings

    step(0.0)
    step(1.0)
    lost.lost = True
    with caplog.at_level(logging.WARNING, logger="agent.sensors.nvml"):
        for second in range(2, 12):
            readings = step(float(second))
            assert readings[lost.uuid] == Reading(
                component=Component.GPU, id=lost.uuid, method=Method.NVML_ENERGY, name=lost.name, state="lost"
            )
            assert readings[gpus[0].uuid].energy_j == pytest.approx(200 * second)
            assert sensor.state == "degraded"
    assert nvml.calls["nvmlInit"] == 1  # no re-init before the interval is over
    assert len(caplog.records) == 1 and lost.uuid in caplog.messages[0]

    assert step(12.0)[lost.uuid].state == "lost"  # re-init at 2 + 10 s, the GPU is still gone
    assert nvml.calls["nvmlInit"] == 2
    for second in range(13, 22):
        step(float(second))
    assert nvml.calls["nvmlInit"] == 2

    lost.lost = False
    lost.energy_mj = 0  # the GPU reset restarted its counter
    recovered = step(22.0)
    assert nvml.calls["nvmlInit"] == 3
    assert (recovered[lost.uuid].state, recovered[lost.uuid].energy_j) == ("ok", pytest.approx(200))
    assert recovered[gpus[0].uuid].energy_j == pytest.approx(200 * 22)  # healthy GPUs kept their baselines
    after = step(23.0)
    assert (after[lost.uuid].energy_j, after[lost.uuid].power_w) == (pytest.approx(400), pytest.approx(200))
    assert sensor.state == "ok"
    for energies in history.values():
        assert energies == sorted(energies)


def test_unknown_error_marks_only_that_gpu_lost(monkeypatch):
    gpus = make_gpus(3)
    gpus[1].failing["nvmlDeviceGetTotalEnergyConsumption"] = fake.NVMLError_Unknown
    sensor, _ = open_with(monkeypatch, gpus)
    assert [reading.state for reading in sensor.read(1.0)] == ["ok", "lost", "ok"]
    gpus[1].failing.clear()
    assert [reading.state for reading in sensor.read(30.0)] == ["ok", "lost", "ok"]
    assert [reading.state for reading in sensor.read(61.0)] == ["ok", "ok", "ok"]


def test_failed_nvml_reinit_marks_every_gpu_lost_until_the_next_attempt(monkeypatch):
    gpus = make_gpus(2)
    sensor, nvml = open_with(monkeypatch, gpus, reinit_interval_s=5.0)
    sensor.read(0.0)
    gpus[0].lost = True
    sensor.read(1.0)
    nvml.init_error = fake.NVMLError_DriverNotLoaded
    assert [reading.state for reading in sensor.read(6.0)] == ["lost", "lost"]
    nvml.init_error = None
    gpus[0].lost = False
    assert [reading.state for reading in sensor.read(10.0)] == ["lost", "lost"]
    assert [reading.state for reading in sensor.read(11.0)] == ["ok", "ok"]


def test_gpu_already_lost_at_open_is_skipped(monkeypatch):
    gpus = make_gpus(3)
    gpus[1].lost = True
    sensor, _ = open_with(monkeypatch, gpus)
    assert [reading.id for reading in sensor.read(1.0)] == [gpus[0].uuid, gpus[2].uuid]


@pytest.mark.parametrize("error", [fake.NVMLError_LibraryNotFound, fake.NVMLError_DriverNotLoaded])
def test_no_driver_is_absent(monkeypatch, error):
    nvml = install(monkeypatch, make_gpus(2))
    nvml.init_error = error
    with pytest.raises(NvmlUnavailable) as raised:
        NvmlSensor.open()
    assert raised.value.state == "absent"
    assert "\n" not in str(raised.value) and "driver" in str(raised.value)


def test_no_pynvml_is_absent(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)
    with pytest.raises(NvmlUnavailable) as raised:
        NvmlSensor.open()
    assert raised.value.state == "absent"


def test_zero_gpus_is_absent_and_shuts_nvml_down(monkeypatch):
    nvml = install(monkeypatch, [])
    with pytest.raises(NvmlUnavailable) as raised:
        NvmlSensor.open()
    assert raised.value.state == "absent"
    assert not nvml.initialised


@pytest.mark.parametrize(
    ("error", "state"),
    [(fake.NVMLError_NoPermission, "permission-denied"), (fake.NVMLError_LibRmVersionMismatch, "error")],
)
def test_init_failures_name_their_state(monkeypatch, error, state):
    nvml = install(monkeypatch, make_gpus(1))
    nvml.init_error = error
    with pytest.raises(NvmlUnavailable) as raised:
        NvmlSensor.open()
    assert raised.value.state == state


def test_close_shuts_nvml_down_once(monkeypatch):
    sensor, nvml = open_with(monkeypatch, make_gpus(1))
    sensor.close()
    sensor.close()
    assert not nvml.initialised
    assert nvml.calls["nvmlShutdown"] == 2


def test_time_must_advance(monkeypatch):
    sensor, _ = open_with(monkeypatch, make_gpus(1))
    sensor.read(5.0)
    with pytest.raises(ValueError):
        sensor.read(5.0)


def test_fake_returns_the_real_field_value_structures(monkeypatch):
    import pynvml as real

    install(monkeypatch, make_gpus(1, power_mw=1234))
    assert fake.NVMLError_GpuIsLost is real.NVMLError_GpuIsLost
    assert fake.NVML_FI_DEV_POWER_INSTANT == real.NVML_FI_DEV_POWER_INSTANT
    fake.nvmlInit()
    values = fake.nvmlDeviceGetFieldValues(fake.nvmlDeviceGetHandleByIndex(0), [real.NVML_FI_DEV_POWER_INSTANT])
    assert isinstance(values[0], real.c_nvmlFieldValue_t)
    assert (values[0].nvmlReturn, values[0].value.uiVal) == (real.NVML_SUCCESS, 1234)
