"""Linux RAPL energy counters read from the powercap sysfs tree (Intel, and AMD Zen through the same driver).

Each zone's `energy_uj` counts microjoules and wraps to 0 after `max_energy_range_uj`. The sensor turns the
counters into cumulative joules since its first read and into the mean power of each sample interval.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from agent.energy import AmbiguousInterval, checked_delta_uj, safe_interval_s
from common.contract import Component, Method, Reading

log = logging.getLogger(__name__)

DEFAULT_ROOT = Path("/sys/class/powercap")
ZONE_PREFIX = "intel-rapl"
MMIO_PREFIX = "intel-rapl-mmio"
PACKAGE_PREFIX = "package-"
SUBZONE_COMPONENTS = {"core": Component.CPU_CORE, "uncore": Component.CPU_UNCORE, "dram": Component.DRAM}

PERMISSION_FIX = """\
Since CVE-2020-8694 (Platypus, a power side channel) the kernel makes RAPL energy_uj readable by root only.
Either run the agent as root, or let its group read the counters: create /etc/tmpfiles.d/dcem-rapl.conf with
    z /sys/class/powercap/intel-rapl:*/energy_uj 0440 root dcem
apply it with `systemd-tmpfiles --create /etc/tmpfiles.d/dcem-rapl.conf` (it is applied again at every boot),
and run the agent in group dcem (`groupadd --system dcem`, then Group=dcem or SupplementaryGroups=dcem in its
systemd unit). Until then the agent estimates CPU power from its model."""


class RaplUnavailable(Exception):
    """RAPL cannot be used on this host. `state` ("absent" or "permission-denied") goes into the agent status."""

    def __init__(self, state: str, message: str):
        super().__init__(message)
        self.state = state


class RaplCounterAmbiguous(AmbiguousInterval):
    """So long since the last read that a counter may have wrapped more than once; counting restarted from zero."""


@dataclass
class _Zone:
    id: str
    component: Component
    energy_path: Path
    max_range_uj: int
    max_power_w: float
    total_uj: int = 0
    last_uj: int | None = None
    last_s: float = 0.0


class RaplSensor:
    """Cumulative energy and mean power of every RAPL zone (package, core, uncore, dram, psys).

    The first read of a zone sets its baseline and reports energy_j 0.0 and no power. A zone whose counter
    cannot be read is skipped and the state becomes "degraded" until it reads again; its energy then
    continues exactly, as long as the gap stays within the wrap-safe interval.

    When more time has passed since the last read than the wrap-safe interval of a zone (the agent stalled),
    the number of wraps is unknown. read() then does not guess: it forgets all baselines and raises
    RaplCounterAmbiguous. The agent must start a new session, so the collector treats the counters as reset;
    the next read starts again like the first one.
    """

    name = "rapl"

    def __init__(self, zones: list[_Zone]):
        self.state = "ok"
        self._zones = zones
        self._reported_failures: set[str] = set()

    @classmethod
    def open(cls, root: Path, max_power_w: float, sample_interval_s: float) -> RaplSensor:
        """Find the RAPL zones under root (normally DEFAULT_ROOT) and check they can be read safely.

        max_power_w is the ceiling used for zones without a power limit of their own. Raises RaplUnavailable
        when there are no zones or their counters are not readable, and ValueError when sample_interval_s is
        too long for some zone's counter to be read without ambiguous wraps.
        """
        zones = _discover(root, max_power_w)
        if not zones:
            raise RaplUnavailable(
                "absent",
                f"no RAPL zones under {root} (not an Intel or AMD CPU, a VM without powercap, "
                "or the intel_rapl_msr module is not loaded)",
            )
        for zone in zones:
            limit_s = safe_interval_s(zone.max_range_uj, zone.max_power_w)
            if sample_interval_s >= limit_s:
                raise ValueError(
                    f"sample_interval_s={sample_interval_s} must be shorter than {limit_s:.1f} s: RAPL zone "
                    f"{zone.id} (range {zone.max_range_uj} uJ) can wrap more than once in a longer interval "
                    f"at {zone.max_power_w:.0f} W"
                )
        return cls(zones)

    @property
    def zones(self) -> tuple[str, ...]:
        """Reading ids of the zones this sensor reads, e.g. ("package-0", "dram-0", "psys")."""
        return tuple(zone.id for zone in self._zones)

    def read(self, now_s: float) -> list[Reading]:
        """Readings of every readable zone for the interval ending at now_s (monotonic seconds)."""
        readings = []
        for zone in self._zones:
            try:
                current_uj = int(zone.energy_path.read_text())
            except OSError as exc:
                self._report_failure(zone, exc)
                continue
            readings.append(self._advance(zone, current_uj, now_s))
        self.state = "degraded" if len(readings) < len(self._zones) else "ok"
        return readings

    def close(self) -> None:
        """Nothing to release: counter files are opened and closed on every read."""

    def _advance(self, zone: _Zone, current_uj: int, now_s: float) -> Reading:
        power_w = None
        if zone.last_uj is not None:
            elapsed_s = now_s - zone.last_s
            if elapsed_s <= 0:
                raise ValueError(f"now_s={now_s} is not later than the previous read at {zone.last_s}")
            try:
                delta_uj = checked_delta_uj(zone.last_uj, current_uj, zone.max_range_uj, elapsed_s, zone.max_power_w)
            except AmbiguousInterval as exc:
                self._forget_baselines()
                raise RaplCounterAmbiguous(f"RAPL zone {zone.id}: {exc}; energy counting restarts from zero") from exc
            zone.total_uj += delta_uj
            power_w = delta_uj / 1e6 / elapsed_s
        zone.last_uj, zone.last_s = current_uj, now_s
        return Reading(
            component=zone.component, id=zone.id, method=Method.RAPL, power_w=power_w, energy_j=zone.total_uj / 1e6
        )

    def _forget_baselines(self) -> None:
        for zone in self._zones:
            zone.total_uj, zone.last_uj = 0, None

    def _report_failure(self, zone: _Zone, exc: OSError) -> None:
        if zone.id not in self._reported_failures:
            self._reported_failures.add(zone.id)
            log.warning("RAPL zone %s is unreadable (%s); skipping it while it fails", zone.id, exc)


def _discover(root: Path, max_power_w: float) -> list[_Zone]:
    """The zones under root, each once, MSR zones before the MMIO zones that duplicate them."""
    zones: list[_Zone] = []
    for zone_dir in sorted(_zone_dirs(root), key=lambda path: (path.name.startswith(MMIO_PREFIX), path.name)):
        try:
            identity = _identify(zone_dir)
            if identity is None:
                log.info("RAPL zone %s has a name this agent does not know; skipped", zone_dir)
                continue
            zone_id, component = identity
            if any(zone.id == zone_id for zone in zones):
                log.debug("RAPL zone %s duplicates %s; skipped", zone_dir, zone_id)
                continue
            zones.append(_probe(zone_dir, zone_id, component, max_power_w))
        except PermissionError as exc:
            raise RaplUnavailable(
                "permission-denied", f"cannot read RAPL counters in {zone_dir}: {exc.strerror}.\n{PERMISSION_FIX}"
            ) from exc
        except (OSError, ValueError) as exc:
            log.warning("RAPL zone %s skipped: %s", zone_dir, exc)
    return zones


def _zone_dirs(root: Path) -> set[Path]:
    """Real paths of the intel-rapl* directories under root, whether nested or linked from the top level."""
    found: set[Path] = set()
    pending = [root]
    while pending:
        directory = pending.pop()
        for entry in directory.glob(f"{ZONE_PREFIX}*"):
            real = entry.resolve()
            if real.is_dir() and real not in found:
                found.add(real)
                pending.append(real)
    return {directory for directory in found if (directory / "name").is_file()}


def _identify(zone_dir: Path) -> tuple[str, Component] | None:
    """Reading id and component from the zone's name; subzones take their package's number ("dram-1")."""
    name = zone_dir.joinpath("name").read_text().strip()
    if name.startswith(PACKAGE_PREFIX):
        return name, Component.CPU_PACKAGE
    if name == "psys":
        return name, Component.PSYS
    if name in SUBZONE_COMPONENTS:
        package = zone_dir.parent.joinpath("name").read_text().strip()
        return f"{name}-{package.removeprefix(PACKAGE_PREFIX)}", SUBZONE_COMPONENTS[name]
    return None


def _probe(zone_dir: Path, zone_id: str, component: Component, max_power_w: float) -> _Zone:
    """Read the zone's range and power limit, and its counter once to prove it is readable."""
    energy_path = zone_dir / "energy_uj"
    int(energy_path.read_text())
    limit_path = zone_dir / "constraint_0_max_power_uw"
    limit_uw = int(limit_path.read_text()) if limit_path.exists() else 0
    return _Zone(
        id=zone_id,
        component=component,
        energy_path=energy_path,
        max_range_uj=int(zone_dir.joinpath("max_energy_range_uj").read_text()),
        max_power_w=limit_uw / 1e6 if limit_uw > 0 else max_power_w,
    )
