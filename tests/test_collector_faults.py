"""Collector faults against real servers: InfluxDB down mid-run (and long enough to fill the output spool), the
collector SIGKILLed and restarted while
data keeps arriving, and the v2 write path into VictoriaMetrics. Afterwards every stored energy total and
PUE is exact (see tests/test_collector_pipeline.py for the hand-computed figures)."""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
import urllib.request

import pytest

from collector.output import SpooledOutput
from collector.service import BATCHES_PER_LOOP
from tests.servers import Mosquitto, VictoriaMetrics
from tests.site_stream import BIN_MS, DEVICES, HOSTS, HOUR_MS, messages
from tests.collector_harness import (RunningCollector, collector_config, publish_all, rows,
                                     start_collector_process, wait_for, write_toml)

pytestmark = pytest.mark.servers


def site_data(start_ms: int) -> list[tuple[str, bytes]]:
    """Half an hour of the whole site, interleaved by time as devices would send it."""
    per_device = [messages(d, f"session-{d.name}-1", start_ms, start_ms + 2 * BIN_MS) for d in DEVICES]
    return [m for step in zip(*per_device) for m in step]


def assert_exact(db, start: int) -> None:
    bins = rows(db, "SELECT pue, e_it_kwh, e_facility_kwh FROM site_metrics WHERE period='15m'")
    assert [b["time"] for b in bins] == [start, start + BIN_MS]
    for b in bins:
        assert b["pue"] == pytest.approx(1.5, rel=1e-12)
        assert b["e_it_kwh"] == pytest.approx(0.2, rel=1e-12)
        assert b["e_facility_kwh"] == pytest.approx(0.3, rel=1e-12)
    racks = rows(db, "SELECT energy_kwh FROM rack_energy WHERE host_coverage > 0")
    assert [r["energy_kwh"] for r in racks] == [pytest.approx(0.2, rel=1e-12)] * 2
    raw = rows(db, "SELECT count(server_input_w) AS n FROM host GROUP BY host")
    assert raw and raw[0]["n"] == 31  # one sample a minute for 30 minutes, both ends included


def hour_ago() -> int:
    return int(time.time() * 1000) // HOUR_MS * HOUR_MS - 2 * HOUR_MS


def test_influxdb_down_mid_run_loses_nothing(tmp_path, servers):
    broker, influx, db = servers
    start = hour_ago()
    data = site_data(start)
    third = len(data) // 3
    running = RunningCollector(collector_config(tmp_path, broker, influx))
    try:
        publish_all(broker.port, data[:third])
        assert wait_for(lambda: running.collector.stats["messages"] >= third)
        influx.stop()
        publish_all(broker.port, data[third:2 * third])
        assert wait_for(lambda: running.collector.output.stats().backlog_batches > 0)
        influx.start()
        publish_all(broker.port, data[2 * third:])
        assert wait_for(lambda: running.collector.stats["messages"] >= len(data)
                        and running.collector.output.stats().backlog_batches == 0, timeout_s=60)
        assert wait_for(lambda: len(rows(db, "SELECT pue FROM site_metrics WHERE period='15m' AND pue_status='ok'")) == 2)
    finally:
        running.close()
    assert_exact(db, start)


def test_influxdb_down_until_the_output_spool_fills_refuses_no_batch_and_loses_nothing(tmp_path, servers,
                                                                                      monkeypatch):
    """The collector stops taking messages while the spool still has room for everything one loop writes after
    its flush (held rack lines, site metrics, alerts, stats): no batch is ever refused and dropped, the
    messages wait at the broker, and once InfluxDB is back every total is exact."""
    broker, influx, db = servers
    start = hour_ago()
    data = site_data(start)
    refused: list[str] = []
    taken_by_spool = SpooledOutput.enqueue

    def enqueue(output: SpooledOutput, lines: list[str]) -> bool:
        taken = taken_by_spool(output, lines)
        if not taken:
            refused.append(lines[0])
        return taken

    monkeypatch.setattr(SpooledOutput, "enqueue", enqueue)
    config = collector_config(tmp_path, broker, influx)
    config = config.model_copy(update={
        "state": config.state.model_copy(update={"output_spool_max_batches": 12}),
        "report": config.report.model_copy(update={"metrics_interval_s": 0.05, "stats_interval_s": 0.05})})
    influx.stop()
    running = RunningCollector(config)
    output = running.collector.output
    try:
        for i in range(0, len(data), 4):  # many small flushes
            publish_all(broker.port, data[i:i + 4])
            time.sleep(0.02)
        assert wait_for(lambda: output.free_batches < BATCHES_PER_LOOP)
        counts = [running.collector.stats["messages"]]
        while len(counts) < 2 or counts[-1] != counts[-2]:  # the last flush before the stop has finished
            time.sleep(0.2)
            counts.append(running.collector.stats["messages"])
        handled = counts[-1]
        time.sleep(1.0)  # twenty metrics and stats rounds due: none may run while the intake is stopped
        assert running.collector.stats["messages"] == handled < len(data)
        assert output.free_batches >= 0 and output.stats().dropped_batches == 0
        influx.start()
        assert wait_for(lambda: running.collector.stats["messages"] >= len(data)
                        and output.stats().backlog_batches == 0, timeout_s=60)
        assert wait_for(lambda: len(rows(db, "SELECT pue FROM site_metrics WHERE period='15m' AND pue_status='ok'")) == 2)
    finally:
        running.close()
    assert refused == []
    assert_exact(db, start)


def write_config(config, path):
    return write_toml(path, {
        "site_config": config.site_config,
        "mqtt": {"host": "127.0.0.1", "port": config.mqtt.port},
        "influx": {"api": "v1", "url": config.influx.url, "database": "dcem"},
        "state": {"folder": config.state.folder},
        "ingest": {"flush_interval_s": 0.05},
        "report": {"metrics_interval_s": 0.5},
    })


def test_collector_killed_and_restarted_while_agents_publish_counts_everything_once(tmp_path, servers):
    broker, influx, db = servers
    start = hour_ago()
    data = site_data(start)
    config_path = write_config(collector_config(tmp_path, broker, influx), tmp_path / "collector.toml")
    first = start_collector_process(config_path)  # its session and subscription exist from here on

    publisher = threading.Thread(target=lambda: [publish_all(broker.port, data[i:i + 8]) or time.sleep(0.05)
                                                 for i in range(0, len(data), 8)])
    publisher.start()
    time.sleep(0.6)
    first.kill()  # SIGKILL mid-stream: whatever it had not acknowledged, the broker sends again
    first.wait()
    publisher.join(60)
    second = start_collector_process(config_path)
    try:
        ok = wait_for(lambda: len(rows(db, "SELECT pue FROM site_metrics WHERE period='15m' AND pue_status='ok'")) == 2
                      and rows(db, "SELECT count(server_input_w) AS n FROM host")[0]["n"] == 31 * len(HOSTS),
                      timeout_s=60)
        time.sleep(1.0)  # a last metrics round after the final messages
    finally:
        second.terminate()
        second.wait(30)
    assert ok, (rows(db, "SELECT pue_status, e_it_kwh FROM site_metrics WHERE period='15m' AND e_it_kwh > 0"),
                [rows(db, f"SELECT count(server_input_w) AS n FROM host WHERE host='{h.name}'") for h in HOSTS],
                rows(db, "SELECT * FROM meter_energy"), rows(db, "SELECT * FROM rack_energy"))
    assert_exact(db, start)


def test_v2_write_path_into_victoria_metrics(tmp_path):
    broker, vm = Mosquitto(tmp_path / "broker"), VictoriaMetrics(tmp_path / "vm")
    broker.start()
    vm.start()
    try:
        config = collector_config(tmp_path, broker, vm)
        config = config.model_copy(update={"influx": config.influx.model_validate(
            {"api": "v2", "url": vm.url, "org": "dc", "bucket": "dcem", "token": "unused-by-victoria-metrics"})})
        running = RunningCollector(config)
        start = hour_ago()
        try:
            publish_all(broker.port, site_data(start))

            def exported():
                vm.force_flush()
                query = urllib.parse.urlencode({"match[]": 'site_metrics_pue{period="15m"}'})
                with urllib.request.urlopen(f"{vm.url}/api/v1/export?{query}", timeout=5) as response:
                    return [json.loads(text) for text in response.read().decode().splitlines()]

            series = wait_for(lambda: (s := exported()) and len(s[0]["values"]) == 2 and s)
        finally:
            running.close()
        assert series[0]["metric"]["site"] == "dc1"
        assert series[0]["timestamps"] == [start, start + BIN_MS]
        assert series[0]["values"] == [pytest.approx(1.5, rel=1e-11)] * 2
    finally:
        broker.stop()
        vm.stop()
