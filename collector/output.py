"""The collector's InfluxDB output: batches go straight to a Writer, or into a durable spool while InfluxDB is away.

`submit(lines)` returns True once a batch is durably handled: written, spooled (one SQLite item per batch,
lines joined by newlines) or set aside as bad data; the collector acknowledges its MQTT messages only then.
Call `drain()` regularly: it replays the spool oldest first. After a failed write, no write is tried for
1 s, doubling up to 30 s, and batches submitted meanwhile go to the spool, so a dead InfluxDB costs one
timeout per back-off period, not one per batch. Writes are idempotent (deterministic timestamps), so a batch
written twice, e.g. after a crash between the write and the spool acknowledgement, is stored once.

A batch InfluxDB refuses as bad data would block the spool forever; it is moved to the `rejected` spool
(if given) and counted instead. Authentication failures and a missing database stay in the spool and are
retried: the data is fine, the configuration is not.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from collector.writers import WriteError, Writer
from common.logs import Once, event
from common.spool import Spool

log = logging.getLogger(__name__)

FIRST_RETRY_DELAY_S = 1.0
MAX_RETRY_DELAY_S = 30.0
REJECTION_LOG_INTERVAL_S = 60.0
BACKLOG_LOG_INTERVAL_S = 60.0  # while InfluxDB stays unreachable, the backlog is logged this often
_LINE_SHOWN = 200
_BACKLOG_SAMPLE = 100


@dataclass(frozen=True)
class OutputStats:
    """A snapshot of the output's counters.

    `backlog_lines` is approximate: the spooled batches times the mean size of the batches spooled so far
    (estimated from the oldest batches for a spool left by an earlier run).
    """

    backlog_batches: int
    backlog_lines: int
    written_lines: int
    failed_writes: int
    rejected_batches: int
    dropped_batches: int
    last_write_latency_s: float | None


class SpooledOutput:
    """A Writer behind a durable spool; thread-safe (one write at a time)."""

    def __init__(self, writer: Writer, spool: Spool, rejected: Spool | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self._writer = writer
        self._spool = spool
        self._rejected = rejected
        self._clock = clock
        self._lock = threading.Lock()
        self._counters_lock = threading.Lock()  # enqueue updates counters outside _lock (held across writes)
        self._wake = threading.Event()
        self._once = Once()
        self._delay_s = 0.0
        self._retry_at = float("-inf")
        self._next_rejection_log = self._next_backlog_log = float("-inf")
        self._written_lines = self._failed_writes = self._rejected_batches = 0
        self._last_latency_s: float | None = None
        self._dropped_seen = spool.dropped
        sample = [body.count(b"\n") + 1 for _, body in spool.peek(_BACKLOG_SAMPLE)]
        self._spooled_batches, self._spooled_lines = len(sample), sum(sample)

    @property
    def backlog_batches(self) -> int:
        """Batches waiting in the spool (cheap: no disk access)."""
        return self._spool.depth

    @property
    def target(self) -> str:
        """Where the lines go, without credentials (for logs)."""
        return self._writer.target

    def submit(self, lines: list[str]) -> bool:
        """Write or spool one batch; True when it is durably handled, False if even the spool failed."""
        if not lines:
            return True
        with self._lock:
            if self._spool.depth == 0 and self._clock() >= self._retry_at and self._attempt(lines):
                return True
            return self._to_spool(lines)

    @property
    def free_batches(self) -> int:
        """Batches the spool takes before it is full (cheap: no disk access)."""
        return self._spool.max_items - self._spool.depth

    @property
    def full(self) -> bool:
        """The spool holds as many batches as it may: enqueue refuses more rather than drop the oldest."""
        return self._spool.depth >= self._spool.max_items

    def enqueue(self, lines: list[str]) -> bool:
        """Spool one batch for the drainer thread (`run_drainer`) to write; True once it is on disk, False
        when the spool is full (nothing is dropped: the caller keeps the batch and tries again later).

        Unlike submit, this never waits for InfluxDB, so the caller goes on while the database writes.
        """
        if not lines:
            return True
        if self.full:
            return False
        stored = self._to_spool(lines)
        self._wake.set()
        return stored

    def run_drainer(self, stop: threading.Event) -> None:
        """Write spooled batches as they come, until `stop` is set (run it in a thread of its own)."""
        while not stop.is_set():
            if self.drain(max_batches=50) == 0:
                self._wake.wait(0.2)
                self._wake.clear()

    def drain(self, max_batches: int = 100) -> int:
        """Write up to `max_batches` spooled batches, oldest first; the number written or set aside."""
        done = 0
        while done < max_batches:
            with self._lock:
                items = self._spool.peek(1) if self._clock() >= self._retry_at else []
                if not items or not self._attempt(items[0][1].decode().split("\n")):
                    return done
                self._spool.ack([items[0][0]])
            done += 1
        return done

    def stats(self) -> OutputStats:
        """The current counters."""
        depth = self._spool.depth
        mean = self._spooled_lines / self._spooled_batches if self._spooled_batches else 0.0
        return OutputStats(
            backlog_batches=depth,
            backlog_lines=round(depth * mean),
            written_lines=self._written_lines,
            failed_writes=self._failed_writes,
            rejected_batches=self._rejected_batches,
            dropped_batches=self._spool.dropped + (self._rejected.dropped if self._rejected is not None else 0),
            last_write_latency_s=self._last_latency_s,
        )

    def close(self) -> None:
        """Close the writer and the spools."""
        with self._lock:
            self._writer.close()
            self._spool.close()
            if self._rejected is not None:
                self._rejected.close()

    def _attempt(self, lines: list[str]) -> bool:
        """Write one batch; True if written or set aside, False if it must stay in (or go to) the spool."""
        start = time.perf_counter()
        try:
            self._writer.write(lines)
        except WriteError as exc:
            self._failed_writes += 1
            if exc.bad_data:
                self._set_aside(lines, exc)
                return True
            self._back_off(exc)
            return False
        self._last_latency_s = time.perf_counter() - start
        self._written_lines += len(lines)
        if self._delay_s:
            self._recovered()
        return True

    def _to_spool(self, lines: list[str]) -> bool:
        try:
            self._spool.append("\n".join(lines).encode())
        except sqlite3.Error as exc:
            if self._once.first("spool-failed"):
                event(log, logging.ERROR, "output-spool-failed", spool=self._spool.path, reason=str(exc),
                      action="check free disk space and permissions of the spool; MQTT messages stay unacknowledged")
            return False
        if self._once.clear("spool-failed"):
            event(log, logging.INFO, "output-spool-recovered", spool=self._spool.path)
        with self._counters_lock:
            self._spooled_batches += 1
            self._spooled_lines += len(lines)
        self._check_dropped()
        return True

    def _check_dropped(self) -> None:
        if self._spool.depth < self._spool.max_items:
            return
        dropped = self._spool.dropped
        if dropped > self._dropped_seen and self._once.first("spool-dropped"):
            event(log, logging.ERROR, "output-spool-dropped", spool=self._spool.path, max_batches=self._spool.max_items,
                  dropped_batches=dropped, target=self._writer.target,
                  action="submit() spooled past the bound and the oldest batches were dropped: bring InfluxDB back "
                         "or enlarge the spool (enqueue refuses instead)")
        self._dropped_seen = dropped

    def _set_aside(self, lines: list[str], exc: WriteError) -> None:
        if self._rejected is not None:
            self._rejected.append("\n".join(lines).encode())
        self._rejected_batches += 1
        now = self._clock()
        if now >= self._next_rejection_log:
            self._next_rejection_log = now + REJECTION_LOG_INTERVAL_S
            event(log, logging.WARNING, "influxdb-batch-rejected", reason=str(exc),
                  line=(exc.line or lines[0])[:_LINE_SHOWN], lines=len(lines), rejected_batches=self._rejected_batches,
                  kept_in=self._rejected.path if self._rejected is not None else "nowhere (no rejected spool)",
                  action="fix what produces this data; the batch was moved aside so the backlog can go on")

    def _back_off(self, exc: WriteError) -> None:
        self._delay_s = min(self._delay_s * 2, MAX_RETRY_DELAY_S) if self._delay_s else FIRST_RETRY_DELAY_S
        self._retry_at = self._clock() + self._delay_s
        if exc.retryable and self._once.first("unavailable"):
            self._next_backlog_log = self._clock() + BACKLOG_LOG_INTERVAL_S
            event(log, logging.WARNING, "influxdb-unavailable", reason=str(exc), spool=self._spool.path,
                  backlog_batches=self._spool.depth,
                  action="check that InfluxDB is running and reachable; data is spooled and written when it is back")
        elif exc.retryable and self._clock() >= self._next_backlog_log:
            self._next_backlog_log = self._clock() + BACKLOG_LOG_INTERVAL_S
            event(log, logging.WARNING, "influxdb-still-unavailable", reason=str(exc), target=self._writer.target,
                  backlog_batches=self._spool.depth, free_batches=self.free_batches,
                  action="bring InfluxDB back; the collector stops taking messages when the spool has no room left")
        elif not exc.retryable and self._once.first("refused"):
            event(log, logging.ERROR, "influxdb-refuses-writes", reason=str(exc), spool=self._spool.path,
                  backlog_batches=self._spool.depth,
                  action="fix the InfluxDB credentials, permissions or database/bucket; data is spooled meanwhile")

    def _recovered(self) -> None:
        self._delay_s = 0.0
        self._retry_at = float("-inf")
        was_down = self._once.clear("unavailable")
        was_refused = self._once.clear("refused")
        if was_down or was_refused:
            event(log, logging.INFO, "influxdb-available", target=self._writer.target,
                  backlog_batches=self._spool.depth, action="none: the spooled backlog is being written")
