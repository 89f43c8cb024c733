"""A durable FIFO on disk (SQLite in WAL mode) that holds items until the receiver has acknowledged them.

Every item is committed before `append` returns, so a process killed with SIGKILL loses nothing that was
appended. Items come back in append order; `ack` removes them. The spool is bounded: when it holds
`max_items`, the oldest items are dropped to make room and `dropped` counts them (persisted). For the
agent that is the right end to lose: samples carry cumulative energy counters, so the energy of a dropped
stretch is still counted by the next delivered sample; only its time resolution is lost.

Thread-safe: the agent appends from its sampling loop while the MQTT network thread acknowledges.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY AUTOINCREMENT, body BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO counters (name, value) VALUES ('dropped', 0);
"""


class Spool:
    def __init__(self, path: Path | str, max_items: int):
        if max_items < 1:
            raise ValueError(f"max_items must be at least 1, got {max_items}")
        self.path = Path(path)
        self.max_items = max_items
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._depth = self._db.execute("SELECT COUNT(*) FROM items").fetchone()[0]

    def append(self, body: bytes) -> None:
        """Store one item durably; drop the oldest first if the spool is full."""
        self.extend([body])

    def extend(self, bodies: list[bytes]) -> None:
        """Store several items in one transaction, in order."""
        with self._lock, self._transaction():
            self._db.executemany("INSERT INTO items (body) VALUES (?)", ((b,) for b in bodies))
            self._depth += len(bodies)
            excess = self._depth - self.max_items
            if excess > 0:
                self._db.execute("DELETE FROM items WHERE id IN (SELECT id FROM items ORDER BY id LIMIT ?)", (excess,))
                self._db.execute("UPDATE counters SET value = value + ? WHERE name = 'dropped'", (excess,))
                self._depth = self.max_items

    def peek(self, limit: int, after_id: int = 0) -> list[tuple[int, bytes]]:
        """The oldest items with id > after_id, as (id, body), at most `limit` of them."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, body FROM items WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit)
            ).fetchall()
        return [(row_id, bytes(body)) for row_id, body in rows]

    def ack(self, ids: list[int]) -> None:
        """Remove acknowledged items. Ids that are already gone are ignored."""
        if not ids:
            return
        with self._lock, self._transaction():
            before = self._db.total_changes
            self._db.executemany("DELETE FROM items WHERE id = ?", ((i,) for i in ids))
            self._depth -= self._db.total_changes - before

    @property
    def depth(self) -> int:
        return self._depth

    @property
    def dropped(self) -> int:
        with self._lock:
            return self._db.execute("SELECT value FROM counters WHERE name = 'dropped'").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
