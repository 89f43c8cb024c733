"""Running the collector in tests: its config against local servers, a thread to run it, a publisher, and
InfluxQL read-back."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

from collector.config import CollectorConfig
from collector.service import Collector
from collector.writers import InfluxV1Writer
from common.config import toml_text
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


def publish_all(port: int, payloads: list[tuple[str, bytes]], config: MqttConfig | None = None,
                client_id: str = "test-publisher") -> list:
    """Publish at QoS 1 and wait for every acknowledgement; the MQTT 5 reason code of each (None with 3.1.1)."""
    config = config or MqttConfig(host="127.0.0.1", port=port)
    codes: dict[int, object] = {}
    client = make_client(config, client_id)
    client.on_publish = lambda c, u, mid, reason_code, properties: codes.__setitem__(mid, reason_code)
    client.connect("127.0.0.1", port)
    client.loop_start()
    infos = [client.publish(topic, payload, qos=1) for topic, payload in payloads]
    for info in infos:
        info.wait_for_publish(30)
    client.disconnect()
    client.loop_stop()
    return [codes.get(info.mid) for info in infos]


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


def write_toml(path: Path, sections: dict[str, object]) -> Path:
    """A TOML config file from {key: value, section: {key: value}}."""
    path.write_text(toml_text(sections))
    return path


def start_collector_process(config: Path, timeout_s: float = 30.0) -> subprocess.Popen:
    """`dcem-collector --config config` as a subprocess, returned once its subscription exists."""
    process = subprocess.Popen([sys.executable, "-m", "collector.cli", "--config", str(config)],
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout_s
    for log_line in process.stderr:
        if "event=mqtt-subscribed" in log_line:
            threading.Thread(target=process.stderr.read, daemon=True).start()  # keep the pipe from filling
            return process
        if time.monotonic() > deadline:
            break
    process.kill()
    raise AssertionError(f"the collector ({config}) did not subscribe; exit code {process.wait()}")
