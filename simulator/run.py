"""Publishing a run to an MQTT broker in accelerated time (QoS 1, a bounded number of unacknowledged publishes)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

import paho.mqtt.client as paho

from common.mqtt import MqttConfig, make_client
from simulator.messages import Message

DEFAULT_MAX_INFLIGHT = 100


class Pacer:
    """Real-time pacing: the message for simulated instant ts is due (ts - first_ts) / speed real seconds in."""

    def __init__(self, speed: float, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        self.speed = speed
        self.clock = clock
        self.sleep = sleep
        self._origin: tuple[float, int] | None = None

    def wait(self, ts_ms: int) -> None:
        """Sleep until ts_ms is due; speed 0 never waits."""
        if self.speed <= 0:
            return
        if self._origin is None:
            self._origin = (self.clock(), ts_ms)
        real0, ts0 = self._origin
        delay = real0 + (ts_ms - ts0) / 1000 / self.speed - self.clock()
        if delay > 0:
            self.sleep(delay)


def publish(messages: Iterable[Message], host: str, port: int, speed: float = 0.0,
            max_inflight: int = DEFAULT_MAX_INFLIGHT, client_id: str = "dcem-simulator",
            timeout_s: float = 60.0, on_instant: Callable[[int], None] | None = None) -> int:
    """Publish every message at QoS 1, paced by `speed`, at most max_inflight unacknowledged; returns the count.

    `on_instant(ts_ms)` is called once per simulated instant, when it is due and before its messages are sent
    (the Modbus mode lets the meter gateway read that instant's registers there).
    Raises TimeoutError when the broker cannot be reached or stops acknowledging.
    """
    slots = threading.BoundedSemaphore(max_inflight)
    connected = threading.Event()
    client = make_client(MqttConfig(host=host, port=port), client_id)
    client.max_inflight_messages_set(max_inflight)
    client.on_connect = lambda c, u, f, rc, p: connected.set() if not rc.is_failure else None
    client.on_publish = lambda c, u, mid, rc, p: slots.release()
    client.connect(host, port)
    client.loop_start()
    try:
        if not connected.wait(timeout_s):
            raise TimeoutError(f"no connection to the broker at {host}:{port}")
        count = _send(client, messages, Pacer(speed), slots, timeout_s, on_instant)
        _drain(slots, max_inflight, timeout_s)
    finally:
        client.disconnect()
        client.loop_stop()
    return count


def _send(client: paho.Client, messages: Iterable[Message], pacer: Pacer, slots: threading.BoundedSemaphore,
          timeout_s: float, on_instant: Callable[[int], None] | None) -> int:
    count = 0
    instant = None
    for message in messages:
        pacer.wait(message.ts_ms)
        if on_instant is not None and message.ts_ms != instant:
            instant = message.ts_ms
            on_instant(instant)
        if not slots.acquire(timeout=timeout_s):
            raise TimeoutError("the broker stopped acknowledging publishes")
        client.publish(message.topic, message.payload, qos=1)
        count += 1
    return count


def _drain(slots: threading.BoundedSemaphore, max_inflight: int, timeout_s: float) -> None:
    """Wait until every publish is acknowledged (all slots free again)."""
    for _ in range(max_inflight):
        if not slots.acquire(timeout=timeout_s):
            raise TimeoutError("publishes still unacknowledged")
