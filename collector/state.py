"""The collector's durable state in SQLite: recent points of every stream, and every accumulator.

Saved in one transaction per flush, before the flushed MQTT messages are acknowledged, so a collector
killed at any moment restarts from state that matches what the broker will redeliver: a message whose
points were saved is recognised as a duplicate, one whose points were not is accounted afresh.
Points are pruned to the earliest and the newest `keep` of each session, which is what the book keeps.
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
    PRIMARY KEY (scope, bin_ms)) WITHOUT ROWID;
"""


class StateStore:
    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def save(self, points: list[tuple[tuple, Point]], accumulators: dict[AccumulatorKey, Accumulator]) -> None:
        """Store new points and the current value of changed accumulators, atomically."""
        self._db.execute("BEGIN")
        try:
            self._db.executemany(
                "INSERT OR IGNORE INTO points VALUES (?, ?, ?, ?, ?)",
                ((_encode(stream), p.session, p.seq, p.ts_ms, p.energy_j) for stream, p in points))
            self._db.executemany(
                "INSERT OR REPLACE INTO accumulators VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                ((_encode(key[:-1]), key[-1], *acc.as_row()) for key, acc in accumulators.items()))
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def load_into(self, book: EnergyBook) -> tuple[int, int]:
        """Restore a book from the saved state; returns (points, accumulators) restored."""
        points = 0
        for stream, session, seq, ts_ms, energy_j in self._db.execute(
                "SELECT stream, session, seq, ts_ms, energy_j FROM points ORDER BY stream, session, seq"):
            book.restore_point(_decode(stream), Point(session, seq, ts_ms, energy_j))
            points += 1
        accumulators = 0
        for scope, bin_ms, *row in self._db.execute("SELECT * FROM accumulators"):
            book.restore_accumulator((*_decode(scope), bin_ms), row)
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


def _encode(key: tuple) -> str:
    return _SEP.join(str(part) for part in key)


def _decode(text: str) -> tuple[str, ...]:
    return tuple(text.split(_SEP))
