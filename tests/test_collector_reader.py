"""The collector's MQTT reader (collector/service.py BufferedClient): QoS 1 PUBLISH packets arrive over a real socket
in arbitrary chunks, and every one reaches the collector once, in order, with its topic, payload, packet id and
retain flag, whichever path handled it: the read-ahead loop, paho's own reading of a packet split across reads,
or paho's handling of a packet with MQTT 5 properties.

The packets are encoded here from the MQTT specification (3.1.1 section 3.3, 5.0 section 3.3), independently of
the code under test.
"""

from __future__ import annotations

import socket

import paho.mqtt.client as paho
from hypothesis import given, settings
from hypothesis import strategies as st

from collector.service import BufferedClient


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def publish(topic: str, payload: bytes, mid: int, retain: bool, dup: bool, v5: bool, with_properties: bool) -> bytes:
    name = topic.encode()
    variable = len(name).to_bytes(2, "big") + name + mid.to_bytes(2, "big")
    if v5:
        properties = b"\x01\x01" if with_properties else b""  # payload format indicator: UTF-8
        variable += varint(len(properties)) + properties
    body = variable + payload
    return bytes([0x30 | (0x08 if dup else 0) | 0x02 | (0x01 if retain else 0)]) + varint(len(body)) + body


def received(stream: bytes, cuts: list[int], protocol: int, burst: int) -> list[tuple[str, bytes, int, bool]]:
    """Send the stream over a socket pair in pieces cut at `cuts`; read with the collector's client."""
    sender, receiver = socket.socketpair()
    receiver.setblocking(False)
    client = BufferedClient(paho.CallbackAPIVersion.VERSION2, protocol=protocol)
    client.manual_ack_set(True)
    got: list[tuple[str, bytes, int, bool]] = []
    client.on_samples = lambda topic, payload, mid, retained: got.append((topic, payload, mid, retained))
    client.on_message = lambda _c, _u, message: got.append((message.topic, message.payload, message.mid,
                                                            bool(message.retain)))
    client._sock = receiver
    try:
        bounds = [0, *sorted(set(cuts)), len(stream)]
        for start, end in zip(bounds, bounds[1:]):
            sender.sendall(stream[start:end])
            while True:  # read until the socket and the read-ahead buffer are empty
                before = len(got), client._read_at, len(client._read_ahead), client._in_packet["to_process"]
                assert client.loop_read(burst) == paho.MQTT_ERR_SUCCESS
                if (len(got), client._read_at, len(client._read_ahead), client._in_packet["to_process"]) == before:
                    break
    finally:
        client._sock = None
        sender.close()
        receiver.close()
    return got


messages = st.lists(st.tuples(
    st.text(st.characters(codec="utf-8", exclude_characters="\x00+#"), min_size=1, max_size=40),
    st.one_of(st.binary(max_size=300),  # remaining length in 1 or 2 bytes, or in 3:
              st.builds(lambda size, head: head + bytes(range(256)) * (size // 256), st.integers(16_500, 20_000),
                        st.binary(max_size=8))),
    st.integers(1, 65_535), st.booleans(), st.booleans(), st.booleans(),
), min_size=1, max_size=12)


@settings(max_examples=60, deadline=None)
@given(messages=messages, v5=st.booleans(), cut_fractions=st.lists(st.floats(0, 1), max_size=8),
       cuts_near_ends=st.lists(st.tuples(st.integers(0, 11), st.integers(-3, 3)), max_size=4),
       burst=st.sampled_from([1, 3, 5000]))
def test_every_publish_arrives_once_in_order_however_the_stream_is_cut(messages, v5, cut_fractions, cuts_near_ends,
                                                                      burst):
    packets = [publish(topic, payload, mid, retain, dup, v5, with_properties)
               for topic, payload, mid, retain, dup, with_properties in messages]
    stream = b"".join(packets)
    ends = [sum(map(len, packets[:i + 1])) for i in range(len(packets))]
    cuts = [int(fraction * len(stream)) for fraction in cut_fractions] + [
        min(len(stream), max(0, ends[i % len(ends)] + offset)) for i, offset in cuts_near_ends]
    got = received(stream, cuts, paho.MQTTv5 if v5 else paho.MQTTv311, burst)
    assert got == [(topic, payload, mid, retain) for topic, payload, mid, retain, _dup, _props in messages]


def test_one_read_handles_at_most_the_packets_asked_for():
    stream = b"".join(publish(f"t/{i}", b"{}", i + 1, False, False, True, False) for i in range(10))
    sender, receiver = socket.socketpair()
    receiver.setblocking(False)
    client = BufferedClient(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    client.manual_ack_set(True)
    got: list[int] = []
    client.on_samples = lambda _topic, _payload, mid, _retained: got.append(mid)
    client._sock = receiver
    try:
        sender.sendall(stream)
        client.loop_read(3)  # nothing read ahead yet: paho reads one packet, and the socket into the buffer
        assert got == [1] and client.has_buffered_input()
        client.loop_read(3)
        assert got == [1, 2, 3, 4]
        client.loop_read(5000)
        assert got == list(range(1, 11)) and not client.has_buffered_input()
    finally:
        client._sock = None
        sender.close()
        receiver.close()
