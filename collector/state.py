"""The collector's durable state in SQLite: the points the book holds for every stream, and every accumulator.

Saved in one transaction per flush, before the flushed MQTT messages are acknowledged, so a collector
killed at any moment restarts from state that matches what the broker will redeliver: a message whose
points were saved is recognised as a duplicate, one whose points were not is accounted afresh.

Points go to an append-only log (`point_batches`, in arrival order), one row per save holding all of its points
in columns (streams and sessions as newline-separated text, seq and ts_ms as little-endian int64, energy_j as
float64): a flush appends one row of a few pages, instead of one row per point all over a table keyed by stream.
The log is compacted as it grows, a bounded slice per save: once it holds more than twice the points the book holds
(and at least `COMPACT_MIN_POINTS`), a pass walks the rows that existed when it began, oldest first, until it
has walked `COMPACT_PER_APPENDED` points per new point (at least `COMPACT_MIN_SLICE`); the points the book still
holds (`EnergyBook.holds`: each session's earliest and newest `keep` points, sessions not yet forgotten) are
appended again as one row, and the walked rows are deleted. So the log holds the book's points plus at most about
twice as many dropped ones, and `load_into` restores the book's points, in seq order per session. Points reach the
head of the log long after they arrived (a site publishing every 10 s with `keep` = 16 drops a point 160 s after it
arrived), so a pass appends again little more than each session's earliest point and the points of devices that
went quiet.

Accumulators whose rack_energy / meter_energy line is not in the output spool yet (the reporter holds lines back
while more messages wait, see Reporter.accumulator_lines) are saved as such: while lines are held back, saved
accumulators are stamped with a line epoch above the one recorded as written (table meta); the save after which
every line is written stamps its own with that epoch too and records it as written. `load_into` hands the
accumulators of an epoch above the written one back to the book as unwritten, so that a restarted collector
writes their lines.
"""

from __future__ import annotations

import sqlite3
import sys
from array import array
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

from collector.accounting import Point
from collector.book import Accumulator, AccumulatorKey, EnergyBook
from collector.site import STREAM_SEPARATOR as _SEP

# Accumulators are keyed bin first: a flush changes the current bin of thousands of racks, whose rows then sit side
# by side on a few pages. Keyed scope first (before), each rack's current row sat among its days of older bins, and
# a flush rewrote one page per rack: 12 µs per row instead of 1.7 with 9 days of 5,000 racks' bins.
_ACCUMULATORS_TABLE = """
CREATE TABLE IF NOT EXISTS {name} (
    scope TEXT NOT NULL, bin_ms INTEGER NOT NULL,
    energy_j REAL, covered_ms REAL, cpu_w REAL, cpu_n REAL, gpu_w REAL, gpu_n REAL,
    line_epoch INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (bin_ms, scope)) WITHOUT ROWID;
"""
_SCHEMA = """
CREATE TABLE IF NOT EXISTS point_batches (
    points INTEGER NOT NULL, streams TEXT NOT NULL, sessions TEXT NOT NULL,
    seqs BLOB NOT NULL, ts_ms BLOB NOT NULL, energies_j BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
""" + _ACCUMULATORS_TABLE.format(name="accumulators")
_ACCUMULATOR_COLUMNS = "scope, bin_ms, energy_j, covered_ms, cpu_w, cpu_n, gpu_w, gpu_n"
_BATCH_COLUMNS = "points, streams, sessions, seqs, ts_ms, energies_j"
_ROW_TABLES = ("points", "point_log")  # earlier layouts, one row per point: converted at open
_CONVERTED_PER_BATCH = 100_000
# Accumulators of one bin change in many flushes; a larger WAL between checkpoints (pages of 4 KiB, up to
# ~80 MiB) lets a page changed by several flushes be copied back once.
_WAL_AUTOCHECKPOINT_PAGES = 20_000
_ENCODED_MAX = 1_000_000
COMPACT_MIN_POINTS = 100_000
COMPACT_PER_APPENDED = 2
COMPACT_MIN_SLICE = 1_000

# One saved point as the log holds it: (stream key, session, seq, ts_ms, energy_j)
SavedPoint = tuple[str, str, int, int, float]


class StateStore:
    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(f"PRAGMA wal_autocheckpoint={_WAL_AUTOCHECKPOINT_PAGES}")
        self._db.executescript(_SCHEMA)
        columns = {row[1]: row[5] for row in self._db.execute("PRAGMA table_info(accumulators)")}  # name: pk
        if "line_epoch" not in columns:  # a state.db from before line epochs: every line was written
            self._db.execute("ALTER TABLE accumulators ADD COLUMN line_epoch INTEGER NOT NULL DEFAULT 0")
        if columns["scope"] == 1:  # keyed (scope, bin_ms): see _ACCUMULATORS_TABLE
            self._rekey_accumulators()
        self._written_epoch = self._meta("lines_written_epoch")
        self._holding = self._db.execute("SELECT 1 FROM accumulators WHERE line_epoch > ? LIMIT 1",
                                         (self._written_epoch,)).fetchone() is not None
        self._log_points = 0  # points in the log, kept up to date by _append and _compact
        for table in _ROW_TABLES:
            if self._db.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (table,)).fetchone():
                self._convert(table)
        self._log_points = self._count_log_points()
        self._pass_end = 0  # the last row of the compaction pass under way; 0 between passes
        self._next_check_points = COMPACT_MIN_POINTS  # log size at which to count the book's points again

    def save(self, points: list[tuple[str, Point]], accumulators: dict[AccumulatorKey, Accumulator],
             lines_written: bool = True, book: EnergyBook | None = None) -> None:
        """Store new points and the current value of changed accumulators, atomically. lines_written: every
        accumulator changed so far, these included, has its line in the output spool; False while the reporter
        holds some back (they are then restored as unwritten). book: the one saved, to compact the point log
        against it in the same transaction (see the module's docstring); no compaction without it."""
        epoch = self._written_epoch + (1 if self._holding or not lines_written else 0)
        accumulator_rows = [(_encode(key[:-1]), key[-1], *acc.as_row(), epoch) for key, acc in accumulators.items()]
        with self._transaction():
            if points:
                self._append([stream for stream, _ in points], [p.session for _, p in points],
                             [p.seq for _, p in points], [p.ts_ms for _, p in points],
                             [p.energy_j for _, p in points])
            if book is not None:
                self._compact(book, max(COMPACT_MIN_SLICE, COMPACT_PER_APPENDED * len(points)))
            self._db.executemany(f"INSERT OR REPLACE INTO accumulators ({_ACCUMULATOR_COLUMNS}, line_epoch) "
                                 "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", accumulator_rows)
            if lines_written and epoch != self._written_epoch:
                self._db.execute("INSERT OR REPLACE INTO meta VALUES ('lines_written_epoch', ?)", (epoch,))
        self._holding = not lines_written
        if lines_written:
            self._written_epoch = epoch

    def load_into(self, book: EnergyBook) -> tuple[int, int]:
        """Restore a book from the saved state; returns (points, accumulators) restored. Accumulators saved
        while their lines were held back are restored as unwritten (`EnergyBook.unwritten`)."""
        points = 0
        for stream, session, seq, ts_ms, energy_j in sorted(self.saved_points()):
            book.restore_point(stream, Point(session, seq, ts_ms, energy_j))
            points += 1
        accumulators = 0
        for scope, bin_ms, *row, line_epoch in self._db.execute(
                f"SELECT {_ACCUMULATOR_COLUMNS}, line_epoch FROM accumulators"):
            book.restore_accumulator((*_decode(scope), bin_ms), row,
                                     unwritten=line_epoch > self._written_epoch)
            accumulators += 1
        return points, accumulators

    def saved_points(self) -> Iterator[SavedPoint]:
        """Every point in the log, oldest row first."""
        for batch in self._db.execute(f"SELECT {_BATCH_COLUMNS} FROM point_batches ORDER BY rowid"):
            yield from _unpack(batch)

    def prune(self, rack_bins_before_ms: int, site_bins_before_ms: int) -> int:
        """Drop accumulators older than these cut-offs (as EnergyBook.forget does in memory). Returns rows deleted.
        Points need no pruning: compaction drops those the book has forgotten."""
        before = self._db.total_changes
        self._db.execute(f"DELETE FROM accumulators WHERE scope LIKE 'rack{_SEP}%' AND bin_ms < ?", (rack_bins_before_ms,))
        self._db.execute(f"DELETE FROM accumulators WHERE scope NOT LIKE 'rack{_SEP}%' AND bin_ms < ?",
                         (site_bins_before_ms,))
        return self._db.total_changes - before

    def compact(self, book: EnergyBook) -> None:
        """Compact the whole point log now: afterwards it holds exactly the points the book holds."""
        self._pass_end = self._last_row()
        with self._transaction():
            self._compact(book, None)

    def _append(self, streams: list[str], sessions: list[str], seqs: list[int], stamps: list[int],
                energies: list[float]) -> None:
        """Append one row of points (given column by column) to the log, inside the caller's transaction."""
        self._db.execute(f"INSERT INTO point_batches ({_BATCH_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                         (len(streams), "\n".join(streams), "\n".join(sessions), _packed("q", seqs),
                          _packed("q", stamps), _packed("d", energies)))
        self._log_points += len(streams)

    def _compact(self, book: EnergyBook, limit: int | None) -> None:
        """One slice of a compaction pass (all of it when limit is None), inside the caller's transaction: whole
        rows are walked until `limit` points are."""
        if not self._pass_end and not self._start_pass(book):
            return
        walked, last_row = 0, None
        kept: tuple[list, ...] = ([], [], [], [], [])
        holds = book.holds
        rows = self._db.execute(f"SELECT rowid, {_BATCH_COLUMNS} FROM point_batches WHERE rowid <= ? ORDER BY rowid",
                                (self._pass_end,))
        for row in rows:
            for saved in _unpack(row[1:]):
                if holds(saved[0], saved[1], saved[2]):
                    for column, value in zip(kept, saved):
                        column.append(value)
            walked += row[1]
            last_row = row[0]
            if limit is not None and walked >= limit:
                break
        rows.close()
        if last_row is None:
            self._pass_end = 0
            return
        self._db.execute("DELETE FROM point_batches WHERE rowid <= ?", (last_row,))
        self._log_points -= walked
        if kept[0]:
            self._append(*kept)
        if last_row >= self._pass_end:
            self._pass_end = 0

    def _start_pass(self, book: EnergyBook) -> bool:
        """Start a pass when more than half the log is points the book dropped. The book's points are counted
        only when the log has doubled since they last were (a count walks every stream)."""
        if self._log_points < self._next_check_points:
            return False
        held = book.held_points()
        self._next_check_points = max(COMPACT_MIN_POINTS, 2 * held)
        if self._log_points < self._next_check_points:
            return False
        self._pass_end = self._last_row()
        return True

    def _convert(self, table: str) -> None:
        """Move the points of an earlier layout (one row per point) into the log, and drop its table."""
        with self._transaction():
            rows = self._db.execute(f"SELECT stream, session, seq, ts_ms, energy_j FROM {table}")
            while chunk := rows.fetchmany(_CONVERTED_PER_BATCH):
                self._append(*(list(column) for column in zip(*chunk)))
            self._db.execute(f"DROP TABLE {table}")

    def _rekey_accumulators(self) -> None:
        """Rebuild an accumulators table keyed scope first as _ACCUMULATORS_TABLE, keyed bin first."""
        with self._transaction():
            self._db.execute(_ACCUMULATORS_TABLE.format(name="accumulators_rekeyed"))
            self._db.execute(f"INSERT INTO accumulators_rekeyed ({_ACCUMULATOR_COLUMNS}, line_epoch) "
                             f"SELECT {_ACCUMULATOR_COLUMNS}, line_epoch FROM accumulators")
            self._db.execute("DROP TABLE accumulators")
            self._db.execute("ALTER TABLE accumulators_rekeyed RENAME TO accumulators")

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """Commit what the block does, or roll it back (and the log's point count and compaction pass with it)."""
        self._db.execute("BEGIN")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            self._log_points = self._count_log_points()
            self._pass_end = 0
            raise
        self._db.execute("COMMIT")

    def _last_row(self) -> int:
        """The log's newest row (0 when empty)."""
        return self._db.execute("SELECT COALESCE(MAX(rowid), 0) FROM point_batches").fetchone()[0]

    def _count_log_points(self) -> int:
        return self._db.execute("SELECT COALESCE(SUM(points), 0) FROM point_batches").fetchone()[0]

    def close(self) -> None:
        self._db.close()

    def _meta(self, key: str) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else 0


def _packed(typecode: str, values: list) -> bytes:
    """Numbers as little-endian int64 ("q") or float64 ("d") bytes."""
    packed = array(typecode, values)
    if sys.byteorder == "big":
        packed.byteswap()
    return packed.tobytes()


def _unpacked(typecode: str, data: bytes) -> array:
    numbers = array(typecode)
    numbers.frombytes(data)
    if sys.byteorder == "big":
        numbers.byteswap()
    return numbers


def _unpack(batch: tuple) -> zip:
    """The points of one log row (its columns, `points` first), as SavedPoint tuples."""
    _count, streams, sessions, seqs, stamps, energies = batch
    return zip(streams.split("\n"), sessions.split("\n"), _unpacked("q", seqs), _unpacked("q", stamps),
               _unpacked("d", energies))


@lru_cache(maxsize=_ENCODED_MAX)
def _encode(key: tuple) -> str:
    """An accumulator's scope as stored; cached, since the same racks save again and again."""
    return _SEP.join(str(part) for part in key)


@lru_cache(maxsize=_ENCODED_MAX)
def _decode(text: str) -> tuple[str, ...]:
    """A stored scope as the book's tuple."""
    return tuple(text.split(_SEP))
