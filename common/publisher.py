"""Publishes spooled samples over MQTT at QoS 1 and removes them from the spool once the broker acks.

Used by the agent and the meter gateway. Each spool item is `session + b" " + sample JSON`; consecutive
items of one session go out as one SampleBatch message (the batch JSON is built by concatenation, so
nothing is parsed twice). A batch leaves the spool only on its PUBACK. paho resends unacknowledged QoS 1
messages itself after a reconnect, so the in-flight map survives reconnects; after a process restart the
spool is replayed from its oldest item. The collector drops duplicates by (session, seq).

paho calls on_publish from its network thread while holding its own lock, so the callback only queues the
ack; the owner's thread matches acks to batches in `pump`, which is also the only place that publishes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from itertools import groupby

import paho.mqtt.client as paho

from common.contract import MAX_PAYLOAD_BYTES, MAX_SAMPLES_PER_BATCH, PROTOCOL_VERSION, Sample, Status, encode
from common.logs import Once, event
from common.spool import Spool

log = logging.getLogger(__name__)

STATUS_INTERVAL_S = 60.0  # how often senders refresh their retained status
SHUTDOWN_FLUSH_S = 5.0  # how long a stopping sender keeps publishing its spool


def spool_item(session: str, sample: Sample) -> bytes:
    return session.encode() + b" " + sample.model_dump_json(exclude_none=True).encode()


def batch_payload(kind: str, session: str, sample_jsons: list[bytes]) -> bytes:
    """A SampleBatch JSON made from already-encoded samples."""
    head = f'{{"v":{PROTOCOL_VERSION},"kind":"{kind}","session":"{session}","samples":['.encode()
    return head + b",".join(sample_jsons) + b"]}"


class SpoolPublisher:
    def __init__(self, client: paho.Client, spool: Spool, samples_topic: str, status_topic: str, kind: str,
                 max_batch_samples: int = MAX_SAMPLES_PER_BATCH, max_inflight_batches: int = 16):
        self.client = client
        self.spool = spool
        self.samples_topic = samples_topic
        self.status_topic = status_topic
        self.kind = kind
        self.max_batch_samples = max_batch_samples
        self.max_inflight_batches = max_inflight_batches
        self.published_batches = 0
        self.acked_samples = 0
        self.connected = threading.Event()
        self._inflight: dict[int, list[int]] = {}
        self._acks: deque[tuple[int, paho.ReasonCode]] = deque()
        self._last_sent_id = 0
        self._once = Once()
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.will_set(status_topic, encode(Status(state="offline")), qos=1, retain=True)

    def pump(self, publish: bool = True) -> int:
        """Settle the acks received so far, then (if `publish`) send what the spool holds beyond what is
        in flight. Returns the number of batches sent. Call it from one thread only."""
        self._settle_acks()
        sent = 0
        while publish and self.connected.is_set() and len(self._inflight) < self.max_inflight_batches:
            items = self.spool.peek(self.max_batch_samples, after_id=self._last_sent_id)
            if not items:
                break
            sent += self._publish_items(items)
        return sent

    def publish_status(self, status: Status) -> None:
        self.client.publish(self.status_topic, encode(status), qos=1, retain=True)

    def inflight_samples(self) -> int:
        return sum(len(ids) for ids in self._inflight.values())

    def _publish_items(self, items: list[tuple[int, bytes]]) -> int:
        sent = 0
        for session, group in groupby(items, key=lambda item: item[1].split(b" ", 1)[0]):
            for ids, sample_jsons in _fitting_batches(list(group)):
                if len(self._inflight) >= self.max_inflight_batches:
                    return sent
                payload = batch_payload(self.kind, session.decode(), sample_jsons)
                info = self.client.publish(self.samples_topic, payload, qos=1)
                self._inflight[info.mid] = ids
                self._last_sent_id = ids[-1]
                self.published_batches += 1
                sent += 1
        return sent

    def _settle_acks(self) -> None:
        while self._acks:
            mid, reason_code = self._acks.popleft()
            ids = self._inflight.pop(mid, None)
            if ids is None:
                continue
            if reason_code.is_failure:
                if self._once.first(f"publish:{reason_code}"):
                    event(log, logging.ERROR, "mqtt-publish-refused", reason=str(reason_code), topic=self.samples_topic,
                          action="the broker refused these samples (check its ACL for this host's topics); "
                                 "they stay in the spool and are offered again after a restart")
                continue
            self.spool.ack(ids)
            self.acked_samples += len(ids)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            if self._once.first(f"connect:{reason_code}"):
                event(log, logging.ERROR, "mqtt-connect-refused", reason=str(reason_code),
                      action="check mqtt.username, mqtt.password and mqtt.tls against the broker's settings")
            return
        self._once.clear("disconnected")
        event(log, logging.INFO, "mqtt-connected", spool_depth=self.spool.depth)
        self.connected.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connected.clear()
        if reason_code == 0:  # we asked for it
            return
        if self._once.first("disconnected"):
            event(log, logging.WARNING, "mqtt-disconnected", reason=str(reason_code),
                  action="none: samples stay in the spool and are sent on reconnect")

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        self._acks.append((mid, reason_code))


def flush_publishers(publishers: list[SpoolPublisher], timeout_s: float = SHUTDOWN_FLUSH_S) -> None:
    """At shutdown: publish what the spools hold while the broker takes it, for at most timeout_s, then settle
    the acks that came back. What is left stays in the spools for the next start."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(p.connected.is_set() and p.spool.depth for p in publishers):
        for publisher in publishers:
            publisher.pump()
        time.sleep(0.05)
    for publisher in publishers:
        publisher.pump(publish=False)


def _fitting_batches(items: list[tuple[int, bytes]]):
    """Split items of one session into batches whose payload stays under the contract's size limit."""
    ids: list[int] = []
    jsons: list[bytes] = []
    size = 0
    budget = MAX_PAYLOAD_BYTES - 256
    for item_id, body in items:
        sample_json = body.split(b" ", 1)[1]
        if jsons and size + len(sample_json) + 1 > budget:
            yield ids, jsons
            ids, jsons, size = [], [], 0
        ids.append(item_id)
        jsons.append(sample_json)
        size += len(sample_json) + 1
    if jsons:
        yield ids, jsons
