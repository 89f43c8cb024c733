"""The collector's durable state (collector/state.py): what is saved and restored reproduces the book exactly, so
a restarted collector neither double counts redelivered points nor loses what it had; pruning keeps what the
book keeps (each session's earliest and newest `keep` points) and forgets sessions silent since the cut-off.

Site: tests/site_stream.py. T is a bin start (2026-03-02T00:00Z).
"""

from __future__ import annotations

import sqlite3
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from unittest import mock

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from collector.accounting import BIN_MS, Point
from collector.book import EnergyBook, Utilisation
from collector.site import SiteConfig, SiteIndex
from collector import state
from collector.state import StateStore
from tests.site_stream import SITE_YAML

MIN = 60_000
T = int(datetime(2026, 3, 2, tzinfo=timezone.utc).timestamp() * 1000)
INDEX = SiteIndex(SiteConfig.model_validate(yaml.safe_load(SITE_YAML)))
H01 = INDEX.host("dc1", "hall-a", "r01", "h01")
H02 = INDEX.host("dc1", "hall-a", "r01", "h02")
UTILITY = INDEX.meter("dc1", "facility", "main", "utility-1")
H01_STREAM = "host\x1fdc1\x1fhall-a\x1fr01\x1fh01"
UTILITY_STREAM = "meter\x1fdc1\x1futility-1"
KEEP = 4


def h01_point(seq: int, session: str = "s-h01-a") -> Point:
    return Point(session, seq, T + seq * 2 * MIN, seq * 60_000.0)  # 500 W, every 2 min


def rows(book: EnergyBook) -> dict:
    return {key: acc.as_row() for key, acc in book.accumulators.items()}


def stream_states(book: EnergyBook) -> dict:
    return {stream: (state.sessions, state.earliest) for stream, state in book.streams.items()}


def flush(book: EnergyBook, store: StateStore) -> None:
    """What the service does after each batch: the new points and the changed accumulators, in one transaction."""
    store.save(book.take_new_points(), book.take_dirty())


def busy_book(store: StateStore) -> EnergyBook:
    """h01: 12 points (2 sessions), h02: 4, utility-1: 5 with one late; saved over three flushes."""
    book = EnergyBook(INDEX, keep_points=KEEP)
    util = Utilisation(cpu=0.25, gpu=0.75, seconds=120.0)
    for seq in range(6):
        book.add_host_point(H01, h01_point(seq), util)
    for seq in range(4):
        book.add_host_point(H02, Point("s-h02-a", seq, T + seq * 5 * MIN, seq * 90_000.0), None)
    flush(book, store)
    for seq in range(6, 10):
        book.add_host_point(H01, h01_point(seq), util)
    for seq in (0, 1, 4, 3):  # seq 3 arrives late and splits 1-4
        book.add_meter_point(UTILITY, Point("s-utility-a", seq, T + seq * 10 * MIN, seq * 540_000.0))
    flush(book, store)
    book.add_host_point(H01, h01_point(0, "s-h01-b"), util)  # agent restarted
    book.add_host_point(H01, Point("s-h01-b", 1, T + 21 * MIN, 30_000.0), util)
    book.add_meter_point(UTILITY, Point("s-utility-a", 2, T + 20 * MIN, 1_080_000.0))  # late again
    flush(book, store)
    return book


def restored(path, keep: int = KEEP, index: SiteIndex = INDEX) -> tuple[EnergyBook, tuple[int, int]]:
    store = StateStore(path)
    book = EnergyBook(index, keep_points=keep)
    counts = store.load_into(book)
    store.close()
    return book, counts


def test_save_then_load_reproduces_the_accumulators_and_the_kept_points_exactly(tmp_path):
    store = StateStore(tmp_path / "state.db")
    book = busy_book(store)
    store.close()
    again, (points, accumulators) = restored(tmp_path / "state.db")
    # every point saved: h01 10 + 2, h02 4, utility 5
    assert points == 21
    assert accumulators == len(book.accumulators)
    assert rows(again) == rows(book)  # exactly: REAL columns hold the same doubles
    assert stream_states(again) == stream_states(book)
    assert again.bins_by_site == book.bins_by_site
    assert again.take_dirty() == {} and again.take_new_points() == []


@pytest.mark.parametrize(("stream", "point"), [
    ("host", h01_point(9)),  # the newest of a session
    ("host", h01_point(6)),  # one kept in memory
    ("host", h01_point(0)),  # the earliest, kept beside the newest
    ("host", h01_point(0, "s-h01-b")),  # the first point of the newer session
    ("meter", Point("s-utility-a", 3, T + 30 * MIN, 1_620_000.0)),  # a point that had arrived late
], ids=["newest", "kept", "earliest", "first-of-session", "late-meter-point"])
def test_a_restored_book_recognises_a_resent_point_as_duplicate(tmp_path, stream, point):
    store = StateStore(tmp_path / "state.db")
    busy_book(store)
    store.close()
    again, _ = restored(tmp_path / "state.db")
    before = rows(again)
    if stream == "host":
        outcome = again.add_host_point(H01, point, Utilisation(cpu=1.0, gpu=None, seconds=120.0))
    else:
        outcome = again.add_meter_point(UTILITY, point)
    assert outcome == "duplicate"
    assert rows(again) == before  # no double counting after a restart


def test_a_restored_book_ignores_a_point_older_than_the_kept_ones(tmp_path):
    store = StateStore(tmp_path / "state.db")
    busy_book(store)
    store.close()
    again, _ = restored(tmp_path / "state.db")
    before = rows(again)
    # keep 4: session s-h01-a keeps seqs 6..9 and its earliest, 0; seq 3 falls among the dropped ones
    assert [p.seq for p in again.streams[H01_STREAM].sessions["s-h01-a"]] == [6, 7, 8, 9]
    assert again.add_host_point(H01, h01_point(3), None) == "refinement-ignored"
    assert rows(again) == before


def test_a_restored_book_goes_on_counting_as_the_original_would(tmp_path):
    store = StateStore(tmp_path / "state.db")
    book = busy_book(store)
    store.close()
    again, _ = restored(tmp_path / "state.db")
    for b in (book, again):
        assert b.add_host_point(H01, h01_point(10), None) == "new"  # 18-20 min: 60 000 J, half in bin T+15
        assert b.add_meter_point(UTILITY, Point("s-utility-a", 5, T + 50 * MIN, 2_700_000.0)) == "new"
    assert rows(again) == rows(book)


def test_saving_an_accumulator_again_replaces_its_value(tmp_path):
    store = StateStore(tmp_path / "state.db")
    book = EnergyBook(INDEX)
    book.add_meter_point(UTILITY, Point("s-utility-a", 0, T, 0.0))
    book.add_meter_point(UTILITY, Point("s-utility-a", 1, T + 5 * MIN, 270_000.0))
    flush(book, store)
    book.add_meter_point(UTILITY, Point("s-utility-a", 2, T + 10 * MIN, 540_000.0))
    flush(book, store)
    store.close()
    again, (points, accumulators) = restored(tmp_path / "state.db")
    assert (points, accumulators) == (3, 1)
    # 0-10 min at 900 W = 540 000 J over 600 000 ms
    assert again.accumulators[("meter", "dc1", "utility-1", T)].as_row()[:2] == (540_000.0, 600_000.0)


# ---------------------------------------------------------------------------------------------------------------
# prune
# ---------------------------------------------------------------------------------------------------------------

def saved_points(path) -> dict[tuple[str, str], list[int]]:
    store = StateStore(path)
    try:
        found: dict[tuple[str, str], list[int]] = {}
        for stream, session, seq, _ts_ms, _energy_j in sorted(store.saved_points()):
            found.setdefault((stream.split("\x1f")[-1], session), []).append(seq)
        return found
    finally:
        store.close()


def test_compaction_keeps_each_session_s_earliest_and_newest_points_and_drops_forgotten_sessions(tmp_path):
    path = tmp_path / "state.db"
    store = StateStore(path)
    book = EnergyBook(INDEX, keep_points=3)
    for seq in range(10):  # recent: T .. T+18 min
        book.add_host_point(H01, h01_point(seq), None)
    for seq in range(5):  # h02, a session that ended at T-2 days
        book.add_host_point(H02, Point("s-h02-old", seq, T - 2 * 86_400_000 - (4 - seq) * MIN, seq * 1.0), None)
    for seq in range(2):  # h01, an older session of the same stream, silent since T-1 day - 1 ms
        book.add_host_point(H01, Point("s-h01-old", seq, T - 86_400_000 - 1 - (1 - seq) * MIN, seq * 1.0), None)
    flush(book, store)
    assert sum(len(seqs) for seqs in saved_points(path).values()) == 17  # the log holds every saved point
    accumulators_before = len(book.accumulators)
    assert book.forget(sessions_before_ms=T - 86_400_000, rack_bins_before_ms=0, site_bins_before_ms=0) == 2
    store.compact(book)
    store.close()
    # keep 3: s-h01-a keeps its earliest and seqs 7..9; the two forgotten sessions are gone
    assert saved_points(path) == {("h01", "s-h01-a"): [0, 7, 8, 9]}
    again, (points, accumulators) = restored(path, keep=3)
    assert (points, accumulators) == (4, accumulators_before)  # accumulators are not compacted
    assert rows(again) == rows(book)
    assert stream_states(again) == stream_states(book)


def test_a_session_newer_than_the_cut_off_is_kept_whole_up_to_keep(tmp_path):
    path = tmp_path / "state.db"
    store = StateStore(path)
    book = EnergyBook(INDEX, keep_points=3)
    for seq in range(4):  # earliest + newest 3 = all 4
        book.add_host_point(H01, h01_point(seq), None)
    flush(book, store)
    # the session's newest point is at T+6 min: exactly at the cut-off is not older than it
    assert book.forget(sessions_before_ms=T + 6 * MIN, rack_bins_before_ms=0, site_bins_before_ms=0) == 0
    store.compact(book)
    assert saved_points(path) == {("h01", "s-h01-a"): [0, 1, 2, 3]}
    assert book.forget(sessions_before_ms=T + 6 * MIN + 1, rack_bins_before_ms=0, site_bins_before_ms=0) == 1
    store.compact(book)
    store.close()
    assert saved_points(path) == {}


def test_the_point_log_stays_bounded_and_restores_the_book_after_every_flush(tmp_path, monkeypatch):
    """What the service does: every save compacts a slice. Small thresholds make passes start and end often."""
    monkeypatch.setattr(state, "COMPACT_MIN_POINTS", 20)
    monkeypatch.setattr(state, "COMPACT_MIN_SLICE", 4)
    path = tmp_path / "state.db"
    store = StateStore(path)
    book = EnergyBook(INDEX, keep_points=3)
    log_sizes = []
    for step in range(60):
        seqs = [step * 3, step * 3 + 1, step * 3 + 2]
        for seq in seqs:
            book.add_host_point(H01, h01_point(seq), None)
            book.add_meter_point(UTILITY, Point("s-utility-a", seq, T + seq * MIN, seq * 54_000.0))
        if step % 7 == 3:  # an agent restart: a new session of h02
            book.add_host_point(H02, Point(f"s-h02-{step}", 0, T + step * 3 * MIN, 0.0), None)
        if step % 5 == 4:  # a late point between kept ones, and a resent one
            book.add_host_point(H01, h01_point(seqs[-1] - 4), None)
            book.add_host_point(H01, h01_point(seqs[-1]), None)
        store.save(book.take_new_points(), book.take_dirty(), book=book)
        log_sizes.append(sum(len(seqs) for seqs in saved_points(path).values()))
        again, _ = restored(path, keep=3)
        assert stream_states(again) == stream_states(book), step
        assert rows(again) == rows(book), step
    held = book.held_points()
    assert held == sum(len(kept) + (session in s.earliest) for s in book.streams.values()
                       for session, kept in s.sessions.items())
    # a pass starts past twice the held points, and new rows arrive at most half as fast as it walks
    assert max(log_sizes) <= 3 * max(20, held)
    assert log_sizes[-1] < 60 * 6  # compaction did drop rows
    store.close()


# one arrival: (stream, session, seq) with the counter a steady 500 W gives, or a save (None)
arrivals = st.lists(st.one_of(st.none(), st.tuples(st.sampled_from(["h01", "utility"]), st.sampled_from(["a", "b"]),
                                                  st.integers(0, 40))), max_size=150)


@settings(max_examples=60, deadline=None)
@given(history=arrivals, keep=st.integers(2, 5))
def test_whatever_arrives_and_whenever_it_is_saved_the_log_restores_the_book(history, keep):
    """Late, duplicated and restarted streams, saved at random moments with compaction slices of 3 rows once the
    log holds 8: a restart at the end restores the book, and a full compaction leaves exactly its points."""
    with tempfile.TemporaryDirectory() as folder, mock.patch.object(state, "COMPACT_MIN_POINTS", 8), \
            mock.patch.object(state, "COMPACT_MIN_SLICE", 3), mock.patch.object(state, "COMPACT_PER_APPENDED", 1):
        path = Path(folder) / "state.db"
        store = StateStore(path)
        book = EnergyBook(INDEX, keep_points=keep)
        for arrival in [*history, None]:
            if arrival is None:
                store.save(book.take_new_points(), book.take_dirty(), book=book)
                continue
            device, session, seq = arrival
            point = Point(f"s-{device}-{session}", seq, T + seq * MIN, seq * 30_000.0)
            if device == "h01":
                book.add_host_point(H01, point, None)
            else:
                book.add_meter_point(UTILITY, point)
        again, (points, _) = restored(path, keep=keep)
        assert points <= 3 * max(8, book.held_points()) + 3
        assert stream_states(again) == stream_states(book)
        assert rows(again) == rows(book)
        store.compact(book)
        store.close()
        held = {(stream.split("\x1f")[-1], session): sorted([*(p.seq for p in kept), *(
                    [s.earliest[session].seq] if session in s.earliest else [])])
                for stream, s in book.streams.items() for session, kept in s.sessions.items()}
        assert saved_points(path) == held


def test_a_book_restored_after_pruning_keeps_what_the_original_kept(tmp_path):
    path = tmp_path / "state.db"
    store = StateStore(path)
    book = EnergyBook(INDEX, keep_points=3)
    for seq in (0, 1, 2, 3, 4, 5, 6, 7):
        book.add_host_point(H01, h01_point(seq + 2), None)
    flush(book, store)
    book.add_host_point(H01, h01_point(0), None)  # older than the earliest: counted, becomes the earliest
    book.add_host_point(H01, h01_point(1), None)  # then among dropped points: ignored, not saved
    flush(book, store)
    store.compact(book)
    store.close()
    assert saved_points(path) == {("h01", "s-h01-a"): [0, 7, 8, 9]}
    again, _ = restored(path, keep=3)
    assert stream_states(again) == stream_states(book)
    assert rows(again) == rows(book)
    assert again.add_host_point(H01, h01_point(1), None) == "refinement-ignored"
    assert again.add_host_point(H01, h01_point(0), None) == "duplicate"


# ---------------------------------------------------------------------------------------------------------------
# Names that look like numbers
# ---------------------------------------------------------------------------------------------------------------

NUMERIC_YAML = """
sites:
  - id: "0042"
    name: "Numbered site"
    grid_region: central
    rooms:
      - id: "10"
        racks:
          - id: "01"
            hosts: ["01", "007"]
    meters:
      - id: "1e3"
        role: facility-input
        source: grid
"""


def test_names_that_look_like_numbers_survive_the_round_trip_as_strings(tmp_path):
    index = SiteIndex(SiteConfig.model_validate(yaml.safe_load(NUMERIC_YAML)))
    host = index.host("0042", "10", "01", "01")
    meter = index.meter("0042", "facility", "main", "1e3")
    assert host is not None and meter is not None
    store = StateStore(tmp_path / "state.db")
    book = EnergyBook(index)
    for seq in range(3):
        book.add_host_point(host, Point("00000001", seq, T + seq * 10 * MIN, seq * 300_000.0), None)
        book.add_meter_point(meter, Point("00000002", seq, T + seq * 10 * MIN, seq * 540_000.0))
    flush(book, store)
    store.close()
    again, _ = restored(tmp_path / "state.db", keep=16, index=index)
    assert rows(again) == rows(book)
    assert set(again.streams) == {"host\x1f0042\x1f10\x1f01\x1f01", "meter\x1f0042\x1f1e3"}
    for key in again.accumulators:
        assert all(isinstance(part, str) for part in key[:-1]) and isinstance(key[-1], int), key
    assert ("rack", "0042", "10", "01", T + BIN_MS) in again.accumulators
    assert again.site_bin_starts("0042", T, T + 2 * BIN_MS) == [T, T + BIN_MS]
    assert again.add_host_point(host, Point("00000001", 2, T + 20 * MIN, 600_000.0), None) == "duplicate"
    assert again.add_meter_point(meter, Point("00000002", 1, T + 10 * MIN, 540_000.0)) == "duplicate"
    assert {session for state in again.streams.values() for session in state.sessions} == {"00000001", "00000002"}


def test_forgetting_old_bins_in_memory_and_on_disk_agree(tmp_path):
    store = StateStore(tmp_path / "state.db")
    book = busy_book(store)
    cutoff = T + BIN_MS  # drop every bin before the second one
    book.forget(sessions_before_ms=0, rack_bins_before_ms=cutoff, site_bins_before_ms=cutoff)
    store.prune(rack_bins_before_ms=cutoff, site_bins_before_ms=cutoff)
    store.close()
    assert all(key[-1] >= cutoff for key in book.accumulators)
    assert book.site_bin_starts("dc1", 0, 2**62) == sorted({k[-1] for k in book.accumulators if k[0] != "rack"})
    again, _ = restored(tmp_path / "state.db")
    assert rows(again) == rows(book)


# Rack and meter lines held back by the reporter (Reporter.accumulator_lines): saved as unwritten, so that a
# collector killed before writing them writes them after its restart.

def held_then_killed(path) -> tuple[EnergyBook, dict]:
    """A flush whose lines were written, then one whose lines were held, then the process dies."""
    store = StateStore(path)
    book = EnergyBook(INDEX, keep_points=KEEP)
    book.add_host_point(H01, h01_point(0), None)
    book.add_host_point(H01, h01_point(1), None)
    store.save(book.take_new_points(), book.take_dirty(), lines_written=True)
    book.add_host_point(H01, h01_point(2), None)
    book.add_meter_point(UTILITY, Point("s-utility-a", 0, T, 0.0))
    book.add_meter_point(UTILITY, Point("s-utility-a", 1, T + 10 * MIN, 540_000.0))
    held = book.take_dirty()
    store.save(book.take_new_points(), held, lines_written=False)
    store.close()  # killed: nothing written after this
    return book, held


def test_accumulators_saved_while_lines_are_held_are_restored_as_unwritten(tmp_path):
    book, held = held_then_killed(tmp_path / "state.db")
    again, _ = restored(tmp_path / "state.db")
    assert again.unwritten == set(held)  # the rack and hosts bins of h01, the meter bin
    assert rows(again) == rows(book)


def test_a_save_after_the_held_lines_are_written_marks_them_written(tmp_path):
    held_then_killed(tmp_path / "state.db")
    store = StateStore(tmp_path / "state.db")
    book = EnergyBook(INDEX, keep_points=KEEP)
    store.load_into(book)
    assert book.unwritten
    book.unwritten.clear()  # the reporter wrote their lines
    book.add_host_point(H02, Point("s-h02-a", 0, T, 0.0), None)
    store.save(book.take_new_points(), book.take_dirty(), lines_written=True)
    store.close()
    again, _ = restored(tmp_path / "state.db")
    assert again.unwritten == set()
    assert rows(again) == rows(book)


def test_lines_held_when_the_collector_died_are_written_by_the_restarted_one(tmp_path):
    from collector.report import Reporter, site_factors
    from tests.lineparse import parse
    book, held = held_then_killed(tmp_path / "state.db")
    again, _ = restored(tmp_path / "state.db")
    reporter = Reporter(INDEX, again, {}, {"dc1": site_factors(INDEX.site("dc1"))})
    lines = sorted(parse(text) for text in reporter.accumulator_lines({}, now_s=5.0, hold_s=10.0))
    assert [(m, tags.get("rack") or tags.get("meter") or tags["room"], ts) for m, tags, _, ts in lines] == [
        ("meter_energy", "utility-1", T), ("rack_energy", "r01", T), ("room_energy", "hall-a", T)]
    for rollup in lines[1:]:
        assert rollup[2]["energy_kwh"] == pytest.approx(120_000 / 3.6e6)  # h01 up to seq 2: 4 min at 500 W


def test_a_state_from_before_line_epochs_and_the_point_log_loads_whole(tmp_path):
    path = tmp_path / "state.db"
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE points (stream TEXT NOT NULL, session TEXT NOT NULL, seq INTEGER NOT NULL,
            ts_ms INTEGER NOT NULL, energy_j REAL NOT NULL, PRIMARY KEY (stream, session, seq)) WITHOUT ROWID;
        CREATE TABLE accumulators (scope TEXT NOT NULL, bin_ms INTEGER NOT NULL, energy_j REAL, covered_ms REAL,
            cpu_w REAL, cpu_n REAL, gpu_w REAL, gpu_n REAL, PRIMARY KEY (scope, bin_ms)) WITHOUT ROWID;""")
    db.execute("INSERT INTO accumulators VALUES (?, ?, 1.0, 2.0, 3.0, 4.0, 0.0, 0.0)",
               ("rack\x1fdc1\x1fhall-a\x1fr01", T))
    db.execute("INSERT INTO points VALUES (?, 's-h01-a', 0, ?, 0.0)", ("host\x1fdc1\x1fhall-a\x1fr01\x1fh01", T))
    db.commit()
    db.close()
    book, (points, accumulators) = restored(path)
    assert (points, accumulators) == (1, 1) and book.unwritten == set()
    assert book.holds(H01_STREAM, "s-h01-a", 0)
    assert saved_points(path) == {("h01", "s-h01-a"): [0]}
    assert book.accumulators[("rack", "dc1", "hall-a", "r01", T)].as_row() == (1.0, 2.0, 3.0, 4.0, 0.0, 0.0)
    db = sqlite3.connect(path)
    keys = {name: pk for _, name, _, _, _, pk in db.execute("PRAGMA table_info(accumulators)")}
    db.close()
    assert (keys["bin_ms"], keys["scope"]) == (1, 2)  # rekeyed bin first


def test_a_state_with_one_row_per_point_is_converted_to_the_batched_log(tmp_path):
    """The layout before batches: table point_log, one row per point. Its points move to the log, and the
    restored book is the one that was saved."""
    path = tmp_path / "state.db"
    book = EnergyBook(INDEX, keep_points=KEEP)
    for seq in range(6):
        book.add_host_point(H01, h01_point(seq), None)
        book.add_meter_point(UTILITY, Point("s-utility-a", seq, T + seq * MIN, seq * 54_000.0))
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE point_log (stream TEXT NOT NULL, session TEXT NOT NULL, seq INTEGER NOT NULL, "
               "ts_ms INTEGER NOT NULL, energy_j REAL NOT NULL)")
    db.executemany("INSERT INTO point_log VALUES (?, ?, ?, ?, ?)",
                   [(stream, *point) for stream, point in book.take_new_points()])
    db.commit()
    db.close()
    again, (points, _) = restored(path)
    assert points == 12  # all that was saved; the book holds each session's earliest and newest KEEP of them
    assert stream_states(again) == stream_states(book)
    db = sqlite3.connect(path)
    assert db.execute("SELECT name FROM sqlite_master WHERE name = 'point_log'").fetchall() == []
    db.close()


def test_saved_numbers_come_back_bit_for_bit(tmp_path):
    """Seqs and times up to int64, energies with every bit of their float, through the packed columns."""
    path = tmp_path / "state.db"
    store = StateStore(path)
    saved = [(H01_STREAM, Point("s-h01-a", 2**63 - 1, 2**62 + 3, 0.1 + 0.2)),
             (UTILITY_STREAM, Point("s-utility-a", 0, 1, 1e18 / 3))]
    store.save(saved, {})
    store.close()
    again = StateStore(path)
    assert list(again.saved_points()) == [(stream, *point) for stream, point in saved]
    again.close()
