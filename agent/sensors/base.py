"""The one interface every power source implements.

A sensor is created once, asked for readings once per sample, and closed at shutdown. It keeps its own
cumulative energy counters (joules since the agent's session started) and says how it is doing in `state`,
which goes into the agent's status message ("ok", "absent", "permission-denied", "fallback", ...).
"""

from __future__ import annotations

from typing import Protocol

from common.contract import Reading


class Sensor(Protocol):
    name: str
    state: str

    def read(self, now_s: float) -> list[Reading]:
        """Readings for the interval that ends now. `now_s` is a monotonic clock in seconds."""
        ...

    def close(self) -> None: ...
