"""RaplSensor against the fake powercap trees in tests/testdata/powercap (see the README there)."""

from __future__ import annotations

import errno
import logging
import os
import shutil
from pathlib import Path

import pytest

from agent.energy import AmbiguousInterval
from agent.sensors.rapl import RaplCounterAmbiguous, RaplSensor, RaplUnavailable
from common.contract import Component, Method, Reading

TREES = Path(__file__).parent / "testdata" / "powercap"
CEILING_W = 500.0
INTERVAL_S = 10.0

PACKAGE_0 = "intel-rapl:0"
DRAM_0 = "intel-rapl:0/intel-rapl:0:0"
PACKAGE_1 = "intel-rapl:2"
DRAM_1 = "intel-rapl:2/intel-rapl:2:0"


def copy_tree(case: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(TREES / case, tmp_path / case))


def counter(root: Path, zone: str) -> int:
    return int((root / zone / "energy_uj").read_text())


def set_counter(root: Path, zone: str, value_uj: int) -> None:
    (root / zone / "energy_uj").write_text(f"{value_uj}\n")


def open_sensor(root: Path, sample_interval_s: float = INTERVAL_S) -> RaplSensor:
    return RaplSensor.open(root, CEILING_W, sample_interval_s)


def by_id(readings: list[Reading]) -> dict[str, Reading]:
    ids = [reading.id for reading in readings]
    assert len(ids) == len(set(ids)), f"duplicate ids in {ids}"
    return {reading.id: reading for reading in readings}


@pytest.fixture
def enforce_file_modes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make a file without read permission bits unreadable, even for root.

    The tests run as root, and the kernel lets root read a mode-000 file; the agent runs unprivileged, where
    opening it fails with EACCES. This applies the unprivileged rule to Path.read_text, which the sensor
    reads every sysfs file with, so chmod 000 in a tree copy behaves as on a post-CVE-2020-8694 host.
    """
    real_read_text = Path.read_text

    def read_text(path: Path, *args, **kwargs) -> str:
        if path.stat().st_mode & 0o444 == 0:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_read_text(path, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", read_text)


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("package-only", {"package-0": Component.CPU_PACKAGE}),
        (
            "two-socket-dram",
            {
                "package-0": Component.CPU_PACKAGE,
                "dram-0": Component.DRAM,
                "package-1": Component.CPU_PACKAGE,
                "dram-1": Component.DRAM,
                "psys": Component.PSYS,
            },
        ),
        ("amd-zen", {"package-0": Component.CPU_PACKAGE, "core-0": Component.CPU_CORE}),
        (
            "mmio-duplicate",
            {
                "package-0": Component.CPU_PACKAGE,
                "core-0": Component.CPU_CORE,
                "uncore-0": Component.CPU_UNCORE,
                "psys": Component.PSYS,
            },
        ),
        ("near-wrap", {"package-0": Component.CPU_PACKAGE}),
        ("unreadable", {"package-0": Component.CPU_PACKAGE, "dram-0": Component.DRAM}),
    ],
)
def test_zones_are_found_by_name_with_unique_ids(case: str, expected: dict[str, Component]) -> None:
    sensor = open_sensor(TREES / case)
    readings = by_id(sensor.read(0.0))
    assert {zone_id: reading.component for zone_id, reading in readings.items()} == expected
    assert sensor.name == "rapl"
    assert sensor.state == "ok"
    for reading in readings.values():
        assert reading.method is Method.RAPL
        assert reading.energy_j == 0.0
        assert reading.power_w is None


def test_subzone_ids_follow_the_package_name_not_the_directory_index(tmp_path: Path) -> None:
    root = copy_tree("two-socket-dram", tmp_path)
    (root / PACKAGE_0 / "name").write_text("package-1\n")
    (root / PACKAGE_1 / "name").write_text("package-0\n")
    sensor = open_sensor(root)
    sensor.read(0.0)
    set_counter(root, DRAM_1, counter(root, DRAM_1) + 20_000_000)
    readings = by_id(sensor.read(10.0))
    assert readings["dram-0"].energy_j == pytest.approx(20.0)
    assert readings["dram-1"].energy_j == 0.0


def test_mmio_zone_duplicating_the_msr_package_is_not_counted(tmp_path: Path) -> None:
    root = copy_tree("mmio-duplicate", tmp_path)
    sensor = open_sensor(root)
    sensor.read(0.0)
    set_counter(root, PACKAGE_0, counter(root, PACKAGE_0) + 50_000_000)
    set_counter(root, "intel-rapl-mmio:0", counter(root, "intel-rapl-mmio:0") + 90_000_000)
    readings = sensor.read(10.0)
    packages = [reading for reading in readings if reading.component is Component.CPU_PACKAGE]
    assert [(reading.id, reading.energy_j) for reading in packages] == [("package-0", pytest.approx(50.0))]


def test_zones_linked_from_the_top_level_are_counted_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # The real layout: /sys/class/powercap holds symlinks to the control type and to every zone, nested
    # subzones included, all pointing into /sys/devices/virtual/powercap.
    devices = tmp_path / "devices" / "virtual" / "powercap" / "intel-rapl"
    shutil.copytree(TREES / "two-socket-dram", devices)
    shutil.rmtree(devices / "intel-rapl")
    root = tmp_path / "class" / "powercap"
    root.mkdir(parents=True)
    (root / "intel-rapl").symlink_to(devices)
    for zone in (PACKAGE_0, DRAM_0, "intel-rapl:1", PACKAGE_1, DRAM_1):
        (root / Path(zone).name).symlink_to(devices / zone)
    with caplog.at_level(logging.DEBUG, logger="agent.sensors.rapl"):
        sensor = open_sensor(root)
    assert caplog.records == []
    assert sorted(by_id(sensor.read(0.0))) == ["dram-0", "dram-1", "package-0", "package-1", "psys"]
    set_counter(devices, DRAM_1, counter(devices, DRAM_1) + 3_000_000)
    assert by_id(sensor.read(10.0))["dram-1"].energy_j == pytest.approx(3.0)
    assert sensor.zones == ("package-0", "dram-0", "psys", "package-1", "dram-1")


def test_power_and_cumulative_energy_across_reads(tmp_path: Path) -> None:
    root = copy_tree("two-socket-dram", tmp_path)
    sensor = open_sensor(root)
    sensor.read(100.0)
    set_counter(root, PACKAGE_0, counter(root, PACKAGE_0) + 1_500_000_000)
    set_counter(root, DRAM_1, counter(root, DRAM_1) + 50_000_000)
    readings = by_id(sensor.read(110.0))
    assert readings["package-0"].power_w == pytest.approx(150.0)
    assert readings["package-0"].energy_j == pytest.approx(1500.0)
    assert readings["dram-1"].power_w == pytest.approx(5.0)
    assert readings["dram-1"].energy_j == pytest.approx(50.0)
    assert readings["package-1"].power_w == 0.0
    assert readings["package-1"].energy_j == 0.0

    set_counter(root, PACKAGE_0, counter(root, PACKAGE_0) + 600_000_000)
    readings = by_id(sensor.read(115.0))
    assert readings["package-0"].power_w == pytest.approx(120.0)
    assert readings["package-0"].energy_j == pytest.approx(2100.0)
    assert readings["dram-1"].energy_j == pytest.approx(50.0)


def test_counter_wrapping_past_its_range(tmp_path: Path) -> None:
    root = copy_tree("near-wrap", tmp_path)
    max_range_uj = int((root / PACKAGE_0 / "max_energy_range_uj").read_text())
    sensor = open_sensor(root)
    sensor.read(0.0)
    set_counter(root, PACKAGE_0, 1_000_000)
    package = sensor.read(2.0)[0]
    increase_uj = max_range_uj - 262_143_000_000 + 1 + 1_000_000
    assert package.energy_j == pytest.approx(increase_uj / 1e6)
    assert package.power_w == pytest.approx(increase_uj / 1e6 / 2.0)


def test_sample_interval_too_long_for_the_counter_range_is_refused_at_open() -> None:
    # Zen's range of 65532 J lasts 131 s at the 500 W ceiling (no power limit is exposed).
    with pytest.raises(ValueError, match="sample_interval_s"):
        open_sensor(TREES / "amd-zen", sample_interval_s=200.0)
    open_sensor(TREES / "amd-zen", sample_interval_s=120.0)


def test_zone_power_limit_replaces_the_ceiling(tmp_path: Path) -> None:
    # package-only has a 150 W limit: 262143 J last 1747 s at 150 W, but only 26 s at a 10 kW ceiling.
    RaplSensor.open(TREES / "package-only", 10_000.0, 60.0)
    root = copy_tree("package-only", tmp_path)
    (root / PACKAGE_0 / "constraint_0_max_power_uw").write_text("0\n")
    with pytest.raises(ValueError, match="sample_interval_s"):
        RaplSensor.open(root, 10_000.0, 60.0)


def test_stall_longer_than_the_wrap_safe_interval_restarts_counting(tmp_path: Path) -> None:
    root = copy_tree("package-only", tmp_path)
    sensor = open_sensor(root)
    sensor.read(0.0)
    set_counter(root, PACKAGE_0, counter(root, PACKAGE_0) + 1_000_000)
    sensor.read(10.0)
    with pytest.raises(RaplCounterAmbiguous, match="package-0") as raised:
        sensor.read(2000.0)
    assert isinstance(raised.value, AmbiguousInterval)
    restarted = sensor.read(2010.0)[0]
    assert restarted.energy_j == 0.0
    assert restarted.power_w is None


@pytest.mark.parametrize("layout", ["missing root", "empty root", "control type only"])
def test_no_zones_is_absent(tmp_path: Path, layout: str) -> None:
    root = tmp_path / "powercap"
    if layout != "missing root":
        root.mkdir()
    if layout == "control type only":
        (root / "intel-rapl").mkdir()
        (root / "intel-rapl" / "enabled").write_text("1\n")
    with pytest.raises(RaplUnavailable) as raised:
        open_sensor(root)
    assert raised.value.state == "absent"


@pytest.mark.usefixtures("enforce_file_modes")
def test_root_only_counters_are_permission_denied_with_the_fix(tmp_path: Path) -> None:
    root = copy_tree("unreadable", tmp_path)
    for zone in (PACKAGE_0, DRAM_0):
        (root / zone / "energy_uj").chmod(0o000)
    with pytest.raises(RaplUnavailable) as raised:
        open_sensor(root)
    assert raised.value.state == "permission-denied"
    message = str(raised.value)
    assert "CVE-2020-8694" in message
    assert "run the agent as root" in message
    assert "z /sys/class/powercap/intel-rapl:*/energy_uj 0440 root dcem" in message


def test_zone_that_cannot_be_read_at_open_is_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Some platforms list a zone whose counter read fails (ENODATA); a directory in its place fails likewise.
    root = copy_tree("unreadable", tmp_path)
    (root / DRAM_0 / "energy_uj").unlink()
    (root / DRAM_0 / "energy_uj").mkdir()
    with caplog.at_level(logging.WARNING, logger="agent.sensors.rapl"):
        sensor = open_sensor(root)
    assert [reading.id for reading in sensor.read(0.0)] == ["package-0"]
    assert sensor.state == "ok"
    assert len(caplog.records) == 1


@pytest.mark.usefixtures("enforce_file_modes")
def test_zone_failing_mid_run_is_degraded_and_logged_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = copy_tree("unreadable", tmp_path)
    sensor = open_sensor(root)
    sensor.read(0.0)
    dram_counter = root / DRAM_0 / "energy_uj"
    dram_counter.chmod(0o000)
    with caplog.at_level(logging.WARNING, logger="agent.sensors.rapl"):
        assert [reading.id for reading in sensor.read(10.0)] == ["package-0"]
        assert sensor.state == "degraded"
        assert [reading.id for reading in sensor.read(20.0)] == ["package-0"]
        assert sensor.state == "degraded"
    assert len(caplog.records) == 1
    assert "dram-0" in caplog.records[0].getMessage()

    dram_counter.chmod(0o644)
    set_counter(root, DRAM_0, counter(root, DRAM_0) + 90_000_000)
    readings = by_id(sensor.read(30.0))
    assert sensor.state == "ok"
    assert readings["dram-0"].energy_j == pytest.approx(90.0)
    assert readings["dram-0"].power_w == pytest.approx(3.0)
