"""Load generator for bench/collector_throughput.py: the site simulator's messages at a fixed rate over MQTT QoS 1.

The engine is the site simulator (simulator/): `bench_scenario` is a simulator Scenario of `--hosts` hosts (racks
of 40, rooms of 100 racks, rooms alternating a training and an office load, seeded per-host jitter) plus its
facility meters; simulator.model gives every device's power per 10 s step (constant within a step), and each
message is exactly what the simulator publishes for that device: host messages through
simulator.messages.HostEncoder (byte-for-byte the contract models' JSON, tested in
tests/test_simulator_encoder.py, ~3 us instead of ~25 us per message), meter messages through the contract
models. Each device's session is the simulator's `sim-{run start}-{device}`; its first message (seq 0) opens the
session with energy 0, every later one carries the energy integrated from the model's step powers since then.
Unlike the simulator's own publisher (all devices at each step end, in simulated time), the devices publish one
at a time, each once per cycle, so the stream is steady: one process publishes `--rate` messages/s for
`--seconds` seconds, cycling over its share of the devices in a fixed order (with rate R and H hosts each device
publishes once every (H + meters)/R s, like a real agent publishing every 10 s when H = 10 R). The order is a
fixed shuffle by default (agents' phases are independent, so consecutive messages come from different racks),
or rack by rack (`--order rack`).

Every message of the run is built before the start (PlannedStream: whole PUBLISH packets, about 450 bytes of
memory each), so that the load generator takes little CPU from the system under test while it publishes. ts_ms
is the message's scheduled publish time, start + n / rate, written into the packet just before it is sent; the
publisher keeps to the schedule and reports how far it fell behind (`behind_max_s`), so a consumer that measures
publish-to-stored latency from ts_ms overstates it by at most that.

QoS 1 publishes in flight (sent, PUBACK not yet received) are bounded by `--max-inflight`: packet ids are 16
bits, so an unbounded publisher (mosquitto_pub -l at QoS 1) silently loses messages beyond ~65,535
outstanding. When the bound is reached the publisher waits for PUBACKs and falls behind its schedule, and says
so. Every publish is checked and every PUBACK counted: the final JSON line on stdout reports sent, acked and
failed counts, the achieved rate (from the wall clock of the first and last send) and the process's own CPU
seconds while publishing, `meter_messages`, and `same_slot`: messages scheduled within the same raw-resolution
slot as their device's previous one, which the collector accounts but by design does not store as raw readings.

Start-up: the process builds the site, the step powers of the run and every message (about 2 s for 200,000
hosts, plus about 15 s per million messages), connects, prints `ready` on stderr and waits for `--start-file`
to hold the wall-clock start time (or starts at `--start-at`). Several processes can share the load (`--procs P
--proc-index p`: process p publishes every P-th device of the publishing order, starting at the p-th, at rate
R/P). `--client raw` sends the built packets on a plain socket (RawTransport), a memory copy per burst;
`--client paho` hands each message to paho-mqtt, as an agent does (~40 us of CPU per message).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import select
import signal
import socket
import struct
import sys
import time
from array import array
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import paho.mqtt.client as paho  # noqa: E402

from common.contract import SampleBatch, decode_batch, encode  # noqa: E402
from simulator.messages import (  # noqa: E402
    HostEncoder,
    host_payload,
    host_topic,
    meter_sample,
    meter_topic,
    session_id,
)
from simulator.model import Host, HostPower, Meter, hosts, meters, site_power  # noqa: E402
from simulator.scenario import Scenario  # noqa: E402

SITE = "bench"
HOSTS_PER_RACK = 40
RACKS_PER_ROOM = 100  # the most a scenario room holds
STEP_S = 10
TOPIC_ROOT = "dcem"
PACKET_IDS = 65_535  # MQTT packet ids are 1..65535
TS_DIGITS = 13  # epoch milliseconds from 2001 to 2286
MAX_BURST = 500  # messages handed to the transport at once, between reads of the PUBACKs


def bench_scenario(hosts_total: int, gpus: int = 0) -> Scenario:
    """The benchmark site as a simulator scenario: `hosts_total` hosts in racks of 40 (a last rack holds the rest),
    rooms of up to 100 racks alternating a training load (busy all run) and an office load (a half sine over the
    local day), one host profile with `gpus` GPUs, and the simulator's utility, UPS-output and cooling meters."""
    full_racks, rest = divmod(hosts_total, HOSTS_PER_RACK)
    shapes = [(min(RACKS_PER_ROOM, full_racks - done), HOSTS_PER_RACK)
              for done in range(0, full_racks, RACKS_PER_ROOM)]
    shapes += [(1, rest)] if rest else []
    rooms = [{"id": f"hall-{i:02d}", "racks": racks, "hosts_per_rack": per_rack, "host_profile": "server",
              "load_profile": ("training", "office")[i % 2]} for i, (racks, per_rack) in enumerate(shapes)]
    return Scenario.model_validate({
        "site": SITE, "name": "Throughput benchmark site", "timezone": "Asia/Shanghai", "grid_region": "central",
        "seed": 1, "host_jitter": 0.1, "duration_h": 1, "step_s": STEP_S,
        "host_profiles": {"server": {"idle_w": 180, "peak_w": 480, "gpus": gpus, "gpu_idle_w": 50 if gpus else 0,
                                     "gpu_peak_w": 350 if gpus else 0, "logical_cpus": 64, "mem_total_gb": 256}},
        "load_profiles": {
            "training": {"kind": "training", "cpu_idle": 0.05, "cpu_busy": 0.6, "gpu_idle": 0.02, "gpu_busy": 0.9},
            "office": {"kind": "office", "cpu_idle": 0.08, "cpu_busy": 0.7, "gpu_busy": 0.3,
                       "day_start_h": 8, "day_end_h": 19}},
        "rooms": rooms, "weather": {"mean_c": 22, "amplitude_c": 6}, "cooling": {"a": 0.25, "b": 0.01},
        "ups": {"fixed_w": 2000, "k": 0.04},
    })


def publish_order(devices: int, order: str) -> list[int]:
    """Device indexes (hosts, then meters) in the order they publish within each cycle. "random" (a fixed
    shuffle): agents' phases are independent, so one collector batch touches hosts of many racks; "rack": rack
    by rack."""
    indexes = list(range(devices))
    if order == "random":
        random.Random(1).shuffle(indexes)
    return indexes


class SimulatedSite:
    """This process's share of the simulated site, live: the message of device k at wall-clock ts_ms.

    Power is the model's (simulator.model.site_power) for the 10 s step holding ts_ms, steps counted from
    `run_start_ms`; a device's energy is integrated exactly over the steps since its session opened."""

    def __init__(self, scenario: Scenario, devices: list[int], run_start_ms: int, steps: int = 0):
        self.scenario = scenario
        self.run_start_ms = run_start_ms
        self.step_ms = scenario.step_ms
        self.all_hosts = hosts(scenario)
        all_meters = meters(scenario)
        everything: list[Host | Meter] = [*self.all_hosts, *all_meters]
        self.devices = [everything[i] for i in devices]
        self.topics = [(host_topic if isinstance(d, Host) else meter_topic)(scenario, d, TOPIC_ROOT)
                       for d in self.devices]
        self.sessions = [session_id(run_start_ms, d.id) for d in self.devices]
        self.encoders = [HostEncoder(d, s) if isinstance(d, Host) else None
                         for d, s in zip(self.devices, self.sessions)]
        self._powers: list[list[HostPower | float]] = []  # per step, per device of this share
        # (energy, per-GPU energy) J since the run start at each step start, per device of this share
        self._cumulative: list[list[tuple[float, float]]] = [[(0.0, 0.0)] * len(self.devices)]
        self._opened: list[tuple[float, float] | None] = [None] * len(self.devices)  # cumulative J at seq 0
        self._seq = [0] * len(self.devices)
        self._step_of(run_start_ms + steps * self.step_ms)

    def _step_of(self, ts_ms: int) -> int:
        """The step holding ts_ms, computing the powers of the steps up to it."""
        step = max(0, (ts_ms - self.run_start_ms) // self.step_ms)
        while len(self._powers) <= step:
            k = len(self._powers)
            power = site_power(self.scenario, self.all_hosts, self.run_start_ms, self.run_start_ms + k * self.step_ms)
            self._powers.append([power.hosts[d.id] if isinstance(d, Host) else power.meter_w(d) for d in self.devices])
            self._cumulative.append([(e + _watts(p) * self.scenario.step_s, g + _gpu_watts(p) * self.scenario.step_s)
                                     for (e, g), p in zip(self._cumulative[k], self._powers[k])])
        return step

    def _energy(self, i: int, step: int, ts_ms: int) -> tuple[float, float]:
        """Device i's (energy, per-GPU energy) since the run start, J."""
        power, (energy, gpu) = self._powers[step][i], self._cumulative[step][i]
        seconds = (ts_ms - (self.run_start_ms + step * self.step_ms)) / 1000
        return energy + _watts(power) * seconds, gpu + _gpu_watts(power) * seconds

    def message(self, i: int, ts_ms: int) -> tuple[str, bytes]:
        """Device i's next message, sampled at ts_ms (its first opens the session: seq 0, energy 0)."""
        step = self._step_of(ts_ms)
        seq = self._seq[i]
        self._seq[i] = seq + 1
        now = self._energy(i, step, ts_ms)
        if seq == 0:
            self._opened[i] = now
        opened = self._opened[i]
        energy, gpu_energy = now[0] - opened[0], now[1] - opened[1]
        interval = float(self.scenario.step_s)
        power = self._powers[step][i]
        encoder = self.encoders[i]
        if encoder is not None:
            return self.topics[i], encoder.payload(power, seq, ts_ms, interval, energy, gpu_energy, seq == 0)
        sample = meter_sample(self.devices[i], power, seq, ts_ms, interval, energy, seq == 0)
        return self.topics[i], encode(SampleBatch(kind="meter", session=self.sessions[i], samples=[sample]))

    def check(self) -> None:
        """The fast host encoding must be the contract models' bytes, and a valid contract message."""
        for i, encoder in enumerate(self.encoders):
            if encoder is None:
                continue
            power = self._powers[0][i]
            args = (power, 3, self.run_start_ms + 12_345, 10.0, 1234.5678, 98.25, False)
            fast = encoder.payload(*args)
            if fast != host_payload(self.devices[i], *args, self.sessions[i]) or \
                    decode_batch(fast).samples[0].seq != 3:
                raise RuntimeError(f"HostEncoder differs from the contract models: {fast[:300]!r}")
            return


class PlannedStream:
    """Every message this process publishes, built before the start as whole MQTT PUBLISH packets (QoS 1, packet
    ids in sequence), so that publishing costs the load generator a memory copy per burst instead of ~10 us of
    Python per message, which it would take from the system under test on the same cores.

    Message n is device n % len(devices)'s next sample, planned at run_start_ms + n / rate. At the start every
    timestamp moves by one shift onto the wall clock (`start`), and each is written into its packet (13 digits)
    just before it is sent (`stamp`): ts_ms is the message's scheduled publish time, and moving the whole run by
    one shift keeps every interval and energy as the model made them. About 450 bytes of memory per message."""

    def __init__(self, site: SimulatedSite, count: int, rate: float, v5: bool):
        self.count = count
        self.devices = len(site.devices)
        self.buffer = bytearray()
        self.starts = array("q")  # packet n is buffer[starts[n]:starts[n + 1]]
        self.payload_at = array("q")
        self.ts_at = array("q")  # where its ts_ms digits are
        self.planned_ms = array("q")
        self.meter_messages = 0
        self.shift_ms = 0
        self._topics = [(topic, _str16(topic.encode())) for topic in site.topics]
        for n in range(count):
            k = n % self.devices
            ts_ms = site.run_start_ms + round(n * 1000 / rate)
            topic, payload = site.message(k, ts_ms)
            digits = payload.index(b'"ts_ms":') + 8
            if payload[digits:digits + 14] != b"%d," % ts_ms or len(b"%d" % ts_ms) != TS_DIGITS:
                raise RuntimeError(f"message {n} does not carry ts_ms {ts_ms} as {TS_DIGITS} digits")
            head = self._topics[k][1] + struct.pack("!H", self.packet_id(n)) + (b"\x00" if v5 else b"")
            fixed = b"\x32" + _varint(len(head) + len(payload))
            self.starts.append(len(self.buffer))
            self.payload_at.append(len(self.buffer) + len(fixed) + len(head))
            self.ts_at.append(self.payload_at[-1] + digits)
            self.planned_ms.append(ts_ms)
            self.buffer += fixed + head + payload
            self.meter_messages += site.encoders[k] is None
        self.starts.append(len(self.buffer))
        self._view = memoryview(self.buffer)  # the buffer keeps its size from here on

    @staticmethod
    def packet_id(n: int) -> int:
        """Message n's MQTT packet id: 1 to 65535 in turn (no id is reused while its message is in flight as
        long as fewer than 65,535 are)."""
        return n % PACKET_IDS + 1

    def start(self, start_ms: int) -> None:
        """Move the whole plan so that its first message is due at start_ms (epoch ms)."""
        self.shift_ms = start_ms - self.planned_ms[0]
        for n in (0, self.count - 1):
            if len(b"%d" % self.ts_ms(n)) != TS_DIGITS:
                raise RuntimeError(f"ts_ms {self.ts_ms(n)} does not have {TS_DIGITS} digits")

    def ts_ms(self, n: int) -> int:
        return self.planned_ms[n] + self.shift_ms

    def stamp(self, first: int, end: int) -> None:
        """Write the timestamps of messages first..end-1 into their packets."""
        buffer, ts_at, planned, shift = self.buffer, self.ts_at, self.planned_ms, self.shift_ms
        for n in range(first, end):
            at = ts_at[n]
            buffer[at:at + TS_DIGITS] = b"%d" % (planned[n] + shift)

    def packets(self, first: int, end: int) -> memoryview:
        """The PUBLISH packets of messages first..end-1, back to back."""
        return self._view[self.starts[first]:self.starts[end]]

    def message(self, n: int) -> tuple[str, bytes]:
        """Message n's topic and payload."""
        return self._topics[n % self.devices][0], bytes(self._view[self.payload_at[n]:self.starts[n + 1]])

    def same_slot(self, sent: int, resolution_ms: int) -> int:
        """Of the first `sent` messages, those scheduled in the same raw-resolution slot as their device's
        previous one: the collector accounts them but stores one raw reading per device and slot."""
        return sum((self.ts_ms(n) // resolution_ms) == (self.ts_ms(n - self.devices) // resolution_ms)
                   for n in range(self.devices, sent))


def _watts(power: HostPower | float) -> float:
    return power.server_w if isinstance(power, HostPower) else power


def _gpu_watts(power: HostPower | float) -> float:
    return power.gpu_w if isinstance(power, HostPower) else 0.0


class CoalescingClient(paho.Client):
    """paho's client with its socket writes coalesced: paho sends every packet with its own send() call
    (one system call, and with TCP_NODELAY one TCP segment, per message); this collects them and
    `flush()` writes them together. Only for this single-threaded load generator."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._unsent = bytearray()

    def _sock_send(self, buf: bytes) -> int:
        self._unsent += buf
        return len(buf)

    def unsent(self) -> int:
        return len(self._unsent)

    def flush(self) -> None:
        while self._unsent and self._sock is not None:
            try:
                n = self._sock.send(self._unsent)
            except BlockingIOError:
                return
            del self._unsent[:n]


class PahoTransport:
    """paho-mqtt 2.x, driven from this thread (loop_read / loop_write), PUBACKs counted in on_publish."""

    name = "paho"

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.acked = 0
        self.ack_failures = 0
        self.connected = False
        self.client = CoalescingClient(paho.CallbackAPIVersion.VERSION2, client_id=args.client_id,
                                       protocol=paho.MQTTv5 if args.protocol == "5" else paho.MQTTv311)
        # The in-flight bound is enforced by the caller (sent - acked < max_inflight); paho's own bound would
        # rescan all its outgoing messages on every PUBACK (Client._update_inflight), a third of the CPU.
        self.client.max_inflight_messages_set(0)
        self.client.max_queued_messages_set(args.max_inflight)  # a publish beyond the bound fails loudly
        self.client.on_connect = self._on_connect
        self.client.on_publish = self._on_publish

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connected = not reason_code.is_failure

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        self.acked += 1
        # MQTT 5: 16 (no matching subscribers) is not a failure; >= 128 is.
        if reason_code is not None and reason_code.is_failure:
            self.ack_failures += 1

    def connect(self) -> None:
        self.client.connect(self.args.host, self.args.port, keepalive=60)
        self.client.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        deadline = time.monotonic() + 10
        while not self.connected:
            if time.monotonic() > deadline:
                raise RuntimeError("no CONNACK within 10 s")
            self.pump(0.05)

    def send(self, stream: PlannedStream, first: int, end: int) -> int:
        """Publish messages first..end-1 of the stream through paho; returns how many paho refused."""
        failed = 0
        for n in range(first, end):
            topic, payload = stream.message(n)
            failed += self.client.publish(topic, payload, qos=self.args.qos).rc != paho.MQTT_ERR_SUCCESS
        return failed

    def pump(self, timeout: float) -> None:
        sock = self.client.socket()
        if sock is None:
            raise RuntimeError("connection to the broker lost")
        self.client.flush()
        writable = self.client.want_write() or self.client.unsent()
        readable, _, _ = select.select([sock], [sock] if writable else [], [], timeout)
        if readable and self.client.loop_read(1000) != paho.MQTT_ERR_SUCCESS:
            raise RuntimeError("connection to the broker lost while reading")
        if self.client.want_write() and self.client.loop_write() != paho.MQTT_ERR_SUCCESS:
            raise RuntimeError("connection to the broker lost while writing")
        self.client.flush()
        if self.client.loop_misc() != paho.MQTT_ERR_SUCCESS:
            raise RuntimeError("connection to the broker lost (keepalive)")

    def close(self) -> None:
        self.client.disconnect()
        self.client.flush()


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _str16(text: bytes) -> bytes:
    return struct.pack("!H", len(text)) + text


class RawTransport:
    """A minimal MQTT 3.1.1 / 5 QoS 1 publisher on a plain socket, for a load generator that leaves the CPU to
    the system under test (paho spends ~40 us per QoS 1 message in Python). It sends a PlannedStream's packets
    as they are, a burst at a time, and counts PUBACKs, which the broker sends in the order of the publishes:
    a run of successful ones is checked in bulk against the acknowledgements expected next, anything else is
    read packet by packet, and a PUBACK out of order or any other packet (but PINGRESP) stops the run."""

    name = "raw"

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.v5 = args.protocol == "5"
        self.acked = 0
        self.ack_failures = 0
        self._in = bytearray()
        self._out = bytearray()
        self._sock: socket.socket | None = None
        self._last_ping = time.monotonic()
        # successful PUBACKs of every packet id in order, three times over: any run of them read at once (at most
        # one recv, 262,144 bytes) is a slice of this
        self._expected = b"".join(b"\x40\x02" + struct.pack("!H", PlannedStream.packet_id(n))
                                  for n in range(PACKET_IDS)) * 3

    def connect(self) -> None:
        a = self.args
        self._sock = socket.create_connection((a.host, a.port), timeout=10)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        body = _str16(b"MQTT") + bytes([5 if self.v5 else 4, 0x02]) + struct.pack("!H", 60)
        if self.v5:
            body += b"\x00"  # no properties
        body += _str16(a.client_id.encode())
        self._sock.sendall(b"\x10" + _varint(len(body)) + body)
        self._sock.setblocking(False)
        deadline = time.monotonic() + 10
        while True:
            if self._receive(0.05):
                for kind, data in self._packets():
                    if kind != 2:
                        raise RuntimeError(f"expected CONNACK, got packet type {kind}")
                    code = data[1]
                    if code:
                        raise RuntimeError(f"broker refused the connection (reason code {code})")
                    return
            if time.monotonic() > deadline:
                raise RuntimeError("no CONNACK within 10 s")

    def send(self, stream: PlannedStream, first: int, end: int) -> int:
        """Queue messages first..end-1 of the stream (sent by `pump`); returns the publishes that failed: none."""
        self._out += stream.packets(first, end)
        return 0

    def pump(self, timeout: float) -> None:
        self._flush()
        if self._receive(timeout):
            self._count_acks()
        if time.monotonic() - self._last_ping > 20:
            self._out += b"\xc0\x00"
            self._last_ping = time.monotonic()
        self._flush()

    def _count_acks(self) -> None:
        buf = self._in
        whole = len(buf) - len(buf) % 4
        start = (self.acked % PACKET_IDS) * 4
        if whole and buf[:whole] == self._expected[start:start + whole]:  # the usual: successes, in order
            self.acked += whole // 4
            del buf[:whole]
            return
        for kind, data in self._packets():
            if kind == 4:  # PUBACK
                mid, expected = (data[0] << 8) | data[1], PlannedStream.packet_id(self.acked)
                if mid != expected:
                    raise RuntimeError(f"PUBACK for packet id {mid} while {expected} was the oldest in flight")
                self.acked += 1
                if len(data) > 2 and data[2] >= 0x80:
                    self.ack_failures += 1
            elif kind != 13:  # PINGRESP
                raise RuntimeError(f"unexpected packet type {kind} from the broker")

    def _flush(self) -> None:
        while self._out:
            try:
                n = self._sock.send(self._out)
            except BlockingIOError:
                select.select([], [self._sock], [], 0.01)
                continue
            del self._out[:n]

    def _receive(self, timeout: float) -> bool:
        """Wait up to `timeout` for bytes from the broker and add them to the input buffer; False if none came."""
        readable, _, _ = select.select([self._sock], [], [], timeout)
        if not readable:
            return False
        chunk = self._sock.recv(262_144)
        if not chunk:
            raise RuntimeError("the broker closed the connection")
        self._in += chunk
        return True

    def _packets(self) -> list[tuple[int, bytes]]:
        """The whole packets at the start of the input buffer, as (type, body), taken out of it."""
        packets, buf, pos = [], self._in, 0
        while len(buf) - pos >= 2:
            length, shift, i, complete = 0, 0, pos + 1, False
            while i < len(buf) and i < pos + 5:
                byte = buf[i]
                length |= (byte & 0x7F) << shift
                shift += 7
                i += 1
                if not byte & 0x80:
                    complete = True
                    break
            if not complete or i + length > len(buf):
                break
            packets.append((buf[pos] >> 4, bytes(buf[i:i + length])))
            pos = i + length
        del buf[:pos]
        return packets

    def close(self) -> None:
        try:
            self._out += b"\xe0\x00"
            self._flush()
            self._sock.close()
        except OSError:
            pass


def share(args: argparse.Namespace) -> PlannedStream:
    """This process's messages of the benchmark site, planned from --run-start-ms and built."""
    scenario = bench_scenario(args.hosts, args.gpus)
    devices = publish_order(args.hosts + len(meters(scenario)), args.order)[args.proc_index::args.procs]
    if not devices:
        raise SystemExit("this process has no devices")
    site = SimulatedSite(scenario, devices, args.run_start_ms, int(args.seconds // STEP_S) + 2)
    site.check()
    rate = args.rate / args.procs
    return PlannedStream(site, int(round(rate * args.seconds)), rate, v5=args.protocol == "5")


def wait_for_start(args: argparse.Namespace, pump, stop: list[bool]) -> None:
    """Until --start-file names the start (keeping the connection alive), then until that moment."""
    while not args.start_at and not stop[0]:
        try:
            args.start_at = float(Path(args.start_file).read_text().strip() or 0)
        except (OSError, ValueError):
            pass
        pump(0.05)
    while time.time() < args.start_at and not stop[0]:
        pump(min(0.05, max(0.0, args.start_at - time.time())))


def run(transport, stream: PlannedStream, args: argparse.Namespace, stop: list[bool]) -> dict:
    """Publish the plan on schedule; the result counts (sent, acked, failed), the rate and the CPU used."""
    a = args
    rate = a.rate / a.procs
    total = stream.count
    sent = failed = 0
    behind_max = blocked_s = 0.0
    wait_for_start(a, transport.pump, stop)
    stream.start(round(a.start_at * 1000))
    t0 = time.monotonic() - (time.time() - a.start_at)  # the schedule starts at start_at
    cpu0 = time.process_time()
    first_ms = last_ms = 0
    tick = max(1, int(rate * a.tick_s))  # publish in bursts of about tick_s worth of messages
    while sent < total and not stop[0]:
        due = min(total, int((time.monotonic() - t0) * rate) + 1)
        end = min(due, transport.acked + a.max_inflight, sent + MAX_BURST)
        if end - sent >= tick or end == total > sent:  # a tick's worth at a time: fewer, larger socket writes
            stream.stamp(sent, end)
            failed += transport.send(stream, sent, end)
            last_ms = int(time.time() * 1000)
            first_ms = first_ms or last_ms
            sent = end
        behind_max = max(behind_max, time.monotonic() - (t0 + sent / rate))
        if sent < total and sent - transport.acked >= a.max_inflight:
            start = time.monotonic()
            transport.pump(0.01)
            blocked_s += time.monotonic() - start
        else:  # until the next tick is due, or PUBACKs come
            transport.pump(max(0.0, min(0.01, t0 + (sent + tick) / rate - time.monotonic())))
    end_publish = time.monotonic()
    deadline = time.monotonic() + a.ack_timeout
    while transport.acked < sent and time.monotonic() < deadline and not stop[0]:
        transport.pump(0.05)
    end_acked = time.monotonic()
    cpu = time.process_time() - cpu0
    transport.close()
    elapsed = max(1e-9, (last_ms - first_ms) / 1000)
    return {
        "proc_index": a.proc_index, "client": transport.name, "sent": sent, "acked": transport.acked,
        "publish_failed": failed, "ack_failures": transport.ack_failures, "planned": total, "rate_target": rate,
        "rate_achieved": round((sent - 1) / elapsed, 1) if sent > 1 else 0.0,
        "publish_seconds": round(end_publish - t0, 3), "ack_wait_s": round(end_acked - end_publish, 3),
        "behind_max_s": round(behind_max, 3), "inflight_blocked_s": round(blocked_s, 3),
        "first_ts_ms": first_ms, "last_ts_ms": last_ms,
        "same_slot": stream.same_slot(sent, int(a.raw_resolution_s * 1000)),
        "meter_messages": stream.meter_messages, "cpu_s": round(cpu, 3), "cpu_s_total": round(sum(os.times()[:2]), 3),
        "devices": stream.devices, "stopped_early": bool(stop[0]),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--rate", type=float, default=20000, help="messages/s over all --procs processes")
    p.add_argument("--seconds", type=float, default=30)
    p.add_argument("--hosts", type=int, default=200_000)
    p.add_argument("--gpus", type=int, default=0, help="GPUs per simulated host (each adds a raw gpu point)")
    p.add_argument("--order", choices=["random", "rack"], default="random",
                   help="order of the devices within a cycle: a fixed shuffle (independent agents) or rack by rack")
    p.add_argument("--procs", type=int, default=1, help="processes sharing the load")
    p.add_argument("--proc-index", type=int, default=0)
    p.add_argument("--max-inflight", type=int, default=1000, help="QoS 1 publishes awaiting PUBACK, at most")
    p.add_argument("--qos", type=int, default=1, choices=[0, 1])
    p.add_argument("--client", choices=["paho", "raw"], default="raw",
                   help="a minimal QoS 1 publisher on a plain socket (the default, far less CPU) or paho-mqtt")
    p.add_argument("--protocol", choices=["5", "3.1.1"], default="5", help="as the agent (MQTT 5 by default)")
    p.add_argument("--run-start-ms", type=int, default=None,
                   help="the simulated run's start (epoch ms): steps and sessions count from it (default: now)")
    p.add_argument("--client-id", default=None)
    p.add_argument("--start-at", type=float, default=0.0, help="wall-clock time (epoch s) to start publishing")
    p.add_argument("--start-file", default=None, help="wait until this file holds the start time (epoch s)")
    p.add_argument("--raw-resolution-s", type=float, default=10.0,
                   help="the collector's ingest.raw_resolution_s, to count messages it will not store as raw")
    p.add_argument("--tick-s", type=float, default=0.002, help="publish in bursts this far apart")
    p.add_argument("--ack-timeout", type=float, default=30.0, help="longest wait for the last PUBACKs")
    args = p.parse_args(argv)
    args.client_id = args.client_id or f"bench-publisher-{args.proc_index}-{os.getpid()}"
    if args.run_start_ms is None:
        args.run_start_ms = int(time.time() * 1000)
    if not 0 <= args.proc_index < args.procs:
        p.error("--proc-index must be in 0..procs-1")
    if not 0 < args.max_inflight < PACKET_IDS:
        p.error("--max-inflight must be between 1 and 65534 (16-bit packet ids)")
    if args.client == "raw" and args.qos != 1:
        p.error("--client raw publishes at QoS 1 only")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stop = [False]

    def _stop(*_):
        stop[0] = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    stream = share(args)
    gc.freeze()  # the site and the plan live until the end: no collection need walk them while publishing
    transport = (RawTransport if args.client == "raw" else PahoTransport)(args)
    transport.connect()
    print("ready", file=sys.stderr, flush=True)
    if not args.start_at and not args.start_file:
        args.start_at = time.time() + 0.2
    result = run(transport, stream, args, stop)
    print(json.dumps(result), flush=True)
    ok = result["sent"] == result["planned"] == result["acked"] and not result["publish_failed"] \
        and not result["ack_failures"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
