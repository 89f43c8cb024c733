"""Polls meters over Modbus TCP and turns their lifetime kWh registers into contract meter samples.

Every meter has its own session: energy_j is the joules counted since that session started, and seq counts
its samples. The register is a lifetime counter, so each read is compared with the previous one:

- higher or equal: the difference is added (the normal case);
- lower by no more than the meter's `reset_tolerance_kwh`: noise; nothing is added and the higher value
  stays the reference, so nothing is counted twice when the register comes back;
- lower, on an unsigned integer register (uint32, uint64) whose previous value was in the top tenth of the
  register's range and whose new value is in the bottom tenth: a ROLLOVER. The register wrapped through
  its maximum to 0; agent.energy.wrap_safe_delta gives the exact increase and the session continues;
- lower in any other way (a float register, a signed one, or a drop from the middle of the range): the
  meter was REPLACED or its counter RESET. Nothing can tell how much energy flowed between the last read
  and the reset, so a new session starts at 0 (new session id, seq 0), as the contract requires.

A meter that times out, refuses the connection or answers with a Modbus exception is marked stale and
retried after 1 s, then 2, 4, ... up to 60 s, while the others keep their beat. Its session continues when
it answers again: the lifetime register still holds every kWh, so no energy is lost to the outage.
"""

from __future__ import annotations

import logging
import math
import uuid
from dataclasses import dataclass
from enum import StrEnum

from pymodbus.client import ModbusTcpClient
from pymodbus.exceptions import ModbusException

from agent.energy import wrap_safe_delta
from agent.gateway.config import MeterConfig
from agent.gateway.registers import RegisterSpec, decode_raw
from common.contract import MAX_INTERVAL_S, Component, Method, Reading, Sample
from common.logs import Once, event

log = logging.getLogger(__name__)

JOULES_PER_KWH = 3_600_000.0
ROLLOVER_ZONE = 0.1  # fraction of the range at the top (before) and bottom (after) that a wrap must span
BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 60.0
READING_ID = "total-active"


class CounterEvent(StrEnum):
    FIRST = "first"  # the first read of a session: the reference point
    ADVANCE = "advance"
    HOLD = "hold"  # a drop within the tolerance
    ROLLOVER = "rollover"
    RESET = "reset"  # meter replaced or counter reset: start a new session


@dataclass(frozen=True)
class CounterStep:
    event: CounterEvent
    energy_j: float  # cumulative since the session start


def is_rollover(previous: int | float, current: int | float, spec: RegisterSpec) -> bool:
    """True when a lower reading of `spec`'s register is a wrap through its maximum (see module docstring)."""
    if not spec.wraps or current >= previous:
        return False
    zone = spec.max_raw * ROLLOVER_ZONE
    return previous >= spec.max_raw - zone and current <= zone


class EnergyCounter:
    """Joules since the session start, from successive raw readings of a lifetime energy register."""

    def __init__(self, spec: RegisterSpec, ratio: float = 1.0, tolerance_kwh: float = 0.01):
        self.spec = spec
        self.kwh_per_unit = spec.scale * ratio
        self.tolerance_units = tolerance_kwh / self.kwh_per_unit
        self._reference: int | float | None = None
        self._units = 0

    def update(self, raw: int | float) -> CounterStep:
        """Account one reading; a RESET step means the caller must start a new session (energy_j is 0)."""
        if self._reference is None:
            return self._restart(raw, CounterEvent.FIRST)
        if raw >= self._reference:
            return self._advance(raw - self._reference, raw, CounterEvent.ADVANCE)
        if is_rollover(self._reference, raw, self.spec):
            return self._advance(wrap_safe_delta(int(self._reference), int(raw), self.spec.max_raw), raw,
                                 CounterEvent.ROLLOVER)
        if self._reference - raw <= self.tolerance_units:
            return CounterStep(CounterEvent.HOLD, self.energy_j)
        return self._restart(raw, CounterEvent.RESET)

    @property
    def energy_j(self) -> float:
        return self._units * self.kwh_per_unit * JOULES_PER_KWH

    def _advance(self, units: int | float, raw: int | float, kind: CounterEvent) -> CounterStep:
        self._units += units
        self._reference = raw
        return CounterStep(kind, self.energy_j)

    def _restart(self, raw: int | float, kind: CounterEvent) -> CounterStep:
        self._reference = raw
        self._units = 0
        return CounterStep(kind, 0.0)


class Backoff:
    """When to try a failing meter again: 1 s after the first failure, doubling up to 60 s."""

    def __init__(self, first_s: float = BACKOFF_FIRST_S, max_s: float = BACKOFF_MAX_S):
        self.first_s = first_s
        self.max_s = max_s
        self.failures = 0
        self.next_try_s = float("-inf")

    @property
    def stale(self) -> bool:
        return self.failures > 0

    def due(self, now_s: float) -> bool:
        """True when the meter may be polled at monotonic time now_s."""
        return now_s >= self.next_try_s

    def failed(self, now_s: float) -> float:
        """Record a failure at now_s; returns the delay before the next try."""
        delay = min(self.first_s * 2 ** self.failures, self.max_s)
        self.failures += 1
        self.next_try_s = now_s + delay
        return delay

    def succeeded(self) -> None:
        self.failures = 0
        self.next_try_s = float("-inf")


class MeterReadError(Exception):
    """A meter did not answer, or answered with a Modbus exception or an unusable value."""


@dataclass(frozen=True)
class MeterSample:
    meter_id: str
    session: str
    sample: Sample


def new_session_id(meter_id: str) -> str:
    """A fresh session id for a meter: its id (made contract-safe) and a random suffix."""
    safe = "".join(c if c.isalnum() or c in "_-" else "-" for c in meter_id)[:40]
    return f"{safe}-{uuid.uuid4().hex[:16]}"


class MeterPoller:
    """One meter: reads its registers, keeps its session, counter, seq and backoff."""

    def __init__(self, meter: MeterConfig, nominal_interval_s: float):
        self.meter = meter
        self.register_map = meter.register_map()
        self.nominal_interval_s = nominal_interval_s
        self.client = ModbusTcpClient(meter.host, port=meter.port, timeout=meter.timeout_s, retries=0)
        self.counter = EnergyCounter(self.register_map.energy, meter.ratio, meter.reset_tolerance_kwh)
        self.backoff = Backoff()
        self.session = new_session_id(meter.id)
        self.seq = 0
        self.last_error = ""
        self._last_sample_s: float | None = None
        self._once = Once()

    @property
    def state(self) -> str:
        return f"stale: {self.last_error}" if self.backoff.stale else "ok"

    def poll(self, now_s: float, now_ms: int) -> MeterSample | None:
        """Read the meter if it is due; a sample on success, None when skipped or failed."""
        if not self.backoff.due(now_s):
            return None
        try:
            energy_raw = self._read_energy()
            power_kw = self._read_power()
        except MeterReadError as exc:
            self._mark_stale(now_s, str(exc))
            return None
        self._mark_fresh()
        return self._sample(energy_raw, power_kw, now_s, now_ms)

    def close(self) -> None:
        self.client.close()

    def _read_energy(self) -> int | float:
        raw = self._read(self.register_map.energy)
        if not math.isfinite(raw) or raw < 0:
            raise MeterReadError(f"energy register holds {raw}, not a lifetime counter")
        return raw

    def _read_power(self) -> float | None:
        if self.register_map.power is None:
            return None
        raw = self._read(self.register_map.power)
        if not math.isfinite(raw):
            raise MeterReadError(f"power register holds {raw}")
        return raw * self.register_map.power.scale * self.meter.ratio

    def _read(self, spec: RegisterSpec) -> int | float:
        read = self.client.read_holding_registers if spec.function == 3 else self.client.read_input_registers
        try:
            response = read(spec.address, count=spec.count, device_id=self.meter.unit_id)
        except ModbusException as exc:
            self.client.close()
            raise MeterReadError(f"no answer ({type(exc).__name__})") from None
        if response.isError():
            raise MeterReadError(f"Modbus exception code {response.exception_code} at address {spec.address}")
        try:
            return decode_raw(list(response.registers), spec)
        except ValueError as exc:
            raise MeterReadError(f"unusable answer at address {spec.address}: {exc}") from None

    def _sample(self, energy_raw: int | float, power_kw: float | None, now_s: float, now_ms: int) -> MeterSample:
        step = self.counter.update(energy_raw)
        if step.event is CounterEvent.RESET:
            self._start_new_session(energy_raw)
        elif step.event is CounterEvent.ROLLOVER:
            event(log, logging.INFO, "meter-register-rollover", meter=self.meter.id, raw=energy_raw,
                  action="none: the register wrapped through its maximum; energy continues in the same session")
        interval_s = self.nominal_interval_s if self._last_sample_s is None else now_s - self._last_sample_s
        sample = Sample(seq=self.seq, ts_ms=now_ms, interval_s=min(max(interval_s, 0.001), MAX_INTERVAL_S),
                        readings=[self._reading(step.energy_j, power_kw)])
        self.seq += 1
        self._last_sample_s = now_s
        return MeterSample(self.meter.id, self.session, sample)

    def _reading(self, energy_j: float, power_kw: float | None) -> Reading:
        power_w = None if power_kw is None else power_kw * 1000.0
        if power_w is not None and power_w < 0:
            if self._once.first("negative-power"):
                event(log, logging.WARNING, "meter-negative-power", meter=self.meter.id, power_w=power_w,
                      action="power is left out while negative (export, or CTs mounted backwards); "
                             "energy is unaffected")
            power_w = None
        return Reading(component=Component.METER, id=READING_ID, method=Method.METER, power_w=power_w,
                       energy_j=energy_j, role=self.meter.role, source=self.meter.source)

    def _start_new_session(self, energy_raw: int | float) -> None:
        previous = self.session
        self.session = new_session_id(self.meter.id)
        self.seq = 0
        self._last_sample_s = None
        event(log, logging.WARNING, "meter-counter-reset", meter=self.meter.id, raw=energy_raw,
              old_session=previous, new_session=self.session,
              action="the energy register went down: meter replaced or reset; a new session starts at 0. "
                     "Energy between the last read and the reset is not known")

    def _mark_stale(self, now_s: float, reason: str) -> None:
        delay = self.backoff.failed(now_s)
        self.last_error = reason
        if self._once.first("stale"):
            event(log, logging.WARNING, "meter-stale", meter=self.meter.id, host=f"{self.meter.host}:{self.meter.port}",
                  unit_id=self.meter.unit_id, reason=reason, retry_in_s=delay,
                  action="check the meter's address, unit id and network; retrying with backoff up to 60 s")

    def _mark_fresh(self) -> None:
        if self._once.clear("stale"):
            event(log, logging.INFO, "meter-recovered", meter=self.meter.id, failures=self.backoff.failures)
        self.backoff.succeeded()
        self.last_error = ""
