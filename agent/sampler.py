"""Turns sensor readings into contract Samples: session id, sequence number, server input estimate.

The sampler owns the session. Within one session every energy counter it reports starts at 0 and only
grows, and seq grows by one per sample. When a sensor cannot vouch for its counter (the agent stalled
longer than a RAPL counter's wrap period) the sampler starts a new session, so the collector sees a
counter reset instead of a wrong delta.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Sequence

from agent.energy import AmbiguousInterval, integrate_power_j
from agent.power_model import components_for_server, server_input_w
from agent.sensors.base import Sensor
from agent.sensors.host import HostStatsReader
from common.contract import MAX_INTERVAL_S, Component, Method, Reading, Sample
from common.logs import event

log = logging.getLogger(__name__)

SERVER_READING_ID = "input"


def new_session_id() -> str:
    return secrets.token_hex(8)


class Sampler:
    def __init__(
        self,
        sensors: Sequence[Sensor],
        host: HostStatsReader | None,
        overhead_w: float,
        psu_efficiency: float,
        wall_ms: Callable[[], int],
        monotonic_s: Callable[[], float],
    ):
        self.sensors = list(sensors)
        self._host = host
        self._overhead_w = overhead_w
        self._psu_efficiency = psu_efficiency
        self._wall_ms = wall_ms
        self._monotonic_s = monotonic_s
        self.session = ""
        self._seq = 0
        self._baselines: dict[tuple[str, str], float] = {}
        self._server_energy_j = 0.0
        self._last_s: float | None = None
        self.start_session()

    def start_session(self) -> None:
        """Begin a new session: new id, seq from 0, every energy counter from 0 at its next reading."""
        self.session = new_session_id()
        self._seq = 0
        self._baselines.clear()
        self._server_energy_j = 0.0
        self._last_s = None

    def sample(self) -> Sample | None:
        """One sample for the interval that ends now; None when the session had to restart instead."""
        now_s = self._monotonic_s()
        host_stats = self._host.read() if self._host else None
        readings: list[Reading] = []
        for sensor in self.sensors:
            try:
                readings += sensor.read(now_s)
            except AmbiguousInterval as exc:
                event(log, logging.WARNING, "session-restarted", sensor=sensor.name, reason=str(exc),
                      action="none needed; the energy of the stalled interval is unknown and not reported")
                self.start_session()
                return None
        elapsed_s = None if self._last_s is None else now_s - self._last_s
        if elapsed_s is not None and elapsed_s > MAX_INTERVAL_S:
            event(log, logging.WARNING, "session-restarted", reason=f"{elapsed_s:.0f} s since the last sample",
                  action="none needed; the agent was stopped or suspended, its energy then is not reported")
            self.start_session()
            return None
        self._last_s = now_s
        readings.append(self._server_reading(readings, elapsed_s))
        sample = Sample(
            seq=self._seq,
            ts_ms=self._wall_ms(),
            interval_s=elapsed_s or 1.0,
            readings=[self._rebased(r) for r in readings],
            host=host_stats,
        )
        self._seq += 1
        return sample

    def _server_reading(self, readings: list[Reading], elapsed_s: float | None) -> Reading:
        """The server input estimate over the interval, from the components that report power in it (a
        component with none, such as a lost GPU or one whose counter just started, adds nothing)."""
        if elapsed_s is None:
            return Reading(component=Component.SERVER_INPUT, id=SERVER_READING_ID, method=Method.MODEL,
                           energy_j=self._server_energy_j)
        parts = components_for_server(readings)
        power_w = server_input_w(sum(r.power_w for r in parts if r.power_w is not None), self._overhead_w,
                                 self._psu_efficiency)
        self._server_energy_j += integrate_power_j(power_w, elapsed_s)
        return Reading(component=Component.SERVER_INPUT, id=SERVER_READING_ID, method=Method.MODEL,
                       power_w=power_w, energy_j=self._server_energy_j)

    def _rebased(self, reading: Reading) -> Reading:
        """The reading with its energy counted from this session's first sight of it."""
        if reading.energy_j is None:
            return reading
        key = (reading.component, reading.id)
        baseline = self._baselines.setdefault(key, reading.energy_j)
        if baseline == 0.0:
            return reading
        return reading.model_copy(update={"energy_j": reading.energy_j - baseline})
