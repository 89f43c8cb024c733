"""The collector's energy book: accepted points in, energy per rack, meter and site per 15-minute bin out.

Pure: no I/O and no clock. Hosts contribute their server-input estimate (the IT energy when no IT meter
exists) to their rack and to their site's host total; meters contribute to themselves. Each accumulator
holds energy, the time its counters covered, and utilisation weighted by time, so bins add up exactly.
`site_bin` turns a site's accumulators for one bin into the metrics module's SiteBin, listing every
expected meter (silent ones with coverage 0) and every expected host.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

from collector.accounting import BIN_MS, Point, StreamState
from collector.metrics import MeterCoverage, SiteBin
from collector.site import HostInfo, MeterInfo, SiteIndex

J_PER_KWH = 3.6e6

# Accumulator keys: ("rack", site, room, rack, bin), ("hosts", site, bin), ("meter", site, meter_id, bin)
AccumulatorKey = tuple


class Utilisation(NamedTuple):
    """A sample's utilisation (0..1) and the seconds it describes."""

    cpu: float | None
    gpu: float | None
    seconds: float


@dataclass(slots=True)
class Accumulator:
    energy_j: float = 0.0
    covered_ms: float = 0.0
    cpu_util_weighted: float = 0.0
    cpu_util_weight: float = 0.0
    gpu_util_weighted: float = 0.0
    gpu_util_weight: float = 0.0

    def add_utilisation(self, utilisation: Utilisation) -> None:
        cpu, gpu, seconds = utilisation
        if cpu is not None:
            self.cpu_util_weighted += cpu * seconds
            self.cpu_util_weight += seconds
        if gpu is not None:
            self.gpu_util_weighted += gpu * seconds
            self.gpu_util_weight += seconds

    def add(self, other: Accumulator) -> None:
        """Add another accumulator's sums to this one's (a room's bin is the sum of its racks' bins)."""
        self.energy_j += other.energy_j
        self.covered_ms += other.covered_ms
        self.cpu_util_weighted += other.cpu_util_weighted
        self.cpu_util_weight += other.cpu_util_weight
        self.gpu_util_weighted += other.gpu_util_weighted
        self.gpu_util_weight += other.gpu_util_weight

    def as_row(self) -> tuple[float, ...]:
        return (self.energy_j, self.covered_ms, self.cpu_util_weighted, self.cpu_util_weight,
                self.gpu_util_weighted, self.gpu_util_weight)


class EnergyBook:
    def __init__(self, index: SiteIndex, keep_points: int = 16):
        self.index = index
        self.keep_points = keep_points
        self.streams: dict[str, StreamState] = {}  # by stream key (site.stream_key)
        self.accumulators: dict[AccumulatorKey, Accumulator] = {}
        self.dirty: dict[AccumulatorKey, Accumulator] = {}  # changed since the last take_dirty
        # accumulators whose latest value has no line in the output yet: kept by the reporter while it holds
        # lines back (Reporter.accumulator_lines), restored from the state after a restart
        self.unwritten: set[AccumulatorKey] = set()
        self.bins_by_site: dict[str, set[int]] = {}
        self.new_points: list[tuple[str, Point]] = []

    def add_host_point(self, host: HostInfo, point: Point, utilisation: Utilisation | None) -> str:
        """Account one host server-input point. Returns 'new', 'duplicate' or 'refinement-ignored'."""
        return self._account(host.stream, point, (("rack", host.site, host.room, host.rack), ("hosts", host.site)),
                             utilisation)

    def add_meter_point(self, meter: MeterInfo, point: Point) -> str:
        """Account one meter point. Returns 'new', 'duplicate' or 'refinement-ignored'."""
        return self._account(meter.stream, point, (("meter", meter.site, meter.device),))

    def restore_point(self, stream: str, point: Point) -> None:
        """Put back a point saved earlier, without contributing again (its contributions are saved too)."""
        self._stream(stream).add(point)

    def restore_accumulator(self, key: AccumulatorKey, row: Iterable[float], unwritten: bool = False) -> None:
        """Put back a saved accumulator; unwritten: its line had not been written yet."""
        self.accumulators[key] = Accumulator(*row)
        self._index_bin(key)
        if unwritten:
            self.unwritten.add(key)

    def placement(self, stream: str, session: str, seq: int, ts_ms: int
                  ) -> tuple[Point | None, Point | None, str | None]:
        """Where a new point falls among the stream's known points: the nearest known points before and after seq
        in its session (the earliest point ever seen counts too, for a session that dropped some), which its
        counter must fit between, and another session of the stream whose known span contains ts_ms (two senders
        claiming one device, whose energies must not both be counted), or None."""
        state = self.streams.get(stream)
        if state is None:
            return None, None, None
        sessions = state.sessions
        kept = sessions.get(session)
        if kept and seq > kept[-1].seq and len(sessions) == 1:  # the next point of the only session, as most are
            return kept[-1], None, None
        earlier, later = state.neighbours(session, seq)
        return earlier, later, _overlapping(state, session, ts_ms)

    def holds(self, stream: str, session: str, seq: int) -> bool:
        """Whether the book still holds this point (the state store keeps exactly those, see collector/state.py)."""
        state = self.streams.get(stream)
        return state is not None and state.holds(session, seq)

    def held_points(self) -> int:
        """How many points the book holds, over every stream (walks them all)."""
        return sum(state.held() for state in self.streams.values())

    def take_dirty(self) -> dict[AccumulatorKey, Accumulator]:
        """The accumulators changed since the last call, and forget that they were."""
        changed, self.dirty = self.dirty, {}
        return changed

    def take_new_points(self) -> list[tuple[str, Point]]:
        points, self.new_points = self.new_points, []
        return points

    def forget(self, sessions_before_ms: int, rack_bins_before_ms: int, site_bins_before_ms: int) -> int:
        """Drop what can no longer change: sessions silent since sessions_before_ms, rack bins older than
        rack_bins_before_ms and site (hosts and meter) bins older than site_bins_before_ms. Returns how
        many entries went. The cut-offs must lie before anything the collector still accepts, or a late
        message would rebuild a bin from a part of its energy."""
        dropped = 0
        for stream in list(self.streams):
            dropped += self.streams[stream].forget_sessions_before(sessions_before_ms)
            if not self.streams[stream].sessions:
                del self.streams[stream]
        for key in [k for k in self.accumulators
                    if k[-1] < (rack_bins_before_ms if k[0] == "rack" else site_bins_before_ms)]:
            del self.accumulators[key]
            self.dirty.pop(key, None)
            self.unwritten.discard(key)
            if key[0] != "rack":
                self.bins_by_site.get(key[1], set()).discard(key[-1])
            dropped += 1
        return dropped

    def site_bin(self, site: str, start_ms: int) -> SiteBin:
        """Everything accounted for one site in one bin, as the metrics module takes it."""
        energy: dict[tuple, float] = {}
        coverage: dict[str, MeterCoverage] = {}
        for meter in self.index.expected_meters(site):
            acc = self.accumulators.get(("meter", site, meter.device, start_ms))
            coverage[meter.device] = MeterCoverage(meter.role, min(1.0, acc.covered_ms / BIN_MS) if acc else 0.0)
            if acc:
                key = (meter.role, meter.source)
                energy[key] = energy.get(key, 0.0) + max(0.0, acc.energy_j) / J_PER_KWH
        hosts = self.accumulators.get(("hosts", site, start_ms), Accumulator())
        expected = len(self.index.expected_hosts(site))
        return SiteBin(
            start_ms=start_ms,
            energy_kwh=energy,
            meter_coverage=coverage,
            host_server_input_kwh=max(0.0, hosts.energy_j) / J_PER_KWH if expected else 0.0,
            hosts_expected=expected,
            host_coverage_sum=min(float(expected), max(0.0, hosts.covered_ms) / BIN_MS),
            cpu_util_weighted_sum=hosts.cpu_util_weighted,
            cpu_util_weight=hosts.cpu_util_weight,
            gpu_util_weighted_sum=hosts.gpu_util_weighted,
            gpu_util_weight=hosts.gpu_util_weight,
        )

    def site_bin_starts(self, site: str, start_ms: int, end_ms: int) -> list[int]:
        """The bins in [start_ms, end_ms) where anything was accounted for the site."""
        return sorted(s for s in self.bins_by_site.get(site, ()) if start_ms <= s < end_ms)

    def _stream(self, stream: str) -> StreamState:
        state = self.streams.get(stream)
        if state is None:
            state = self.streams[stream] = StreamState(keep=self.keep_points)
        return state

    def _account(self, stream: str, point: Point, scopes: tuple[tuple, ...], utilisation: Utilisation | None = None
                 ) -> str:
        """Apply a point's contributions to the accumulators (scope + (bin start,)) of each scope, and a host
        sample's utilisation to those of its bin: a sample describes the interval that ends at ts_ms, so one at a
        bin boundary belongs to the bin before. Both go to the same accumulators in one pass when they share a
        bin, as they mostly do."""
        state = self.streams.get(stream) or self._stream(stream)
        contributions = state.add(point)
        if contributions is None:
            return "duplicate"
        if not contributions and point not in state.sessions[point.session]:
            return "refinement-ignored"
        self.new_points.append((stream, point))
        utilisation_bin = None
        if utilisation is not None:
            end = point.ts_ms - 1
            utilisation_bin = end - end % BIN_MS
        accumulators, dirty = self.accumulators, self.dirty
        for start, joules, covered in contributions:
            with_utilisation = start == utilisation_bin
            for scope in scopes:
                key = (*scope, start)
                acc = accumulators.get(key) or self._accumulator(key)
                acc.energy_j += joules
                acc.covered_ms += covered
                if with_utilisation and utilisation is not None:
                    acc.add_utilisation(utilisation)
                dirty[key] = acc
            if with_utilisation:
                utilisation_bin = None  # added: not again in a later contribution, nor in the pass below
        if utilisation_bin is not None and utilisation is not None:
            for scope in scopes:
                key = (*scope, utilisation_bin)
                acc = dirty[key] = accumulators.get(key) or self._accumulator(key)
                acc.add_utilisation(utilisation)
        return "new"

    def _accumulator(self, key: AccumulatorKey) -> Accumulator:
        acc = self.accumulators.get(key)
        if acc is None:
            acc = self.accumulators[key] = Accumulator()
            self._index_bin(key)
        return acc

    def _index_bin(self, key: AccumulatorKey) -> None:
        if key[0] in ("hosts", "meter"):
            self.bins_by_site.setdefault(key[1], set()).add(key[-1])


def _overlapping(state: StreamState, session: str, ts_ms: int) -> str | None:
    """Another session of the stream whose known span contains ts_ms."""
    for other, kept in state.sessions.items():
        if other != session and kept:
            first = state.earliest.get(other, kept[0])
            if first.ts_ms < ts_ms < kept[-1].ts_ms:
                return other
    return None
