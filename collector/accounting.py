"""Exact energy accounting from cumulative counters: pure functions, no I/O.

A stream is one counter of one device (a host's server-input estimate, a meter's register). Its points
are (session, seq, ts_ms, energy_j) with energy_j cumulative within the session. Between two consecutive
points of one session the energy is the counter difference, spread over the time between them in
proportion to time, and split at bin boundaries (15-minute bins by default, aligned to the Unix epoch).

What follows from counting differences of cumulative counters:
- a gap with an intact counter loses no energy: the next point carries it;
- a duplicate (same session and seq) adds nothing;
- a point arriving late between two known ones splits their interval in two: totals do not change;
- across a session boundary (agent restart, meter replaced) the energy is unknown and not counted; the
  time is reported as not covered.

`bin_energies` is the reference definition over a whole set of points. `StreamState` gives the same
results incrementally, for a collector that sees points one at a time and keeps only a few per session.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

BIN_MS = 15 * 60 * 1000


class Point(NamedTuple):
    """One counter reading of a stream. A tuple of plain values, so the garbage collector stops tracking it:
    the collector holds millions of them."""

    session: str
    seq: int
    ts_ms: int
    energy_j: float


@dataclass
class BinTotal:
    """Energy counted in one bin, and how much of the bin (ms) the counter covered."""

    energy_j: float = 0.0
    covered_ms: float = 0.0

    def add(self, energy_j: float, covered_ms: float) -> None:
        self.energy_j += energy_j
        self.covered_ms += covered_ms


Contribution = tuple[int, float, float]  # (bin start ms, joules, covered ms)


def bin_start(ts_ms: int, bin_ms: int = BIN_MS) -> int:
    return ts_ms - ts_ms % bin_ms


def spread(start_ms: int, end_ms: int, energy_j: float, bin_ms: int = BIN_MS) -> list[Contribution]:
    """The energy of one interval split over the bins it crosses, in proportion to time.

    An interval that does not move forward in time (a clock step on the sender) puts all its energy in
    the bin of its end and covers nothing.
    """
    if end_ms <= start_ms:
        return [(bin_start(end_ms, bin_ms), energy_j, 0.0)]
    duration = end_ms - start_ms
    first_bin = bin_start(start_ms, bin_ms)
    if end_ms <= first_bin + bin_ms:  # within one bin, as most intervals are: the loop's one part
        return [(first_bin, energy_j * duration / duration, float(duration))]
    parts = []
    cursor = start_ms
    while cursor < end_ms:
        this_bin = bin_start(cursor, bin_ms)
        upto = min(end_ms, this_bin + bin_ms)
        parts.append((this_bin, energy_j * (upto - cursor) / duration, float(upto - cursor)))
        cursor = upto
    return parts


def interval(earlier: Point, later: Point, bin_ms: int = BIN_MS) -> list[Contribution]:
    """What the interval between two consecutive points of one session contributes to bins."""
    return spread(earlier.ts_ms, later.ts_ms, later.energy_j - earlier.energy_j, bin_ms)


def canonical(points: Iterable[Point]) -> dict[str, list[Point]]:
    """Points grouped by session, one per seq, ordered by seq.

    Two points with the same session and seq are the same sample delivered twice; should they differ
    (which the collector's validation refuses), the smaller one is kept, so the result does not depend
    on arrival order.
    """
    chosen: dict[tuple[str, int], Point] = {}
    for point in points:
        key = (point.session, point.seq)
        if key not in chosen or point < chosen[key]:
            chosen[key] = point
    sessions: dict[str, list[Point]] = defaultdict(list)
    for (session, _seq), point in sorted(chosen.items()):
        sessions[session].append(point)
    return dict(sessions)


def bin_energies(points: Iterable[Point], bin_ms: int = BIN_MS) -> dict[int, BinTotal]:
    """Energy and coverage per bin for all the points of one stream (the reference definition)."""
    bins: dict[int, BinTotal] = defaultdict(BinTotal)
    for session_points in canonical(points).values():
        for earlier, later in zip(session_points, session_points[1:]):
            for start, joules, covered in interval(earlier, later, bin_ms):
                bins[start].add(joules, covered)
    return dict(bins)


class StreamState:
    """One stream's recent points per session, turning each new point into bin contributions.

    `add` returns the contributions to apply to the bins (negative ones undo an interval that a late
    point has split), or None for a duplicate. At most `keep` points per session stay in memory, plus
    the earliest point ever seen of a session that had to drop some. A late point that falls among
    dropped points only refines where energy already counted falls in time: it is ignored (`add`
    returns an empty list), so totals stay exact. One older than anything ever seen is new energy and
    is counted against that earliest point. `neighbours` tells where a new point would fall among the kept ones.
    """

    __slots__ = ("keep", "bin_ms", "sessions", "earliest")

    def __init__(self, keep: int = 16, bin_ms: int = BIN_MS):
        if keep < 2:
            raise ValueError(f"keep must be at least 2, got {keep}")
        self.keep = keep
        self.bin_ms = bin_ms
        self.sessions: dict[str, list[Point]] = {}
        self.earliest: dict[str, Point] = {}

    def add(self, point: Point) -> list[Contribution] | None:
        kept = self.sessions.get(point.session)
        if kept and point.seq > kept[-1].seq:  # the next point of the session, as most are: the general case below
            last = kept[-1]                     # with index = len(kept) > 0, in fewer steps
            kept.append(point)
            if len(kept) > self.keep:
                self.earliest.setdefault(point.session, kept[0])
                del kept[0]
            return spread(last.ts_ms, point.ts_ms, point.energy_j - last.energy_j, self.bin_ms)
        if kept is None:
            kept = self.sessions[point.session] = []
        index = bisect.bisect_left(kept, point.seq, key=lambda p: p.seq)
        if index < len(kept) and kept[index].seq == point.seq:
            return None
        earliest = self.earliest.get(point.session)
        if index == 0 and earliest is not None:
            if point.seq == earliest.seq:
                return None
            if point.seq > earliest.seq:
                return []
            self.earliest[point.session] = point
            return interval(point, earliest, self.bin_ms)
        earlier = kept[index - 1] if index > 0 else None
        later = kept[index] if index < len(kept) else None
        contributions: list[Contribution] = []
        if earlier and later:
            contributions += [(start, -joules, -covered) for start, joules, covered in interval(earlier, later, self.bin_ms)]
        if earlier:
            contributions += interval(earlier, point, self.bin_ms)
        if later:
            contributions += interval(point, later, self.bin_ms)
        kept.insert(index, point)
        if len(kept) > self.keep:
            self.earliest.setdefault(point.session, kept[0])
            del kept[0]
        return contributions

    def neighbours(self, session: str, seq: int) -> tuple[Point | None, Point | None]:
        """The nearest kept points before and after seq in its session (the earliest point ever seen counts too,
        for a session that dropped some)."""
        kept = self.sessions.get(session, [])
        index = bisect.bisect_left(kept, seq, key=lambda p: p.seq)
        earlier = kept[index - 1] if index > 0 else None
        later_index = index + 1 if index < len(kept) and kept[index].seq == seq else index
        later = kept[later_index] if later_index < len(kept) else None
        earliest = self.earliest.get(session)
        if index == 0 and earliest is not None and seq < earliest.seq:
            later = earliest
        return earlier, later

    def held(self) -> int:
        """How many points are kept, the earliest ones included."""
        return sum(map(len, self.sessions.values())) + len(self.earliest)

    def holds(self, session: str, seq: int) -> bool:
        """Whether this point of the session is still kept (among the newest, or as the earliest)."""
        earliest = self.earliest.get(session)
        if earliest is not None and earliest.seq == seq:
            return True
        kept = self.sessions.get(session)
        if not kept or not kept[0].seq <= seq <= kept[-1].seq:
            return False
        index = bisect.bisect_left(kept, seq, key=lambda p: p.seq)
        return kept[index].seq == seq

    def forget_sessions_before(self, ts_ms: int) -> int:
        """Drop sessions whose newest point is older than ts_ms (the sender has moved on). Returns how many."""
        stale = [s for s, kept in self.sessions.items() if kept[-1].ts_ms < ts_ms]
        for session in stale:
            del self.sessions[session]
            self.earliest.pop(session, None)
        return len(stale)
