"""Contract messages for every simulated device and step, in time order.

Each device has one session per run (sim-{start_ms}-{device}). Sample seq 0 opens the session at the run's
start with energy 0 (the collector counts energy between consecutive samples, so the first step needs a
point at its start); sample k >= 1 ends step k - 1 (ts_ms = step end) and carries that step's power and the
energy accumulated since the start (J).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass

from collector.site import FACILITY_RACK, FACILITY_ROOM
from common.contract import (
    DEFAULT_TOPIC_ROOT,
    Component,
    HostStats,
    Identity,
    Method,
    Reading,
    Sample,
    SampleBatch,
    encode,
    topic_for,
)
from simulator.model import Host, HostPower, Meter, SitePower, hosts, meters, site_power, step_energy_j
from simulator.scenario import Scenario

GIB = 1024**3
MEM_USED_FRACTION = 0.4


@dataclass(frozen=True)
class Message:
    """One MQTT message: the simulated instant it describes, its topic and its payload."""

    ts_ms: int
    topic: str
    payload: bytes


def session_id(start_ms: int, device: str) -> str:
    """The device's session for a run starting at start_ms (a new run is a new session)."""
    return re.sub(r"[^A-Za-z0-9_\-]", "_", f"sim-{start_ms}-{device}")[:64]


def host_topic(scenario: Scenario, host: Host, root: str = DEFAULT_TOPIC_ROOT) -> str:
    return topic_for(Identity(site=scenario.site, room=host.room, rack=host.rack, device=host.id), "samples", root)


def meter_topic(scenario: Scenario, meter: Meter, root: str = DEFAULT_TOPIC_ROOT) -> str:
    identity = Identity(site=scenario.site, room=FACILITY_ROOM, rack=FACILITY_RACK, device=meter.id)
    return topic_for(identity, "samples", root)


def host_sample(host: Host, power: HostPower, seq: int, ts_ms: int, interval_s: float, energy_j: float,
                gpu_energy_j: float, opening: bool) -> Sample:
    """A host's sample: server-input (method model), one reading per GPU, CPU utilisation."""
    watts = None if opening else power.server_w
    gpu_watts = None if opening else power.gpu_w
    readings = [Reading(component=Component.SERVER_INPUT, id="input", method=Method.MODEL, power_w=watts,
                        energy_j=energy_j)]
    readings += [Reading(component=Component.GPU, id=f"gpu{i}", method=Method.MODEL, power_w=gpu_watts,
                         energy_j=gpu_energy_j, util=power.gpu_util) for i in range(host.profile.gpus)]
    mem_total = round(host.profile.mem_total_gb * GIB)
    stats = HostStats(cpu_util=power.cpu_util, logical_cpus=host.profile.logical_cpus,
                      mem_used_bytes=round(mem_total * MEM_USED_FRACTION), mem_total_bytes=mem_total)
    return Sample(seq=seq, ts_ms=ts_ms, interval_s=interval_s, readings=readings, host=stats)


def host_payload(host: Host, power: HostPower, seq: int, ts_ms: int, interval_s: float, energy_j: float,
                 gpu_energy_j: float, opening: bool, session: str) -> bytes:
    """A host's message built through the contract models (the reference the fast encoder must match)."""
    sample = host_sample(host, power, seq, ts_ms, interval_s, energy_j, gpu_energy_j, opening)
    return encode(SampleBatch(kind="host", session=session, samples=[sample]))


class HostEncoder:
    """The same bytes as `host_payload` for one host and session, without building pydantic models: a few
    microseconds per message instead of ~40, for load generators (bench/stream_publisher.py). The session must
    be a contract session id (letters, digits, _ and -), as `session_id` makes. tests/test_simulator.py checks
    the equality against the model path."""

    def __init__(self, host: Host, session: str):
        mem_total = round(host.profile.mem_total_gb * GIB)
        self.gpu_ids = [f"gpu{i}" for i in range(host.profile.gpus)]
        self._head = f'{{"v":1,"kind":"host","session":{json.dumps(session)},"samples":[{{"seq":'
        self._tail = (f',"logical_cpus":{host.profile.logical_cpus},"mem_used_bytes":'
                      f'{round(mem_total * MEM_USED_FRACTION)},"mem_total_bytes":{mem_total}}}}}]}}')

    def payload(self, power: HostPower, seq: int, ts_ms: int, interval_s: float, energy_j: float,
                gpu_energy_j: float, opening: bool) -> bytes:
        server = "" if opening else f'"power_w":{json_float(power.server_w)},'
        text = (f'{self._head}{seq},"ts_ms":{ts_ms},"interval_s":{json_float(interval_s)},"readings":['
                f'{{"component":"server-input","id":"input","method":"model",{server}'
                f'"energy_j":{json_float(energy_j)},"state":"ok"}}')
        if self.gpu_ids:
            gpu = ("" if opening else f'"power_w":{json_float(power.gpu_w)},') + \
                f'"energy_j":{json_float(gpu_energy_j)},"util":{json_float(power.gpu_util)},"state":"ok"}}'
            text += "".join(f',{{"component":"gpu","id":"{i}","method":"model",{gpu}' for i in self.gpu_ids)
        return f'{text}],"host":{{"cpu_util":{json_float(power.cpu_util)}{self._tail}'.encode()


def json_float(value: float) -> str:
    """A float as the contract's JSON encoder (pydantic) writes it: Python's repr, except that it writes numbers
    from 1e-5 up to 1e-4 in full (0.000015, not 1.5e-05) and smaller exponents without a leading zero (2.5e-7)."""
    text = repr(float(value))
    if "e-" not in text:
        return text
    mantissa, exponent = text.split("e-")
    if exponent != "05":
        return f"{mantissa}e-{int(exponent)}"
    sign, digits = ("-", mantissa[1:]) if mantissa.startswith("-") else ("", mantissa)
    return f"{sign}0.0000{digits.replace('.', '')}"


def meter_sample(meter: Meter, power_w: float, seq: int, ts_ms: int, interval_s: float, energy_j: float,
                 opening: bool) -> Sample:
    """A meter's sample: one reading with role, source and the cumulative register (J)."""
    reading = Reading(component=Component.METER, id="main", method=Method.METER,
                      power_w=None if opening else power_w, energy_j=energy_j, role=meter.role, source=meter.source)
    return Sample(seq=seq, ts_ms=ts_ms, interval_s=interval_s, readings=[reading])


def messages(scenario: Scenario, start_ms: int, root: str = DEFAULT_TOPIC_ROOT) -> Iterator[Message]:
    """Every device's samples, one per message, ordered by ts_ms (seq 0 at start_ms, then one per step end)."""
    host_list, meter_list = hosts(scenario), meters(scenario)
    energy = {device: 0.0 for device in [h.id for h in host_list] + [m.id for m in meter_list]}
    gpu_energy = {h.id: 0.0 for h in host_list}
    for seq in range(scenario.duration_ms // scenario.step_ms + 1):
        ts = start_ms + seq * scenario.step_ms
        power = site_power(scenario, host_list, start_ms, ts - scenario.step_ms if seq else ts)
        if seq:
            _accumulate(scenario, power, host_list, meter_list, energy, gpu_energy)
        yield from _step_messages(scenario, power, start_ms, seq, host_list, meter_list, energy, gpu_energy, root)


def _accumulate(scenario: Scenario, power: SitePower, host_list: list[Host], meter_list: list[Meter],
                energy: dict[str, float], gpu_energy: dict[str, float]) -> None:
    for h in host_list:
        energy[h.id] += step_energy_j(power.hosts[h.id].server_w, scenario)
        gpu_energy[h.id] += step_energy_j(power.hosts[h.id].gpu_w, scenario)
    for m in meter_list:
        energy[m.id] += step_energy_j(power.meter_w(m), scenario)


def _step_messages(scenario: Scenario, power: SitePower, start_ms: int, seq: int, host_list: list[Host],
                   meter_list: list[Meter], energy: dict[str, float], gpu_energy: dict[str, float],
                   root: str) -> Iterator[Message]:
    ts = start_ms + seq * scenario.step_ms
    interval = float(scenario.step_s)
    opening = seq == 0
    for h in host_list:
        payload = host_payload(h, power.hosts[h.id], seq, ts, interval, energy[h.id], gpu_energy[h.id], opening,
                               session_id(start_ms, h.id))
        yield Message(ts, host_topic(scenario, h, root), payload)
    for m in meter_list:
        sample = meter_sample(m, power.meter_w(m), seq, ts, interval, energy[m.id], opening)
        batch = SampleBatch(kind="meter", session=session_id(start_ms, m.id), samples=[sample])
        yield Message(ts, meter_topic(scenario, m, root), encode(batch))

