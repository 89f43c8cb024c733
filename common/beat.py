"""A fixed sampling rhythm for the agent and the meter gateway: one beat per interval, missed beats skipped."""

from __future__ import annotations

import threading
import time


class Beat:
    """Waits until the next beat. A loop that overran does not burst to catch up: it starts a new rhythm."""

    def __init__(self, interval_s: float):
        self.interval_s = interval_s
        self._next = time.monotonic()

    def wait(self, stop: threading.Event) -> None:
        """Sleep until the next beat, or until stop is set."""
        now = time.monotonic()
        self._next += self.interval_s
        if self._next < now:
            self._next = now + self.interval_s
        stop.wait(self._next - now)


class Every:
    """True once per period, when asked on or after it is due; the first time it is asked, at once."""

    def __init__(self, period_s: float):
        self.period_s = period_s
        self._last = float("-inf")

    def due(self, now: float) -> bool:
        if now - self._last < self.period_s:
            return False
        self._last = now
        return True
