"""Validates each incoming message and turns it into accounting points and raw InfluxDB lines. No I/O.

Every message is either accepted whole or rejected whole with a short stable reason (counted, and sent to
the dead-letter topic by the service). Reasons: bad-topic, malformed-json, schema, not-finite,
out-of-range, unsupported-version, oversized (from the contract); unknown-site, unknown-device,
kind-mismatch, future-timestamp, too-old, absurd-power (reported, or implied by the counters),
counter-backwards, session-overlap (two senders claiming one device), no-energy-reading (here);
internal-error (the service, should handling a message fail unexpectedly).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, cast

from collector.accounting import Point
from collector.book import EnergyBook, Utilisation
from collector import lineproto
from collector.lineproto import line
from collector.site import HostInfo, MeterInfo, SiteIndex
from common.contract import (
    SAMPLES_CHANNEL,
    STATUS_CHANNEL,
    Component,
    ContractError,
    Identity,
    Reading,
    Sample,
    SampleBatch,
    Status,
    decode_batch,
    decode_status,
    parse_topic,
    topic_for,
)


@dataclass(frozen=True)
class Limits:
    """Bounds beyond which a value is refused as impossible rather than stored."""

    max_future_s: float = 300.0
    max_age_s: float = 8 * 86400.0
    max_host_reading_w: float = 50_000.0
    max_meter_w: float = 500e6


@dataclass
class DeviceObservations:
    """What the operational rules need from the messages (collector/alerting.py): whether each device's last
    status said online, and each GPU's latest stored power / power limit with its time."""

    online: dict[tuple[str, str, str, str], bool] = field(default_factory=dict)
    gpu_limit_ratio: dict[tuple[str, str, str, str, str], tuple[int, float | None]] = field(default_factory=dict)


@dataclass(slots=True)
class DeviceRoute:
    """What a configured device's samples topic leads to: the device and its kind ('host' or 'meter', as its
    batches must say), the series of its raw readings, and the raw-resolution slot of the last one stored (raw
    readings are stored at most once per slot)."""

    device: HostInfo | MeterInfo
    kind: Literal["host", "meter"]
    series: str
    raw_slot: int = -1


@dataclass(frozen=True)
class Rejection:
    reason: str
    detail: str


class Ingest:
    def __init__(self, index: SiteIndex, book: EnergyBook, topic_root: str, limits: Limits = Limits(),
                 raw_resolution_ms: int = 10_000):
        self.index = index
        self.book = book
        self.topic_root = topic_root
        self.limits = limits
        self.raw_resolution_ms = raw_resolution_ms
        self.rejected: Counter[str] = Counter()
        self.outcomes: Counter[str] = Counter()
        self.lines: list[str] = []
        self.devices = DeviceObservations()
        self._gpu_series: dict[tuple, str] = {}
        # every configured device's route, made at start rather than at the device's first message (a restarted
        # collector meets them all at once, while catching up)
        self._routes: dict[str, DeviceRoute] = {}
        for site in index.sites:
            for host in index.expected_hosts(site.id):
                self._routes[_samples_topic(host, topic_root)] = DeviceRoute(
                    host, "host", lineproto.series("host", _host_tags(host)))
            for meter in index.expected_meters(site.id):
                self._routes[_samples_topic(meter, topic_root)] = DeviceRoute(meter, "meter", lineproto.series(
                    "meter", {"site": meter.site, "meter": meter.device, "role": meter.role,
                              "source": meter.source or ""}))

    def handle(self, topic: str, payload: bytes, now_ms: int, retained: bool = False) -> Rejection | None:
        """Account one message; None when accepted, else why not.

        A retained status only updates whether its device is online (see _status).
        """
        try:
            route = self._routes.get(topic)
            if route is None:
                identity, channel = parse_topic(topic, self.topic_root)
                if channel == STATUS_CHANNEL:
                    self._status(identity, payload, now_ms, retained)
                    return None
                if channel != SAMPLES_CHANNEL:
                    raise ContractError("bad-topic", f"unknown channel {channel!r}")
            batch = decode_batch(payload)
            if route is None:
                raise self._unknown(identity)
            if batch.kind != route.kind:
                raise _kind_mismatch(batch.kind, route)
            checked = self._check(batch, route, now_ms)
        except ContractError as exc:
            self.rejected[exc.reason] += 1
            return Rejection(exc.reason, exc.detail)
        if route.kind == "host":
            self._accept_host(batch, cast(HostInfo, route.device), route, checked)
        else:
            self._accept_meter(batch, cast(MeterInfo, route.device), route, checked)
        self.outcomes["messages"] += 1
        return None

    def _status(self, identity: Identity, payload: bytes, now_ms: int, retained: bool) -> None:
        """Store a status and note whether its device is online. A retained one is the broker replaying the
        last known state at subscribe: it was checked, counted and stored when first published, so it only
        updates the online state, and a bad one is ignored."""
        try:
            self._known_site(identity)
            status = decode_status(payload)
            if status.ts_ms is not None and not retained:
                self._check_time(status.ts_ms, now_ms, "status")
        except ContractError:
            if retained:
                return
            raise
        self.devices.online[_key_of(identity)] = status.state == "online"
        if not retained:
            self.lines.append(_status_line(identity, status, now_ms))

    def take_lines(self) -> list[str]:
        lines, self.lines = self.lines, []
        return lines

    def _unknown(self, identity: Identity) -> ContractError:
        """Why a samples topic that is not a configured device's is refused."""
        if self.index.site(identity.site) is None:
            return ContractError("unknown-site", f"site {identity.site!r} is not in the site configuration")
        levels = (identity.room, identity.rack, identity.device)
        return ContractError("unknown-device", f"{'/'.join(levels)} is not configured for site {identity.site!r}")

    def _known_site(self, identity: Identity) -> None:
        """Statuses come from agents and also from meter gateways, which the site configuration does not list:
        any device of a configured site may send one (the broker's ACL decides who publishes where)."""
        if self.index.site(identity.site) is None:
            raise ContractError("unknown-site", f"site {identity.site!r} is not in the site configuration")

    def _check(self, batch: SampleBatch, route: DeviceRoute, now_ms: int) -> list[tuple[Reading, Point]]:
        """Refuse the batch if any sample is impossible on its own or against the session's known points.
        Returns each sample's energy reading and point, in the batch's order. Samples are checked in seq order."""
        stream = route.device.stream
        if route.kind == "host":
            limit, energy_component = self.limits.max_host_reading_w, Component.SERVER_INPUT
        else:
            limit, energy_component = self.limits.max_meter_w, Component.METER
        latest, oldest = now_ms + self.limits.max_future_s * 1000, now_ms - self.limits.max_age_s * 1000
        session, samples, book = batch.session, batch.samples, self.book
        checked: list = [None] * len(samples)
        previous: Point | None = None
        for i in (0,) if len(samples) == 1 else sorted(range(len(samples)), key=lambda i: samples[i].seq):
            sample = samples[i]
            if not oldest <= sample.ts_ms <= latest:
                self._check_time(sample.ts_ms, now_ms, f"seq {sample.seq}")
            for reading in sample.readings:
                if reading.power_w is not None and reading.power_w > limit:
                    raise ContractError("absurd-power", f"seq {sample.seq} {reading.component} {reading.id}: "
                                                        f"{reading.power_w:g} W > {limit:g} W")
            _reading, point = checked[i] = _energy_point(sample, energy_component, session)
            earlier, later, other = book.placement(stream, session, point.seq, point.ts_ms)
            if other is not None:
                raise ContractError("session-overlap", f"seq {sample.seq} falls inside session {other} of the same "
                                                       "device: two senders claim it")
            if previous is not None and (earlier is None or previous.seq > earlier.seq):
                earlier = previous
            if earlier is not None:
                _check_counter(earlier, point, limit)
            if later is not None:
                _check_counter(point, later, limit)
            previous = point
        return checked

    def _check_time(self, ts_ms: int, now_ms: int, what: str) -> None:
        if ts_ms > now_ms + self.limits.max_future_s * 1000:
            raise ContractError("future-timestamp", f"{what} at {ts_ms} is {(ts_ms - now_ms) / 1000:.0f} s ahead "
                                                    "of the collector's clock")
        if ts_ms < now_ms - self.limits.max_age_s * 1000:
            raise ContractError("too-old", f"{what} is {(now_ms - ts_ms) / 86_400_000:.1f} days old")

    def _accept_host(self, batch: SampleBatch, host: HostInfo, route: DeviceRoute,
                     checked: list[tuple[Reading, Point]]) -> None:
        for sample, (server, point) in zip(batch.samples, checked):
            gpus = [r for r in sample.readings if r.component is Component.GPU] if len(sample.readings) > 1 else []
            outcome = self.book.add_host_point(host, point, _utilisation(sample, gpus))
            self.outcomes[outcome] += 1
            if outcome != "duplicate" and _raw_due(route, sample.ts_ms // self.raw_resolution_ms):
                self.lines += self._host_lines(host, route.series, sample, server, gpus)

    def _accept_meter(self, batch: SampleBatch, meter: MeterInfo, route: DeviceRoute,
                      checked: list[tuple[Reading, Point]]) -> None:
        for sample, (reading, point) in zip(batch.samples, checked):
            outcome = self.book.add_meter_point(meter, point)
            self.outcomes[outcome] += 1
            if outcome != "duplicate" and _raw_due(route, sample.ts_ms // self.raw_resolution_ms):
                self.lines.append(lineproto.point(route.series, {"power_w": reading.power_w,
                                                                 "energy_kwh": point.energy_j / 3.6e6}, sample.ts_ms))

    def _gpu_series_of(self, host: HostInfo, gpu: str) -> str:
        """A GPU's escaped series, made once (the same devices send again and again)."""
        key = (host.stream, gpu)
        found = self._gpu_series.get(key)
        if found is None:
            found = self._gpu_series[key] = lineproto.series("gpu", {**_host_tags(host), "gpu": gpu})
        return found

    def _host_lines(self, host: HostInfo, series: str, sample: Sample, server: Reading, gpus: list[Reading]
                    ) -> list[str]:
        packages: Sequence[Reading] = ()  # empty tuples, not new lists: most samples have no CPU or DRAM readings
        psys: Sequence[Reading] = ()
        dram: Sequence[Reading] = ()
        if len(sample.readings) > 1 + len(gpus):  # more than the server input and the GPUs: one pass over them
            by_component: dict[Component, list[Reading]] = {
                Component.CPU_PACKAGE: [], Component.PSYS: [], Component.DRAM: []}
            for reading in sample.readings:
                found = by_component.get(reading.component)
                if found is not None:
                    found.append(reading)
            packages, psys, dram = by_component.values()
        cpu = packages or psys
        fields: dict[str, lineproto.FieldValue] = {"server_input_w": server.power_w}  # a sample's, in a fixed order
        if cpu:
            fields["cpu_w"] = _power_sum(cpu)
        if dram:
            fields["dram_w"] = _power_sum(dram)
        if gpus:
            fields["gpu_w"] = _power_sum(gpus)
        if cpu:
            fields["cpu_method"] = cpu[0].method.value
        if sample.host:
            fields["cpu_util"] = sample.host.cpu_util
        if gpus:
            fields["gpus"] = len(gpus)
            fields["gpus_lost"] = sum(r.state == "lost" for r in gpus) or None
        lines = []
        if server.power_w is not None or any(value is not None for value in fields.values()):
            lines.append(lineproto.point(series, fields, sample.ts_ms))
        for gpu in gpus:
            self.devices.gpu_limit_ratio[(host.site, host.room, host.rack, host.device, gpu.id)] = (
                sample.ts_ms, gpu.power_w / gpu.power_limit_w
                if gpu.power_w is not None and gpu.power_limit_w else None)
            lines.append(lineproto.point(self._gpu_series_of(host, gpu.id), {
                "power_w": gpu.power_w, "power_avg_w": gpu.power_avg_w, "power_instant_w": gpu.power_instant_w,
                "power_limit_w": gpu.power_limit_w, "util": gpu.util, "temp_c": gpu.temp_c,
                "mem_used_bytes": gpu.mem_used_bytes, "method": gpu.method.value, "lost": gpu.state == "lost",
            }, sample.ts_ms))
        return lines

def _check_counter(before: Point, after: Point, limit_w: float) -> None:
    """Counters only grow, and no faster than the power limit allows (so a jump is refused whenever it shows,
    not only when the sender also reports an absurd power)."""
    delta = after.energy_j - before.energy_j
    if delta < 0:
        raise ContractError("counter-backwards", f"seq {after.seq}: {after.energy_j:g} J after seq {before.seq}: "
                                                 f"{before.energy_j:g} J in session {after.session}")
    seconds = max(1.0, (after.ts_ms - before.ts_ms) / 1000)
    if delta / seconds > limit_w:
        raise ContractError("absurd-power", f"seqs {before.seq}-{after.seq}: {delta:g} J in {seconds:g} s is more "
                                            f"than {limit_w:g} W")


def _raw_due(route: DeviceRoute, slot: int) -> bool:
    """Whether a raw reading in this raw-resolution slot is to be stored (the first of its slot is)."""
    if route.raw_slot == slot:
        return False
    route.raw_slot = slot
    return True


def _kind_mismatch(kind: str, route: DeviceRoute) -> ContractError:
    """Why a batch whose kind is not its device's is refused."""
    return ContractError("kind-mismatch", f"{route.device.device!r} is configured as a {route.kind} "
                                          f"but sent kind={kind!r}")


def _samples_topic(device: HostInfo | MeterInfo, root: str) -> str:
    return topic_for(Identity.model_construct(site=device.site, room=device.room, rack=device.rack,
                                              device=device.device), SAMPLES_CHANNEL, root)


def _key_of(identity: Identity) -> tuple[str, str, str, str]:
    return identity.site, identity.room, identity.rack, identity.device


def _energy_point(sample: Sample, wanted: Component, session: str) -> tuple[Reading, Point]:
    """The sample's first reading of the wanted component with an energy counter, and the accounting point it
    gives."""
    for reading in sample.readings:
        energy_j = reading.energy_j
        if reading.component == wanted and energy_j is not None:
            return reading, Point(session, sample.seq, sample.ts_ms, energy_j)
    raise ContractError("no-energy-reading", f"seq {sample.seq} has no {wanted} reading with energy_j")


def _utilisation(sample: Sample, gpus: list[Reading]) -> Utilisation | None:
    gpu_utils = [r.util for r in gpus if r.util is not None] if gpus else None
    cpu = sample.host.cpu_util if sample.host else None
    if cpu is None and not gpu_utils:
        return None
    return Utilisation(cpu, sum(gpu_utils) / len(gpu_utils) if gpu_utils else None, sample.interval_s)  # cpu, gpu, s


def _host_tags(host: HostInfo) -> dict[str, str]:
    return {"site": host.site, "room": host.room, "rack": host.rack, "host": host.device}


def _status_line(identity: Identity, status: Status, now_ms: int) -> str:
    """An agent's or gateway's status; the broker's last will (offline) carries no time, so it gets now."""
    overhead = status.overhead
    fields = {"state": status.state, "online": status.state == "online", "version": status.version,
              "spool_depth": overhead.spool_depth if overhead else None,
              "spool_dropped": overhead.spool_dropped if overhead else None,
              "cpu_seconds": overhead.cpu_seconds if overhead else None,
              "rss_bytes": overhead.rss_bytes if overhead else None}
    tags = {"site": identity.site, "room": identity.room, "rack": identity.rack, "device": identity.device}
    return line("device_status", tags, fields, status.ts_ms or now_ms)


def _power_sum(readings: Sequence[Reading]) -> float | None:
    present = [r.power_w for r in readings if r.power_w is not None]
    return sum(present) if present else None
