"""Unit tests of common/publisher.py without a broker: payload building, size splitting, and the ack
bookkeeping of SpoolPublisher driven through a fake client. Broker tests live in tests/test_agent_mqtt.py."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from common.contract import (
    MAX_PAYLOAD_BYTES,
    Component,
    Method,
    Reading,
    Sample,
    Status,
    decode_batch,
    decode_status,
)
from common.publisher import SpoolPublisher, _fitting_batches, batch_payload, spool_item
from common.spool import Spool

SESSION_A = "aaaaaaaa00000001"
SESSION_B = "bbbbbbbb00000002"
SAMPLES_TOPIC = "dcem/v1/dc1/hall-a/r01/node/samples"
STATUS_TOPIC = "dcem/v1/dc1/hall-a/r01/node/status"


def sample(seq: int, readings: int = 1, id_length: int = 8) -> Sample:
    return Sample(
        seq=seq,
        ts_ms=1_700_000_000_000 + seq * 1000,
        interval_s=1.0,
        readings=[
            Reading(component=Component.GPU, id=f"{i:0{id_length}d}", method=Method.NVML_ENERGY, power_w=250.5,
                    energy_j=1000.0 * seq, name="G" * 96, power_limit_w=400.0, util=0.5, temp_c=60.0)
            for i in range(readings)
        ],
    )


def sample_json(item: bytes) -> bytes:
    return item.split(b" ", 1)[1]


@dataclass
class Published:
    mid: int
    topic: str
    payload: bytes
    qos: int
    retain: bool


class FakeClient:
    """Records publish() calls; the publisher installs its callbacks on it as on a paho client."""

    def __init__(self) -> None:
        self.published: list[Published] = []
        self.will: Published | None = None
        self.on_connect = self.on_disconnect = self.on_publish = None
        self._next_mid = 0

    def will_set(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> None:
        self.will = Published(0, topic, payload, qos, retain)

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> SimpleNamespace:
        self._next_mid += 1
        self.published.append(Published(self._next_mid, topic, payload, qos, retain))
        return SimpleNamespace(mid=self._next_mid, rc=0)

    # what paho's network thread would do
    def connack(self, reason: str = "Success") -> None:
        self.on_connect(self, None, {}, ReasonCode(PacketTypes.CONNACK, reason), None)

    def disconnect(self) -> None:
        self.on_disconnect(self, None, {}, ReasonCode(PacketTypes.DISCONNECT, "Normal disconnection"), None)

    def puback(self, mid: int, reason: str = "Success") -> None:
        self.on_publish(self, None, mid, ReasonCode(PacketTypes.PUBACK, reason), None)

    def samples(self) -> list[Published]:
        return [p for p in self.published if p.topic == SAMPLES_TOPIC]


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    spool = Spool(tmp_path / "spool.db", max_items=10_000)
    yield spool
    spool.close()


@pytest.fixture
def client() -> FakeClient:
    return FakeClient()


def make_publisher(client: FakeClient, spool: Spool, **kwargs) -> SpoolPublisher:
    return SpoolPublisher(client, spool, SAMPLES_TOPIC, STATUS_TOPIC, kind="host", **kwargs)


def fill(spool: Spool, sessions_and_seqs: list[tuple[str, int]]) -> None:
    spool.extend([spool_item(session, sample(seq)) for session, seq in sessions_and_seqs])


def _spooled(spool: Spool) -> list[tuple[str, int]]:
    out = []
    for _, item in spool.peek(10_000):
        session, body = item.split(b" ", 1)
        out.append((session.decode(), Sample.model_validate_json(body).seq))
    return out


def decoded(published: Published) -> tuple[str, list[int]]:
    batch = decode_batch(published.payload)
    return batch.session, [s.seq for s in batch.samples]


# --- payloads ----------------------------------------------------------------------------------------------


def test_spool_item_is_session_space_sample_json() -> None:
    item = spool_item(SESSION_A, sample(3))
    session, body = item.split(b" ", 1)
    assert session == SESSION_A.encode()
    assert Sample.model_validate_json(body) == sample(3)


@pytest.mark.parametrize("kind", ["host", "meter"])
def test_batch_payload_decodes_into_the_same_samples(kind: str) -> None:
    samples = [sample(seq, readings=3) for seq in range(5)]
    raw = batch_payload(kind, SESSION_A, [sample_json(spool_item(SESSION_A, s)) for s in samples])
    batch = decode_batch(raw)
    assert (batch.v, batch.kind, batch.session) == (1, kind, SESSION_A)
    assert batch.samples == samples


def test_fitting_batches_keeps_small_items_in_one_batch() -> None:
    items = [(i, spool_item(SESSION_A, sample(i))) for i in range(1, 11)]
    [(ids, jsons)] = list(_fitting_batches(items))
    assert ids == list(range(1, 11))
    assert jsons == [sample_json(body) for _, body in items]


def test_fitting_batches_splits_before_the_payload_limit() -> None:
    # each sample is ~40 KB (128 readings), so 20 of them need several messages
    items = [(100 + i, spool_item(SESSION_A, sample(i, readings=128, id_length=90))) for i in range(20)]
    assert sum(len(sample_json(body)) for _, body in items) > 2 * MAX_PAYLOAD_BYTES
    batches = list(_fitting_batches(items))
    assert len(batches) >= 3
    assert [i for ids, _ in batches for i in ids] == [i for i, _ in items]  # nothing lost, order kept
    seqs = []
    for ids, jsons in batches:
        raw = batch_payload("host", SESSION_A, jsons)
        assert len(raw) <= MAX_PAYLOAD_BYTES
        seqs += [s.seq for s in decode_batch(raw).samples]
    assert seqs == list(range(20))


def test_fitting_batches_fills_each_batch_as_far_as_it_can() -> None:
    body_size = MAX_PAYLOAD_BYTES // 3  # two fit under the limit with room for the envelope, three do not
    items = [(i, SESSION_A.encode() + b" " + b"x" * body_size) for i in range(1, 6)]
    assert [ids for ids, _ in _fitting_batches(items)] == [[1, 2], [3, 4], [5]]


# --- SpoolPublisher with a fake client ---------------------------------------------------------------------


def test_last_will_is_a_retained_offline_status(client: FakeClient, spool: Spool) -> None:
    make_publisher(client, spool)
    assert client.will is not None
    assert (client.will.topic, client.will.qos, client.will.retain) == (STATUS_TOPIC, 1, True)
    assert decode_status(client.will.payload).state == "offline"


def test_nothing_is_published_before_the_connection_is_up(client: FakeClient, spool: Spool) -> None:
    publisher = make_publisher(client, spool)
    fill(spool, [(SESSION_A, 0)])
    assert publisher.pump() == 0
    client.connack("Not authorized")
    assert publisher.pump() == 0
    assert client.published == []
    client.connack()
    assert publisher.pump() == 1


def test_pump_publishes_one_batch_per_session_group(client: FakeClient, spool: Spool) -> None:
    publisher = make_publisher(client, spool)
    client.connack()
    fill(spool, [(SESSION_A, 7), (SESSION_A, 8), (SESSION_B, 0), (SESSION_B, 1), (SESSION_B, 2), (SESSION_A, 9)])
    assert publisher.pump() == 3
    assert [decoded(p) for p in client.samples()] == [(SESSION_A, [7, 8]), (SESSION_B, [0, 1, 2]), (SESSION_A, [9])]
    assert all(p.qos == 1 and not p.retain for p in client.samples())
    assert publisher.published_batches == 3
    assert publisher.inflight_samples() == 6
    assert publisher.pump() == 0  # in flight already: not sent twice
    assert spool.depth == 6  # nothing leaves the spool before its PUBACK


def test_successful_ack_removes_rows_at_the_next_pump(client: FakeClient, spool: Spool) -> None:
    publisher = make_publisher(client, spool)
    client.connack()
    fill(spool, [(SESSION_A, 0), (SESSION_A, 1), (SESSION_B, 0)])
    publisher.pump()
    first, second = client.samples()

    client.puback(second.mid)
    assert spool.depth == 3  # the callback only queues the ack
    publisher.pump()
    assert _spooled(spool) == [(SESSION_A, 0), (SESSION_A, 1)]
    assert publisher.acked_samples == 1

    client.puback(first.mid)
    publisher.pump(publish=False)  # settling needs no permission to publish
    assert spool.depth == 0
    assert publisher.acked_samples == 3
    assert publisher.inflight_samples() == 0


def test_refused_ack_leaves_rows_in_the_spool(client: FakeClient, spool: Spool) -> None:
    publisher = make_publisher(client, spool)
    client.connack()
    fill(spool, [(SESSION_A, 0), (SESSION_A, 1)])
    publisher.pump()
    [batch] = client.samples()

    client.puback(batch.mid, "Not authorized")
    publisher.pump()
    assert spool.depth == 2
    assert publisher.acked_samples == 0
    assert publisher.inflight_samples() == 0
    assert len(client.samples()) == 1  # not retried in a loop against a refusing broker

    restarted = make_publisher(client, spool)  # after a restart the spool is offered again from its oldest item
    client.connack()
    assert restarted.pump() == 1
    assert decoded(client.samples()[-1]) == (SESSION_A, [0, 1])


def test_acks_for_unknown_or_repeated_mids_are_ignored(client: FakeClient, spool: Spool) -> None:
    publisher = make_publisher(client, spool)
    client.connack()
    publisher.publish_status(Status(state="online", session=SESSION_A))
    fill(spool, [(SESSION_A, 0)])
    publisher.pump()
    [status] = [p for p in client.published if p.topic == STATUS_TOPIC]
    [batch] = client.samples()

    client.puback(status.mid)
    client.puback(9_999)
    publisher.pump()
    assert spool.depth == 1
    client.puback(batch.mid)
    client.puback(batch.mid)
    publisher.pump()
    assert spool.depth == 0
    assert publisher.acked_samples == 1


def test_status_is_published_retained_at_qos_1(client: FakeClient, spool: Spool) -> None:
    publisher = make_publisher(client, spool)
    publisher.publish_status(Status(state="online", session=SESSION_A))
    [status] = client.published
    assert (status.topic, status.qos, status.retain) == (STATUS_TOPIC, 1, True)
    assert decode_status(status.payload).session == SESSION_A


def test_max_inflight_batches_is_respected(client: FakeClient, spool: Spool) -> None:
    publisher = make_publisher(client, spool, max_batch_samples=2, max_inflight_batches=3)
    client.connack()
    fill(spool, [(SESSION_A, seq) for seq in range(10)])
    assert publisher.pump() == 3
    assert [decoded(p)[1] for p in client.samples()] == [[0, 1], [2, 3], [4, 5]]
    assert publisher.pump() == 0

    client.puback(client.samples()[0].mid)
    assert publisher.pump() == 1  # one slot freed, one more batch
    assert decoded(client.samples()[-1])[1] == [6, 7]
    assert spool.depth == 8


def test_max_inflight_batches_is_respected_when_sessions_alternate(client: FakeClient, spool: Spool) -> None:
    publisher = make_publisher(client, spool, max_inflight_batches=2)
    client.connack()
    fill(spool, [(SESSION_A if seq % 2 else SESSION_B, seq) for seq in range(6)])
    publisher.pump()
    assert len(client.samples()) <= 2


def test_nothing_is_published_while_disconnected(client: FakeClient, spool: Spool) -> None:
    publisher = make_publisher(client, spool)
    client.connack()
    fill(spool, [(SESSION_A, 0)])
    publisher.pump()
    client.disconnect()
    assert not publisher.connected.is_set()
    fill(spool, [(SESSION_A, 1)])
    assert publisher.pump() == 0
    client.puback(client.samples()[0].mid)  # an ack that arrived before the connection dropped still counts
    publisher.pump()
    assert spool.depth == 1
    client.connack()
    assert publisher.pump() == 1
    assert decoded(client.samples()[-1]) == (SESSION_A, [1])  # the in-flight batch is paho's to resend
