"""The throughput benchmark's load generator (bench/stream_publisher.py): its planned stream is whole MQTT PUBLISH
packets of the simulator's messages, moved onto the wall clock without changing any interval or energy, and both
of its clients deliver every message through a real mosquitto and count every PUBACK."""

from __future__ import annotations

import struct
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest

from common.contract import decode_batch
from tests.servers import Mosquitto

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import stream_publisher as sp  # noqa: E402

BEGIN = 1_750_000_000_000
HOSTS = 130
RATE = 100.0


def _plan(rate: float = RATE, seconds: float = 3.0, v5: bool = True) -> sp.PlannedStream:
    scenario = sp.bench_scenario(HOSTS, gpus=1)
    site = sp.SimulatedSite(scenario, sp.publish_order(HOSTS + 3, "random"), BEGIN, int(seconds // 10) + 2)
    return sp.PlannedStream(site, int(rate * seconds), rate, v5)


def _publishes(data: bytes, v5: bool) -> list[tuple[int, str, int, bytes]]:
    """(first byte, topic, packet id, payload) of each PUBLISH in `data`, which must hold whole packets only."""
    found, pos = [], 0
    while pos < len(data):
        length, shift, i = 0, 0, pos + 1
        while True:
            length |= (data[i] & 0x7F) << shift
            shift += 7
            i += 1
            if not data[i - 1] & 0x80:
                break
        end = i + length
        (topic_length,) = struct.unpack_from("!H", data, i)
        topic = data[i + 2:i + 2 + topic_length].decode()
        (packet_id,) = struct.unpack_from("!H", data, i + 2 + topic_length)
        body = i + 4 + topic_length
        if v5:
            assert data[body] == 0  # no properties
            body += 1
        found.append((data[pos], topic, packet_id, data[body:end]))
        pos = end
    return found


@pytest.mark.parametrize("v5", [True, False])
def test_the_plan_is_qos1_publishes_with_packet_ids_in_turn_and_contract_payloads(v5):
    stream = _plan(v5=v5)
    stream.start(BEGIN + 12_345)
    stream.stamp(0, stream.count)
    publishes = _publishes(bytes(stream.packets(0, stream.count)), v5)
    assert len(publishes) == stream.count == 300
    for n, (first_byte, topic, packet_id, payload) in enumerate(publishes):
        assert first_byte == 0x32 and packet_id == n + 1
        assert (topic, payload) == stream.message(n)
        batch = decode_batch(payload)
        assert batch.samples[0].ts_ms == BEGIN + 12_345 + round(n * 1000 / RATE)
        assert topic.split("/")[5] in batch.session
    assert stream.meter_messages == sum(decode_batch(p[3]).kind == "meter" for p in publishes) > 0


def test_moving_the_plan_onto_the_clock_keeps_every_interval_and_energy():
    early, late = _plan(), _plan()
    early.start(BEGIN + 1_000)
    late.start(BEGIN + 987_654)
    early.stamp(0, early.count)
    late.stamp(0, late.count)
    for n in range(early.count):
        before, after = (decode_batch(stream.message(n)[1]).samples[0] for stream in (early, late))
        assert after.ts_ms - before.ts_ms == 986_654
        assert after.model_copy(update={"ts_ms": before.ts_ms}) == before


def test_packet_ids_run_from_1_to_65535_and_wrap():
    assert [sp.PlannedStream.packet_id(n) for n in (0, 1, 65_534, 65_535, 65_536)] == [1, 2, 65_535, 1, 2]


def test_a_plan_refuses_a_start_whose_timestamps_would_not_fit_its_digits():
    stream = _plan(seconds=1.0)
    with pytest.raises(RuntimeError, match="13 digits"):
        stream.start(10_000_000_000_000 - 500)


class _Subscriber:
    """A paho subscriber at QoS 1 that keeps every payload it receives."""

    def __init__(self, port: int):
        self.payloads: list[bytes] = []
        self._subscribed = threading.Event()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="bench-publisher-test-sub")
        self.client.on_subscribe = lambda *args: self._subscribed.set()
        self.client.on_message = lambda client, userdata, message: self.payloads.append(message.payload)
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(f"{sp.TOPIC_ROOT}/#", qos=1)
        self.client.loop_start()
        assert self._subscribed.wait(10)

    def wait_for(self, count: int, timeout_s: float = 20.0) -> list[bytes]:
        deadline = time.monotonic() + timeout_s
        while len(self.payloads) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        self.client.loop_stop()
        self.client.disconnect()
        return self.payloads


@pytest.mark.parametrize("client, subscribed", [("raw", True), ("raw", False), ("paho", True)])
def test_the_publisher_delivers_every_message_once_and_counts_every_puback(tmp_path, client, subscribed):
    """With a subscriber, mosquitto's PUBACKs are plain successes (read in bulk); without one, MQTT 5 PUBACKs
    say "no matching subscribers" (read one by one), which is not a failure."""
    broker = Mosquitto(tmp_path / "broker")
    broker.start()
    try:
        subscriber = _Subscriber(broker.port) if subscribed else None
        args = sp.parse_args(["--port", str(broker.port), "--client", client, "--rate", "2000", "--seconds", "1",
                              "--hosts", str(HOSTS), "--max-inflight", "50", "--start-at", str(time.time() + 0.2)])
        stream = sp.share(args)
        transport = (sp.RawTransport if client == "raw" else sp.PahoTransport)(args)
        transport.connect()
        result = sp.run(transport, stream, args, [False])
        assert result["sent"] == result["acked"] == result["planned"] == 2000
        assert result["publish_failed"] == result["ack_failures"] == 0 and not result["stopped_early"]
        if subscriber:
            assert subscriber.wait_for(2000) == [stream.message(n)[1] for n in range(2000)]
    finally:
        broker.stop()
