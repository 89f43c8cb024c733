"""The collector's durable state in SQLite: recent points of every stream, and every accumulator.

Saved in one transaction per flush, before the flushed MQTT messages are acknowledged, so a collector
killed at any moment restarts from state that matches what the broker will redeliver: a message whose
points were saved is recognised as a duplicate, one whose points were not is accounted afresh.
Points are pruned to the earliest and the newest `keep` of each session, which is what the book keeps.

Accumulators whose rack_energy / meter_energy line is not in the output spool yet (the reporter holds lines back
while more messages wait, see Reporter.accumulator_lines) are saved as such: while lines are held back, saved
accumulators are stamped with a line epoch above the one recorded as written (table meta); the save after which
every line is written stamps its own with that epoch too and records it as written. `load_into` hands the
accumulators of an epoch above the written one back to the book as unwritten, so that a restarted collector
writes their lines.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from collector.accounting import Point
from collector.book import Accumulator, AccumulatorKey, EnergyBook

_SEP = "\x1f"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS points (
    stream TEXT NOT NULL, session TEXT NOT NULL, seq INTEGER NOT NULL, ts_ms INTEGER NOT NULL, energy_j REAL NOT NULL,
    PRIMARY KEY (stream, session, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS accumulators (
    scope TEXT NOT NULL, bin_ms INTEGER NOT NULL,
    energy_j REAL, covered_ms REAL, cpu_w REAL, cpu_n REAL, gpu_w REAL, gpu_n REAL,
    line_epoch INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (scope, bin_ms)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
"""
_ACCUMULATOR_COLUMNS = "scope, bin_ms, energy_j, covered_ms, cpu_w, cpu_n, gpu_w, gpu_n"
# Each flush rewrites pages all over the points table (its keys are not in time order); a larger WAL between
# checkpoints (pages of 4 KiB, up to ~80 MiB) lets a page changed by several flushes be copied back once.
_WAL_AUTOCHECKPOINT_PAGES = 20_000
_ENCODED_MAX = 1_000_000


class StateStore:
    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(f"PRAGMA wal_autocheckpoint={_WAL_AUTOCHECKPOINT_PAGES}")
        self._db.executescript(_SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(accumulators)")}
        if "line_epoch" not in columns:  # a state.db from before line epochs: every line was written
            self._db.execute("ALTER TABLE accumulators ADD COLUMN line_epoch INTEGER NOT NULL DEFAULT 0")
        self._written_epoch = self._meta("lines_written_epoch")
        self._holding = self._db.execute("SELECT 1 FROM accumulators WHERE line_epoch > ? LIMIT 1",
                                         (self._written_epoch,)).fetchone() is not None
        self._encoded: dict[tuple, str] = {}

    def save(self, points: list[tuple[tuple, Point]], accumulators: dict[AccumulatorKey, Accumulator],
             lines_written: bool = True) -> None:
        """Store new points and the current value of changed accumulators, atomically. lines_written: every
        accumulator changed so far, these included, has its line in the output spool; False while the reporter
        holds some back (they are then restored as unwritten)."""
        encode = self._encode
        point_rows = sorted([(encode(stream), p.session, p.seq, p.ts_ms, p.energy_j) for stream, p in points])
        epoch = self._written_epoch + (1 if self._holding or not lines_written else 0)
        accumulator_rows = sorted([(encode(key[:-1]), key[-1], *acc.as_row(), epoch)
                                   for key, acc in accumulators.items()])
        self._db.execute("BEGIN")
        try:
            self._db.executemany("INSERT OR IGNORE INTO points VALUES (?, ?, ?, ?, ?)", point_rows)
            self._db.executemany(f"INSERT OR REPLACE INTO accumulators ({_ACCUMULATOR_COLUMNS}, line_epoch) "
                                 "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", accumulator_rows)
            if lines_written and epoch != self._written_epoch:
                self._db.execute("INSERT OR REPLACE INTO meta VALUES ('lines_written_epoch', ?)", (epoch,))
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
        self._holding = not lines_written
        if lines_written:
            self._written_epoch = epoch

    def load_into(self, book: EnergyBook) -> tuple[int, int]:
        """Restore a book from the saved state; returns (points, accumulators) restored. Accumulators saved
        while their lines were held back are restored as unwritten (`EnergyBook.unwritten`)."""
        points = 0
        for stream, session, seq, ts_ms, energy_j in self._db.execute(
                "SELECT stream, session, seq, ts_ms, energy_j FROM points ORDER BY stream, session, seq"):
            book.restore_point(_decode(stream), Point(session, seq, ts_ms, energy_j))
            points += 1
        accumulators = 0
        for scope, bin_ms, *row, line_epoch in self._db.execute(
                f"SELECT {_ACCUMULATOR_COLUMNS}, line_epoch FROM accumulators"):
            book.restore_accumulator((*_decode(scope), bin_ms), row,
                                     unwritten=line_epoch > self._written_epoch)
            accumulators += 1
        return points, accumulators

    def prune(self, keep: int, sessions_older_than_ms: int, rack_bins_before_ms: int, site_bins_before_ms: int) -> int:
        """Keep each session's earliest and newest `keep` points; drop sessions silent since the cut-off and
        accumulators older than theirs (as EnergyBook.forget does in memory). Returns rows deleted."""
        before = self._db.total_changes
        self._db.execute(f"DELETE FROM accumulators WHERE scope LIKE 'rack{_SEP}%' AND bin_ms < ?", (rack_bins_before_ms,))
        self._db.execute(f"DELETE FROM accumulators WHERE scope NOT LIKE 'rack{_SEP}%' AND bin_ms < ?",
                         (site_bins_before_ms,))
        self._db.execute("""
            DELETE FROM points WHERE (stream, session, seq) IN (
                SELECT stream, session, seq FROM (
                    SELECT stream, session, seq,
                           ROW_NUMBER() OVER (PARTITION BY stream, session ORDER BY seq DESC) AS newest,
                           ROW_NUMBER() OVER (PARTITION BY stream, session ORDER BY seq) AS oldest
                    FROM points)
                WHERE newest > ? AND oldest > 1)""", (keep,))
        self._db.execute("""
            DELETE FROM points WHERE (stream, session) IN (
                SELECT stream, session FROM points GROUP BY stream, session HAVING MAX(ts_ms) < ?)""",
                         (sessions_older_than_ms,))
        return self._db.total_changes - before

    def close(self) -> None:
        self._db.close()

    def _meta(self, key: str) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else 0

    def _encode(self, key: tuple) -> str:
        """A stream or scope key as stored, made once per key (the same streams save again and again)."""
        text = self._encoded.get(key)
        if text is None:
            if len(self._encoded) >= _ENCODED_MAX:
                self._encoded.clear()
            text = self._encoded[key] = _encode(key)
        return text


def _encode(key: tuple) -> str:
    return _SEP.join(str(part) for part in key)


def _decode(text: str) -> tuple[str, ...]:
    return tuple(text.split(_SEP))
