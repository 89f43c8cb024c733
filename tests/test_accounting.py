"""Energy accounting from cumulative counters: hand-computed tables and properties under disorder."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collector.accounting import BIN_MS, Point, StreamState, bin_energies, spread

MIN = 60_000


@pytest.mark.parametrize(
    ("start", "end", "joules", "expected"),
    [
        # inside one bin: everything there, covered for the interval's length
        (0, 10 * MIN, 600.0, [(0, 600.0, 10 * MIN)]),
        # 10:00 to 20:00 crosses the 15:00 boundary: 5 minutes each side, half the energy each
        (10 * MIN, 20 * MIN, 600.0, [(0, 300.0, 5 * MIN), (BIN_MS, 300.0, 5 * MIN)]),
        # 45 minutes from 0: three whole bins of 100 J each
        (0, 45 * MIN, 300.0, [(0, 100.0, BIN_MS), (BIN_MS, 100.0, BIN_MS), (2 * BIN_MS, 100.0, BIN_MS)]),
        # a clock step backwards: energy kept, in the bin of the end, nothing covered
        (20 * MIN, 10 * MIN, 50.0, [(0, 50.0, 0.0)]),
    ],
)
def test_spread_splits_energy_in_proportion_to_time(start, end, joules, expected):
    assert spread(start, end, joules) == [(b, pytest.approx(j), c) for b, j, c in expected]


def test_bin_energies_hand_computed_table():
    points = [
        Point("a", 0, 0, 0.0),
        Point("a", 1, 10 * MIN, 1000.0),  # 1000 J in 0-10 min: bin 0
        Point("a", 2, 20 * MIN, 3000.0),  # 2000 J in 10-20 min: 1000 J in bin 0, 1000 J in bin 1
        Point("b", 0, 25 * MIN, 0.0),  # new session (agent restarted): 20-25 min is unknown
        Point("b", 1, 30 * MIN, 500.0),  # 500 J in 25-30 min: bin 1
    ]
    bins = bin_energies(points)
    assert bins[0].energy_j == pytest.approx(2000.0)
    assert bins[0].covered_ms == 15 * MIN
    assert bins[BIN_MS].energy_j == pytest.approx(1500.0)
    assert bins[BIN_MS].covered_ms == 10 * MIN  # 15-20 and 25-30; 20-25 not covered


def test_gap_with_intact_counter_loses_no_energy():
    points = [Point("a", 0, 0, 0.0), Point("a", 7, 40 * MIN, 4000.0)]  # seqs 1-6 never arrived
    total = sum(b.energy_j for b in bin_energies(points).values())
    assert total == pytest.approx(4000.0)


def sessions_strategy():
    """Points of one stream: up to 3 sessions, each with increasing times and non-decreasing counters."""

    @st.composite
    def build(draw):
        points = []
        start = 0
        for session in range(draw(st.integers(1, 3))):
            count = draw(st.integers(1, 25))
            steps = draw(st.lists(st.integers(1, 20 * MIN), min_size=count, max_size=count))
            joules = draw(st.lists(st.floats(0, 1e6, allow_nan=False), min_size=count, max_size=count))
            ts, energy = start, 0.0
            for seq in range(count):
                ts += steps[seq]
                points.append(Point(f"s{session}", seq, ts, energy))
                energy += joules[seq]
            start = ts
        return points

    return build()


def true_total(points: list[Point]) -> float:
    by_session: dict[str, list[Point]] = {}
    for p in points:
        by_session.setdefault(p.session, []).append(p)
    return sum(max(p.energy_j for p in ps) - min(p.energy_j for p in ps) for ps in by_session.values())


@settings(max_examples=200, deadline=None)
@given(points=sessions_strategy(), seed=st.integers(0, 2**32), keep=st.integers(2, 20))
def test_totals_invariant_under_duplication_and_reordering(points, seed, keep):
    rng = random.Random(seed)
    delivered = points + rng.sample(points, k=len(points) // 2)  # duplicates
    rng.shuffle(delivered)  # any arrival order

    reference = bin_energies(points)
    assert bin_energies(delivered).keys() == reference.keys()
    assert math.isclose(sum(b.energy_j for b in reference.values()), true_total(points), rel_tol=1e-9, abs_tol=1e-6)

    state = StreamState(keep=keep)
    streamed: dict[int, float] = {}
    for point in delivered:
        for start, joules, _covered in state.add(point) or []:
            streamed[start] = streamed.get(start, 0.0) + joules
    assert math.isclose(sum(streamed.values()), true_total(points), rel_tol=1e-9, abs_tol=1e-3)


@settings(max_examples=200, deadline=None)
@given(points=sessions_strategy(), seed=st.integers(0, 2**32))
def test_streaming_matches_reference_per_bin_when_nothing_is_dropped(points, seed):
    rng = random.Random(seed)
    delivered = points * 2
    rng.shuffle(delivered)
    state = StreamState(keep=len(points) + 1)
    energy: dict[int, float] = {}
    covered: dict[int, float] = {}
    for point in delivered:
        for start, joules, ms in state.add(point) or []:
            energy[start] = energy.get(start, 0.0) + joules
            covered[start] = covered.get(start, 0.0) + ms
    for start, total in bin_energies(points).items():
        assert math.isclose(energy.get(start, 0.0), total.energy_j, rel_tol=1e-9, abs_tol=1e-3)
        assert math.isclose(covered.get(start, 0.0), total.covered_ms, rel_tol=1e-9, abs_tol=1e-3)


@settings(max_examples=300, deadline=None)
@given(seqs=st.lists(st.integers(0, 60), max_size=80), keep=st.integers(2, 8))
def test_holds_is_true_for_exactly_the_points_kept(seqs, keep):
    """Whatever the arrival order, the gaps and the repeats (the state store compacts its log with `holds`)."""
    state = StreamState(keep=keep)
    for seq in seqs:
        state.add(Point("s", seq, 1_000_000 + seq * MIN, seq * 1000.0))
    kept = {p.seq for p in [*state.earliest.values(), *state.sessions.get("s", [])]}
    assert {seq for seq in range(-1, 62) if state.holds("s", seq)} == kept
    assert not any(state.holds("t", seq) for seq in range(-1, 62))


@settings(max_examples=300, deadline=None)
@given(seqs=st.lists(st.integers(0, 60), max_size=80), keep=st.integers(2, 8), probe=st.integers(-1, 62))
def test_neighbours_are_the_nearest_kept_points_around_a_seq(seqs, keep, probe):
    """Against a search over every kept point, the earliest included (which may only be a later neighbour)."""
    state = StreamState(keep=keep)
    for seq in seqs:
        state.add(Point("s", seq, 1_000_000 + seq * MIN, seq * 1000.0))
    kept = state.sessions.get("s", [])
    below = [p for p in kept if p.seq < probe]
    above = [p for p in [*state.earliest.values(), *kept] if p.seq > probe]
    earlier, later = state.neighbours("s", probe)
    assert earlier == (below[-1] if below else None)
    assert later == (min(above, key=lambda p: p.seq) if above else None)


def test_duplicate_returns_none_and_late_point_splits_an_interval():
    state = StreamState()
    assert state.add(Point("a", 0, 0, 0.0)) == []
    assert state.add(Point("a", 2, 20 * MIN, 2000.0)) == [(0, pytest.approx(1500.0), 15 * MIN),
                                                         (BIN_MS, pytest.approx(500.0), 5 * MIN)]
    assert state.add(Point("a", 2, 20 * MIN, 2000.0)) is None
    # seq 1 at 15:00 with 1800 J shows the energy was not spread evenly: undo and redo, totals unchanged
    contributions = state.add(Point("a", 1, 15 * MIN, 1800.0))
    per_bin = {}
    for start, joules, _ in contributions:
        per_bin[start] = per_bin.get(start, 0.0) + joules
    assert per_bin[0] == pytest.approx(1800.0 - 1500.0)
    assert per_bin[BIN_MS] == pytest.approx(200.0 - 500.0)


def test_old_sessions_are_forgotten():
    state = StreamState()
    state.add(Point("old", 0, 0, 0.0))
    state.add(Point("new", 0, 60 * MIN, 0.0))
    assert state.forget_sessions_before(30 * MIN) == 1
    assert list(state.sessions) == ["new"]
