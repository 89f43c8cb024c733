"""Load generator for bench/collector_throughput.py: agent-format sample messages at a fixed rate over MQTT QoS 1.

One process publishes `--rate` messages/s for `--seconds` seconds, cycling over its share of `--hosts` hosts in
a fixed order (so with rate R and H hosts each host publishes once every H/R seconds, like a real agent
publishing every 10 s when H = 10 R). The order is a fixed shuffle by default (agents' phases are independent,
so consecutive messages come from different racks), or rack by rack (`--order rack`). Each message is one
SampleBatch with one host sample, exactly the contract's JSON (common.contract), built from a template with
session, seq, ts_ms and the energy counters substituted; ts_ms is the wall clock at the moment of publishing, so
a consumer can measure publish-to-stored latency.

QoS 1 publishes in flight (sent, PUBACK not yet received) are bounded by `--max-inflight`: paho's packet ids
are 16 bits, so an unbounded publisher (mosquitto_pub -l at QoS 1) silently loses messages beyond ~65,535
outstanding. When the bound is reached the publisher waits for PUBACKs and falls behind its schedule, and says
so (`behind_max_s`). Every publish call's return code is checked and every PUBACK counted: the final JSON line
on stdout reports sent, acked and failed counts, the achieved rate and the process's own CPU seconds, and
`same_slot`: messages published within the same raw-resolution slot as their host's previous one (publish jitter
at a slot edge), which the collector accounts but by design does not store as raw readings.

Several processes can share the load (`--procs P --proc-index p`: process p publishes every P-th host of the
publishing order, starting at the p-th, at rate R/P); start them with the same `--start-at` wall time.
`--client raw` replaces paho with a minimal QoS 1 publisher on a plain socket (RawTransport), for a load
generator that leaves the CPU to the system under test.

The host layout (`host_levels`) is shared with collector_throughput.py, which writes the matching site config.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import select
import signal
import socket
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import paho.mqtt.client as paho  # noqa: E402

from common.contract import (  # noqa: E402
    Component,
    HostStats,
    Method,
    Reading,
    Sample,
    SampleBatch,
    decode_batch,
    encode,
)

SITE = "bench"
HOSTS_PER_RACK = 40
RACKS_PER_ROOM = 250
TOPIC_ROOT = "dcem"

# Sentinels in the template payload, replaced per message (they must not occur elsewhere in the JSON).
_SESSION = "SESSIONXSENTINEL"
_SEQ = 987654321
_TS = 1999999999999
_ENERGY = (111111.5, 222222.5, 333333.5, 444444.5, 555555.5)


def host_levels(index: int) -> tuple[str, str, str]:
    """(room, rack, host) topic levels of host number `index`: racks of 40, rooms of 250 racks."""
    rack = index // HOSTS_PER_RACK
    return f"hall-{rack // RACKS_PER_ROOM:02d}", f"r{rack:05d}", f"h{index:06d}"


def publish_order(hosts: int, order: str) -> list[int]:
    """Host indexes in the order they publish within each cycle. "random" (a fixed shuffle): agents' phases
    are independent, so one collector batch touches hosts of many racks; "rack": rack by rack."""
    indexes = list(range(hosts))
    if order == "random":
        random.Random(1).shuffle(indexes)
    return indexes


def host_topic(index: int) -> str:
    room, rack, host = host_levels(index)
    return f"{TOPIC_ROOT}/v1/{SITE}/{room}/{rack}/{host}/samples"


def host_watts(index: int) -> float:
    """A host's constant server-input power, 200-499 W."""
    return 200.0 + index % 300


def template() -> bytes:
    """A %-format bytes template of one agent host message: (session, seq, ts_ms, 5 energies)."""
    readings = [
        Reading(component=Component.CPU_PACKAGE, id="package-0", method=Method.RAPL, power_w=96.5, energy_j=_ENERGY[1]),
        Reading(component=Component.CPU_PACKAGE, id="package-1", method=Method.RAPL, power_w=91.25, energy_j=_ENERGY[2]),
        Reading(component=Component.DRAM, id="dram-0", method=Method.RAPL, power_w=12.5, energy_j=_ENERGY[3]),
        Reading(component=Component.DRAM, id="dram-1", method=Method.RAPL, power_w=11.75, energy_j=_ENERGY[4]),
        Reading(component=Component.SERVER_INPUT, id="server", method=Method.MODEL, power_w=333.0, energy_j=_ENERGY[0]),
    ]
    sample = Sample(seq=_SEQ, ts_ms=_TS, interval_s=10.0, readings=readings,
                    host=HostStats(cpu_util=0.42, cpu_freq_mhz=2600.0, logical_cpus=64,
                                   mem_used_bytes=123_456_789_012, mem_total_bytes=274_877_906_944))
    text = encode(SampleBatch(kind="host", session=_SESSION, samples=[sample])).replace(b"%", b"%%")
    for sentinel in [_SESSION.encode(), str(_SEQ).encode(), str(_TS).encode(), *[repr(e).encode() for e in _ENERGY]]:
        if text.count(sentinel) != 1:
            raise RuntimeError(f"template sentinel {sentinel!r} found {text.count(sentinel)} times")
    order = sorted([(text.index(_SESSION.encode()), "session"), (text.index(str(_SEQ).encode()), "seq"),
                    (text.index(str(_TS).encode()), "ts")] +
                   [(text.index(repr(e).encode()), f"e{i}") for i, e in enumerate(_ENERGY)])
    expected = ["session", "seq", "ts", "e1", "e2", "e3", "e4", "e0"]
    if [name for _, name in order] != expected:
        raise RuntimeError(f"unexpected field order in the template: {order}")
    text = text.replace(_SESSION.encode(), b"%s").replace(str(_SEQ).encode(), b"%d").replace(str(_TS).encode(), b"%d")
    for e in _ENERGY:
        text = text.replace(repr(e).encode(), b"%.3f")
    return text


def payload(tmpl: bytes, session: bytes, seq: int, ts_ms: int, elapsed_s: float, watts: float) -> bytes:
    """One message: cumulative energies of a host drawing `watts` for `elapsed_s` since its session began."""
    e = watts * elapsed_s
    return tmpl % (session, seq, ts_ms, e * 0.29, e * 0.27, e * 0.04, e * 0.035, e)


def session_of(run_id: str, index: int) -> bytes:
    return f"{run_id}-{index:06d}".encode()


def check_template(tmpl: bytes) -> None:
    """The substituted template must be a valid contract message with the substituted values."""
    now = int(time.time() * 1000)
    batch = decode_batch(payload(tmpl, b"check-session-1", 7, now, 10.0, 300.0))
    sample = batch.samples[0]
    server = [r for r in sample.readings if r.component == Component.SERVER_INPUT][0]
    if (batch.session, sample.seq, sample.ts_ms, server.energy_j) != ("check-session-1", 7, now, 3000.0):
        raise RuntimeError(f"template substitution is wrong: {batch}")


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

    def publish(self, topic: str, data: bytes) -> bool:
        return self.client.publish(topic, data, qos=self.args.qos).rc == paho.MQTT_ERR_SUCCESS

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
    the system under test (paho spends ~40 us per QoS 1 message in Python). Packet ids are allocated
    skipping those still in flight, PUBACKs are matched by packet id, and anything else the broker sends
    (other than PINGRESP) stops the run."""

    name = "raw"

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.v5 = args.protocol == "5"
        self.acked = 0
        self.ack_failures = 0
        self.unknown_acks = 0
        self.inflight: set[int] = set()
        self._next_id = 0
        self._in = bytearray()
        self._out = bytearray()
        self._sock: socket.socket | None = None
        self._last_ping = time.monotonic()

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
            packets = self._read(0.05)
            for kind, data in packets:
                if kind != 2:
                    raise RuntimeError(f"expected CONNACK, got packet type {kind}")
                code = data[1]
                if code:
                    raise RuntimeError(f"broker refused the connection (reason code {code})")
                return
            if time.monotonic() > deadline:
                raise RuntimeError("no CONNACK within 10 s")

    def publish(self, topic: str, data: bytes) -> bool:
        mid = self._next_id % 65535 + 1
        while mid in self.inflight:
            mid = mid % 65535 + 1
        self._next_id = mid
        self.inflight.add(mid)
        topic_b = topic.encode()
        head = struct.pack("!H", len(topic_b)) + topic_b + struct.pack("!H", mid) + (b"\x00" if self.v5 else b"")
        self._out += b"\x32" + _varint(len(head) + len(data)) + head + data
        return True

    def pump(self, timeout: float) -> None:
        self._flush()
        for kind, data in self._read(timeout):
            if kind == 4:  # PUBACK
                mid = (data[0] << 8) | data[1]
                if mid in self.inflight:
                    self.inflight.discard(mid)
                    self.acked += 1
                    if len(data) > 2 and data[2] >= 0x80:
                        self.ack_failures += 1
                else:
                    self.unknown_acks += 1
            elif kind != 13:  # PINGRESP
                raise RuntimeError(f"unexpected packet type {kind} from the broker")
        if time.monotonic() - self._last_ping > 20:
            self._out += b"\xc0\x00"
            self._last_ping = time.monotonic()
        self._flush()

    def _flush(self) -> None:
        while self._out:
            try:
                n = self._sock.send(self._out)
            except BlockingIOError:
                select.select([], [self._sock], [], 0.01)
                continue
            del self._out[:n]

    def _read(self, timeout: float) -> list[tuple[int, bytes]]:
        readable, _, _ = select.select([self._sock], [], [], timeout)
        if readable:
            chunk = self._sock.recv(262_144)
            if not chunk:
                raise RuntimeError("the broker closed the connection")
            self._in += chunk
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


def run(transport, args: argparse.Namespace, stop: list[bool]) -> dict:
    """Publish the schedule; the result counts (sent, acked, failed), the rate and the CPU used."""
    a = args
    rate = a.rate / a.procs
    mine = publish_order(a.hosts, a.order)[a.proc_index::a.procs]
    if not mine:
        raise SystemExit("this process has no hosts")
    topics = [host_topic(i) for i in mine]
    sessions = [session_of(a.run_id, i) for i in mine]
    watts = [host_watts(i) for i in mine]
    total = int(round(rate * a.seconds))
    tmpl = template()
    check_template(tmpl)
    session_start_ms = int(a.start_at * 1000) - 1  # energy counts from just before the first publish
    n_hosts = len(mine)
    publish, pump = transport.publish, transport.pump
    raw_ms = int(a.raw_resolution_s * 1000)
    last_slot = [-1] * n_hosts  # the collector stores a host's raw reading once per slot: count the repeats
    same_slot = 0
    sent = failed = 0
    behind_max = 0.0
    blocked_s = 0.0
    while time.time() < a.start_at and not stop[0]:
        pump(min(0.05, max(0.0, a.start_at - time.time())))
    t0 = time.monotonic() - (time.time() - a.start_at)  # the schedule starts at start_at
    cpu0 = time.process_time()
    first_ms = last_ms = 0
    tick = max(1, int(rate * a.tick_s))  # publish in bursts of about tick_s worth of messages
    while sent < total and not stop[0]:
        now = time.monotonic()
        due = min(total, int((now - t0) * rate) + 1)
        burst = 0
        while sent < due and sent - transport.acked < a.max_inflight and burst < 500:
            k = sent % n_hosts
            ts_ms = int(time.time() * 1000)
            slot = ts_ms // raw_ms
            if last_slot[k] == slot:
                same_slot += 1
            last_slot[k] = slot
            if not publish(topics[k], payload(tmpl, sessions[k], sent // n_hosts, ts_ms,
                                              (ts_ms - session_start_ms) / 1000, watts[k])):
                failed += 1
            if not first_ms:
                first_ms = ts_ms
            last_ms = ts_ms
            sent += 1
            burst += 1
        behind_max = max(behind_max, time.monotonic() - (t0 + sent / rate))
        if sent < total and sent - transport.acked >= a.max_inflight:
            start = time.monotonic()
            pump(0.01)
            blocked_s += time.monotonic() - start
        elif sent < due:
            pump(0.0)
        else:
            pump(max(0.0, min(0.01, t0 + (sent + tick) / rate - time.monotonic())))
    end_publish = time.monotonic()
    deadline = time.monotonic() + a.ack_timeout
    while transport.acked < sent and time.monotonic() < deadline and not stop[0]:
        pump(0.05)
    end_acked = time.monotonic()
    cpu = time.process_time() - cpu0
    transport.close()
    elapsed = max(1e-9, (last_ms - first_ms) / 1000)
    return {
        "proc_index": a.proc_index, "client": transport.name, "sent": sent, "acked": transport.acked,
        "publish_failed": failed, "ack_failures": transport.ack_failures,
        "unknown_acks": getattr(transport, "unknown_acks", 0), "planned": total, "rate_target": rate,
        "rate_achieved": round((sent - 1) / elapsed, 1) if sent > 1 else 0.0,
        "publish_seconds": round(end_publish - t0, 3), "ack_wait_s": round(end_acked - end_publish, 3),
        "behind_max_s": round(behind_max, 3), "inflight_blocked_s": round(blocked_s, 3),
        "first_ts_ms": first_ms, "last_ts_ms": last_ms, "same_slot": same_slot, "cpu_s": round(cpu, 3),
        "cpu_s_total": round(sum(os.times()[:2]), 3), "hosts": n_hosts, "stopped_early": bool(stop[0]),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--rate", type=float, default=20000, help="messages/s over all --procs processes")
    p.add_argument("--seconds", type=float, default=30)
    p.add_argument("--hosts", type=int, default=200_000)
    p.add_argument("--order", choices=["random", "rack"], default="random",
                   help="order of the hosts within a cycle: a fixed shuffle (independent agents) or rack by rack")
    p.add_argument("--procs", type=int, default=1, help="processes sharing the load")
    p.add_argument("--proc-index", type=int, default=0)
    p.add_argument("--max-inflight", type=int, default=1000, help="QoS 1 publishes awaiting PUBACK, at most")
    p.add_argument("--qos", type=int, default=1, choices=[0, 1])
    p.add_argument("--client", choices=["paho", "raw"], default="paho",
                   help="paho-mqtt, or a minimal QoS 1 publisher on a plain socket (far less CPU)")
    p.add_argument("--protocol", choices=["5", "3.1.1"], default="5", help="as the agent (MQTT 5 by default)")
    p.add_argument("--run-id", default=f"bench{int(time.time()) % 100000:05d}", help="session id prefix")
    p.add_argument("--client-id", default=None)
    p.add_argument("--start-at", type=float, default=0.0, help="wall-clock time (epoch s) to start publishing")
    p.add_argument("--raw-resolution-s", type=float, default=10.0,
                   help="the collector's ingest.raw_resolution_s, to count messages it will not store as raw")
    p.add_argument("--tick-s", type=float, default=0.002, help="publish in bursts this far apart")
    p.add_argument("--ack-timeout", type=float, default=30.0, help="longest wait for the last PUBACKs")
    args = p.parse_args(argv)
    args.client_id = args.client_id or f"bench-publisher-{args.proc_index}-{os.getpid()}"
    if not 0 <= args.proc_index < args.procs:
        p.error("--proc-index must be in 0..procs-1")
    if not 0 < args.max_inflight < 65_535:
        p.error("--max-inflight must be between 1 and 65534 (16-bit packet ids)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stop = [False]

    def _stop(*_):
        stop[0] = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    transport = (RawTransport if args.client == "raw" else PahoTransport)(args)
    transport.connect()
    if not args.start_at:
        args.start_at = time.time() + 0.2
    result = run(transport, args, stop)
    print(json.dumps(result), flush=True)
    ok = result["sent"] == result["planned"] == result["acked"] and not result["publish_failed"] \
        and not result["ack_failures"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
