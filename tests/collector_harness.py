"""Running the collector in tests: its config against local servers, a thread to run it, a publisher, and
InfluxQL read-back."""

from __future__ import annotations

import threading
import time

from collector.config import CollectorConfig
from collector.service import Collector
from collector.writers import InfluxV1Writer
from common.mqtt import MqttConfig, make_client
from tests.site_stream import write_site_config


def collector_config(tmp_path, broker, influx, **ingest) -> CollectorConfig:
    return CollectorConfig.model_validate({
        "site_config": str(write_site_config(tmp_path / "site")),
        "mqtt": {"host": "127.0.0.1", "port": broker.port},
        "influx": {"api": "v1", "url": influx.url, "database": "dcem"},
        "state": {"folder": str(tmp_path / "state")},
        "ingest": {"flush_interval_s": 0.05, **ingest},
        "report": {"metrics_interval_s": 0.5},
    })


class RunningCollector:
    def __init__(self, config: CollectorConfig):
        self.collector = Collector(config)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.collector.run, args=(self.stop,), daemon=True)
        self.thread.start()
        assert self.collector.connected.wait(10)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(30)


def publish_all(port: int, payloads: list[tuple[str, bytes]]) -> None:
    client = make_client(MqttConfig(host="127.0.0.1", port=port), "test-publisher")
    client.connect("127.0.0.1", port)
    client.loop_start()
    infos = [client.publish(topic, payload, qos=1) for topic, payload in payloads]
    for info in infos:
        info.wait_for_publish(10)
    client.disconnect()
    client.loop_stop()


def rows(db: InfluxV1Writer, query: str) -> list[dict]:
    result = db.query(query)["results"][0]
    if "series" not in result:
        return []
    series = result["series"][0]
    return [dict(zip(series["columns"], values)) for values in series["values"]]


def wait_for(predicate, timeout_s: float = 20.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    return predicate()
