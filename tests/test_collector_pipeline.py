"""The collector end to end: real mosquitto, real influxd 1.6.7 (v1 API, read back with InfluxQL).

The site draws constant power (tests/site_stream.py): IT 500 W + 300 W = 800 W from two hosts' estimates,
grid 900 W, PV 300 W behind the utility meter. Per 15-minute bin (0.25 h):
  E_IT = 0.8 kW x 0.25 h = 0.2 kWh; E_facility = (0.9 + 0.3) x 0.25 = 0.3 kWh; PUE = 0.3 / 0.2 = 1.5
  green = PV 0.075 kWh -> ratio 0.25; grid 0.225 kWh x 0.5271 (Central 2023) = 0.1185975 kg -> CUE 0.5929875
  market: 0.225 x 0.6096 (national residual 2023) = 0.13716 kg -> CUE 0.6858
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import paho.mqtt.client as paho
import pytest

from common.mqtt import MqttConfig, make_client
from collector.service import Collector
from tests.collector_harness import RunningCollector, collector_config, publish_all, rows, wait_for
from tests.site_stream import BIN_MS, DEVICES, HOUR_MS, messages

pytestmark = pytest.mark.servers


def half_hour_of_site_data(start_ms: int) -> list[tuple[str, bytes]]:
    return [m for device in DEVICES for m in messages(device, f"session-{device.name}-1", start_ms, start_ms + 2 * BIN_MS)]


def test_stored_pue_cue_and_green_ratio_equal_the_hand_computed_ones(tmp_path, servers):
    broker, influx, db = servers
    start = int(time.time() * 1000) // HOUR_MS * HOUR_MS - 2 * HOUR_MS
    running = RunningCollector(collector_config(tmp_path, broker, influx))
    try:
        publish_all(broker.port, half_hour_of_site_data(start))
        query = "SELECT * FROM site_metrics WHERE period='15m' AND pue_status='ok'"
        found = wait_for(lambda: len(rows(db, query)) == 2 and rows(db, query))
    finally:
        running.close()
    assert found, rows(db, "SELECT * FROM site_metrics")
    for row in found:
        assert row["time"] in (start, start + BIN_MS)
        assert row["e_it_kwh"] == pytest.approx(0.2, rel=1e-12)
        assert row["e_facility_kwh"] == pytest.approx(0.3, rel=1e-12)
        assert row["pue"] == pytest.approx(1.5, rel=1e-12)
        assert row["pue_category"] == "estimated"
        assert row["green_ratio"] == pytest.approx(0.25, rel=1e-12)
        assert row["cue_location"] == pytest.approx(0.5929875, rel=1e-12)
        assert row["cue_market"] == pytest.approx(0.6858, rel=1e-12)
        assert row["grid_factor_year"] == 2023 and row["grid_region"] == "central"
    hour = rows(db, f"SELECT pue, coverage, bins_complete FROM site_metrics WHERE period='1h' AND time = {start}ms")
    assert hour[0]["pue"] == pytest.approx(1.5) and hour[0]["bins_complete"] == 2 and hour[0]["coverage"] == 0.5
    racks = rows(db, "SELECT energy_kwh, host_coverage FROM rack_energy WHERE host_coverage > 0")
    assert [r["energy_kwh"] for r in racks] == [pytest.approx(0.2), pytest.approx(0.2)]
    assert all(r["host_coverage"] == pytest.approx(1.0) for r in racks)
    stats = rows(db, "SELECT last(accepted) AS accepted, last(rejected) AS rejected FROM collector_stats")
    assert stats[0]["rejected"] == 0


@pytest.fixture
def dead_letters(servers) -> Iterator[list[paho.MQTTMessage]]:
    """The dead letters the collector republishes, as they arrive (subscribed before the test starts)."""
    port = servers[0].port
    received: list[paho.MQTTMessage] = []
    subscribed = threading.Event()
    watcher = make_client(MqttConfig(host="127.0.0.1", port=port), "dead-letter-watcher")
    watcher.on_message = lambda c, u, m: received.append(m)
    watcher.on_subscribe = lambda *_args: subscribed.set()
    watcher.connect("127.0.0.1", port)
    watcher.subscribe("dcem/deadletter/#", qos=0)
    watcher.loop_start()
    assert subscribed.wait(10)
    yield received
    watcher.loop_stop()
    watcher.disconnect()


def test_bad_messages_are_rejected_by_reason_and_dead_lettered(tmp_path, servers, dead_letters):
    broker, influx, db = servers
    now = int(time.time() * 1000)
    running = RunningCollector(collector_config(tmp_path, broker, influx))
    host = DEVICES[0]
    good_topic, good_payload = messages(host, "session-good-1", now - 60_000, now - 60_000)[0]
    bad = [
        (good_topic, b"{not json"),
        (good_topic, good_payload.replace(b'"power_w":500.0', b'"power_w":NaN')),
        (good_topic, good_payload.replace(b'"power_w":500.0', b'"power_w":9e9')),
        ("dcem/v1/nowhere/hall-a/r01/h01/samples", good_payload),
        ("dcem/v1/dc1/hall-a/r01/h99/samples", good_payload),
        (good_topic, messages(host, "session-future-1", now + 3_600_000, now + 3_600_000)[0][1]),
    ]
    try:
        publish_all(broker.port, bad)
        assert wait_for(lambda: len(dead_letters) == len(bad))
        assert wait_for(lambda: sum(running.collector.ingest.rejected.values()) == len(bad))
    finally:
        running.close()
    assert dict(running.collector.ingest.rejected) == {
        "malformed-json": 1, "not-finite": 1, "absurd-power": 1, "unknown-site": 1, "unknown-device": 1,
        "future-timestamp": 1}
    assert {m.topic.rsplit("/", 1)[1] for m in dead_letters} == set(running.collector.ingest.rejected)
    assert rows(db, "SELECT * FROM host") == []


def test_rejections_are_logged_once_per_reason_and_dead_letters_capped_per_second(tmp_path, servers, dead_letters, caplog):
    broker, influx, _db = servers
    now = int(time.time() * 1000)
    running = RunningCollector(collector_config(tmp_path, broker, influx, dead_letter_per_s=3))
    topic, payload = messages(DEVICES[0], "session-flood-1", now - 60_000, now - 60_000)[0]
    flood = [(topic, b"{not json")] * 40 + [(topic, payload.replace(b'"power_w":500.0', b'"power_w":NaN'))] * 10
    began = time.monotonic()
    try:
        publish_all(broker.port, flood)
        assert wait_for(lambda: running.collector.stats["messages"] == len(flood))
        seconds = time.monotonic() - began
        dropped = running.collector.stats["dead_letters_dropped"]
        assert wait_for(lambda: len(dead_letters) + dropped == len(flood))
    finally:
        running.close()
    assert dict(running.collector.ingest.rejected) == {"malformed-json": 40, "not-finite": 10}
    assert 3 <= len(dead_letters) <= 3 * (int(seconds) + 2)  # 3 a second, in the seconds the flood took
    logged = [r.fields["reason"] for r in caplog.records if r.getMessage() == "message-rejected"]
    assert sorted(logged) == ["malformed-json", "not-finite"]  # once per reason, not once per message


class FailingIngest:
    """The collector's Ingest, raising for one topic: an error no validation foresaw (a bug)."""

    def __init__(self, ingest, failing_topic: str):
        self._ingest, self._failing_topic = ingest, failing_topic

    def __getattr__(self, name: str):
        return getattr(self._ingest, name)

    def handle(self, topic: str, payload: bytes, now_ms: int, retained: bool = False):
        if topic == self._failing_topic:
            raise RuntimeError("injected failure")
        return self._ingest.handle(topic, payload, now_ms, retained)


def test_a_message_whose_handling_raises_is_dead_lettered_as_internal_error_and_the_rest_goes_on(tmp_path, servers,
                                                                                               dead_letters, caplog):
    broker, influx, db = servers
    now = int(time.time() * 1000)
    running = RunningCollector(collector_config(tmp_path, broker, influx))
    good, failing = (messages(host, f"session-{host.name}-1", now - 60_000, now - 60_000)[0] for host in DEVICES[:2])
    running.collector.ingest = FailingIngest(running.collector.ingest, failing[0])
    try:
        publish_all(broker.port, [failing, good])
        assert wait_for(lambda: len(dead_letters) == 1 and running.collector.stats["messages"] == 2)
        assert wait_for(lambda: rows(db, "SELECT count(server_input_w) AS n FROM host") == [{"time": 0, "n": 1}])
        assert running.thread.is_alive()
    finally:
        running.close()
    assert dict(running.collector.ingest.rejected) == {"internal-error": 1}
    assert dead_letters[0].topic.endswith("/internal-error")
    assert [r.fields["error"] for r in caplog.records if r.getMessage() == "message-not-handled"] == [
        "RuntimeError('injected failure')"]


def test_a_message_with_mqtt5_properties_takes_pahos_own_path_and_is_counted(tmp_path, servers):
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    broker, influx, _db = servers
    now = int(time.time() * 1000)
    host = DEVICES[0]
    plain = messages(host, "session-props-1", now - 120_000, now - 60_000, step_ms=60_000)
    running = RunningCollector(collector_config(tmp_path, broker, influx))
    client = make_client(MqttConfig(host="127.0.0.1", port=broker.port), "properties-publisher")
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    try:
        properties = Properties(PacketTypes.PUBLISH)
        properties.UserProperty = ("origin", "test")
        client.publish(*plain[0], qos=1, properties=properties).wait_for_publish(10)
        client.publish(*plain[1], qos=1).wait_for_publish(10)
        assert wait_for(lambda: running.collector.ingest.outcomes["new"] == 2)
    finally:
        client.disconnect()
        client.loop_stop()
        running.close()
    assert sum(running.collector.ingest.rejected.values()) == 0



def hold_back_half_an_hour(collector: Collector) -> dict:
    """Account half an hour of the site in a flush that held its rack and meter lines back (the collector was
    behind), saved as unwritten; returns the accumulators it changed."""
    now_ms = int(time.time() * 1000)
    for topic, payload in half_hour_of_site_data(now_ms // HOUR_MS * HOUR_MS - 2 * HOUR_MS):
        assert collector.ingest.handle(topic, payload, now_ms) is None
    changed = collector.book.take_dirty()
    collector.reporter.accumulator_lines({}, now_s=100.0, hold_s=10.0)  # lines were written just now
    assert collector.reporter.accumulator_lines(changed, now_s=101.0, hold_s=10.0) == []  # held: behind
    collector.store.save(collector.book.take_new_points(), changed, lines_written=False)
    return changed


def test_lines_held_while_behind_are_written_when_no_flush_comes(tmp_path, servers):
    """A burst ends on a flush that held its rack and meter lines back: the next metrics round (or the stop)
    writes them and marks them written, without waiting for another message."""
    broker, influx, db = servers
    collector = Collector(collector_config(tmp_path, broker, influx))
    changed = hold_back_half_an_hour(collector)
    collector.write_held_lines()
    assert not collector.reporter.holding
    queued = b"\n".join(body for _, body in collector.output._spool.peek(100)).decode().splitlines()
    held = [key for key in changed if key[0] in ("rack", "meter")]
    room_bins = {(key[1], key[2], key[-1]) for key in held if key[0] == "rack"}  # one room line per room and bin
    assert len(queued) == len(held) + len(room_bins)
    assert {line.split(",")[0] for line in queued} == {"rack_energy", "room_energy", "meter_energy"}
    collector.store.close()
    restarted = Collector(collector_config(tmp_path, broker, influx))
    assert not restarted.reporter.holding  # nothing comes back as unwritten
    restarted.store.close()


def test_held_lines_the_full_spool_refuses_stay_held_in_memory_and_in_the_state(tmp_path, servers):
    broker, influx, _db = servers
    config = collector_config(tmp_path, broker, influx)
    config = config.model_copy(update={"state": config.state.model_copy(update={"output_spool_max_batches": 10})})
    collector = Collector(config)  # not running: nothing drains the spool
    hold_back_half_an_hour(collector)
    held = set(collector.book.unwritten)
    assert held and all(collector.output.enqueue([f"filler v={i}i {i}"]) for i in range(10))
    collector.write_held_lines()  # refused: the spool is full
    assert collector.book.unwritten == held
    collector.store.close()
    restarted = Collector(config)
    # the state still has them as unwritten (with the site's host totals of their epoch, which have no line)
    assert {key for key in restarted.book.unwritten if key[0] != "hosts"} == held
    restarted.store.close()


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_handled_messages_are_acknowledged_so_a_restart_receives_none_again(tmp_path, servers, protocol):
    broker, influx, db = servers
    config = collector_config(tmp_path, broker, influx, max_batch=7)
    config = config.model_copy(update={"mqtt": config.mqtt.model_copy(update={"protocol": protocol})})
    data = half_hour_of_site_data(int(time.time() * 1000) // HOUR_MS * HOUR_MS - 2 * HOUR_MS)
    first = RunningCollector(config)
    try:
        publish_all(broker.port, data)
        assert wait_for(lambda: first.collector.stats["messages"] == len(data)), (first.collector.stats, len(data))
    finally:
        first.close()
    second = RunningCollector(config)  # the same persistent session: only unacknowledged messages would come
    try:
        publish_all(broker.port, data[:1])  # one more, so we know the session delivers
        assert wait_for(lambda: second.collector.stats["messages"] >= 1)
        time.sleep(0.5)
    finally:
        second.close()
    assert second.collector.stats["messages"] == 1
