"""A recording MQTT subscriber for tests, with a persistent session so a broker restart loses nothing."""

from __future__ import annotations

import threading
import time
import uuid

import paho.mqtt.client as paho

from common.mqtt import MqttConfig, connect, make_client


class Recorder:
    def __init__(self, config: MqttConfig, topic: str, client_id: str | None = None):
        self.topic = topic
        self.messages: list[paho.MQTTMessage] = []
        self._lock = threading.Lock()
        self.client = make_client(config, client_id or f"recorder-{uuid.uuid4().hex[:8]}", persistent_session=True)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.client.on_message = self._on_message
        connect(self.client, config, persistent_session=True, session_expiry_s=3600)
        self.client.loop_start()

    def _on_message(self, client, userdata, message: paho.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(message)

    def snapshot(self) -> list[paho.MQTTMessage]:
        with self._lock:
            return list(self.messages)

    def wait_until(self, predicate, timeout_s: float = 20.0) -> bool:
        """Poll predicate(messages) until true or the timeout passes."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if predicate(self.snapshot()):
                return True
            time.sleep(0.05)
        return predicate(self.snapshot())

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
