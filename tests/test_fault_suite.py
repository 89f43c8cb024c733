"""The fault suite: six simulated hours of a site, a real agent, and every fault the product must survive, in one run.

Real mosquitto (password file and per-host ACL), real influxd, dcem-collector and dcem-agent as processes; the
site's meters are served over Modbus TCP and read by the meter gateway's code, one simulated instant at a time,
interleaved with the hosts' messages (simulator/modbus.py). Injected,
in this order: a broker restart while the real agent is SIGKILLed during the outage; InfluxDB down while data
keeps coming; the collector SIGKILLed mid-stream and restarted; duplicated and reordered deliveries; a host whose
clock is 10 minutes ahead of the others; a batch from beyond the collector's future limit; a flood of malformed
messages from one client; a client with valid credentials publishing into another host's topic.

Afterwards: every stored 15-minute PUE, green ratio, CUE and facility energy equals the simulator's ground truth
(as the meters' registers hold it),
the simulated racks' energy equals the truth's IT energy, the real agent's energy equals what it measured (every
sequence number arrived), every bad message is counted by its reason, the broker refused every intruding
publish, and neither process crashed. The figures are printed and recorded in docs/reliability.md.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter

import pytest
import yaml

from collector.writers import InfluxV1Writer
from common.contract import (Component, Method, Reading, Sample, SampleBatch, encode, subscription,
                             SAMPLES_CHANNEL)
from common.mqtt import MqttConfig
from agent.gateway.config import GatewayConfig
from simulator.cli import DEFAULT_SCENARIO
from simulator.modbus import LockstepGateway, MeterServer, gateway_config, host_messages, register_steps
from simulator.modbus import registered_truth
from simulator.scenario import load_scenario, start_ms
from simulator.site_config import site_config
from tests.agent_process import AgentProcess, write_agent_config
from tests.collector_harness import publish_all, rows, start_collector_process, wait_for, write_toml
from tests.servers import Influxd, Mosquitto, add_mqtt_user, free_port
from tests.subscriber import Recorder
from tests.test_simulator_collector import assert_stored_bins_equal

pytestmark = pytest.mark.servers

ROUNDING = 1e-9
SKEWED_HOST = "hall-b-r01-h01"
SKEW_MS = 10 * 60_000
USERS = ("collector", "simulator", "auditor", "meter-gateway", "h-real", "h-flood")
ACL = """user collector
topic read dcem/#
topic write dcem/deadletter/#
topic write dcem/v1/alerts/#

user auditor
topic read dcem/#

user simulator
topic write dcem/v1/#

user meter-gateway
topic write dcem/v1/dc1/facility/#

pattern write dcem/v1/+/+/+/%u/#
"""


def credentials(port: int, user: str) -> MqttConfig:
    return MqttConfig(host="127.0.0.1", port=port, username=user, password=f"secret-{user}")


def skewed(message) -> tuple[str, bytes]:
    """The message as a host whose clock runs 10 minutes ahead would send it."""
    if f"/{SKEWED_HOST}/" not in message.topic:
        return message.topic, message.payload
    body = json.loads(message.payload)
    for sample in body["samples"]:
        sample["ts_ms"] += SKEW_MS
    return message.topic, json.dumps(body, separators=(",", ":")).encode()


def flood(topic: str, now_ms: int) -> tuple[list[tuple[str, bytes]], Counter]:
    """Bad messages from one client into its own topic, and the reason the collector must give each."""
    def batch(session: str, seq: int, ts_ms: int, energy_j: float) -> bytes:
        reading = Reading(component=Component.SERVER_INPUT, id="input", method=Method.MODEL, power_w=100.0,
                          energy_j=energy_j)
        return encode(SampleBatch(kind="host", session=session, samples=[
            Sample(seq=seq, ts_ms=ts_ms, interval_s=1.0, readings=[reading])]))

    valid = batch("flood-template", 0, now_ms, 0.0).decode()
    kinds = {
        "malformed-json": (200, lambda i: b'{"v":1,"kind":"host",' + str(i).encode()),
        "not-finite": (100, lambda i: valid.replace('"interval_s":1.0', '"interval_s":NaN').encode()),
        "out-of-range": (100, lambda i: valid.replace('"power_w":100.0', '"power_w":-5.0').encode()),
        "schema": (100, lambda i: valid.replace('"seq":0', '"seq":"zero"').encode()),
        "unsupported-version": (50, lambda i: valid.replace('"v":1', '"v":2').encode()),
        "oversized": (2, lambda i: b" " * 300_000),
        "future-timestamp": (10, lambda i: batch(f"flood-future-{i:04d}", 0, now_ms + SKEW_MS, 0.0)),
    }
    payloads, expected = [], Counter()
    for reason, (count, make) in kinds.items():
        payloads += [(topic, make(i)) for i in range(count)]
        expected[reason] = count
    for i in range(20):  # a counter going back within one session: the first point is fine, the second is not
        start = now_ms - 3_600_000 + i * 10_000
        payloads += [(topic, batch(f"flood-backwards-{i:04d}", 0, start, 5000.0)),
                     (topic, batch(f"flood-backwards-{i:04d}", 1, start + 1000, 100.0))]
    expected["counter-backwards"] = 20
    return payloads, expected


def agent_energy_j(agents: list[AgentProcess]) -> float:
    """What the real agent measured: per process (one session each), last minus first server-input counter."""
    total = 0.0
    for agent in agents:
        counters = [r["energy_j"] for s in agent.samples for r in s["readings"] if r["component"] == "server-input"]
        total += counters[-1] - counters[0]
    return total


def test_nothing_is_lost_or_counted_twice_through_every_fault(tmp_path, capsys):
    passwords = tmp_path / "passwd"
    for user in USERS:
        add_mqtt_user(passwords, user, f"secret-{user}")
    (tmp_path / "acl").write_text(ACL)
    broker = Mosquitto(tmp_path / "broker", password_file=passwords, acl_file=tmp_path / "acl")
    influx = Influxd(tmp_path / "influxd")
    broker.start()
    influx.start()
    db = InfluxV1Writer(influx.url, "dcem")
    db.query("CREATE DATABASE dcem")

    scenario = load_scenario(DEFAULT_SCENARIO).model_copy(update={"site": "dc1", "duration_h": 6.0, "step_s": 300})
    # the day ends at least 30 minutes ago, so the host 10 minutes ahead stays within limits.max_future_s
    begin = start_ms(scenario, int(time.time() * 1000) - 30 * 60_000)
    gateway_settings = gateway_config(scenario, free_port(), broker=("127.0.0.1", broker.port))
    gateway_settings["mqtt"].update(username="meter-gateway", password="secret-meter-gateway")
    gateway_settings = GatewayConfig.model_validate(gateway_settings)
    register_map = gateway_settings.meters[0].register_map()
    truth = registered_truth(scenario, begin, register_map)
    sites = site_config(scenario)
    hall_a = next(room for room in sites["sites"][0]["rooms"] if room["id"] == "hall-a")
    hall_a["racks"] += [{"id": "agents", "hosts": ["h-real", "h-other"]}, {"id": "flood", "hosts": ["h-flood"]}]
    site_yaml = tmp_path / "site.yaml"
    site_yaml.write_text(yaml.safe_dump(sites))
    collector_toml = write_toml(tmp_path / "collector.toml", {
        "site_config": site_yaml,
        "mqtt": {"host": "127.0.0.1", "port": broker.port, "username": "collector", "password": "secret-collector"},
        "influx": {"api": "v1", "url": influx.url, "database": "dcem"},
        "state": {"folder": tmp_path / "collector"},
        "ingest": {"flush_interval_s": 0.05, "dead_letter_per_s": 10_000},
        "report": {"metrics_interval_s": 0.5, "stats_interval_s": 0.5},
    })
    agent_toml = write_agent_config(tmp_path / "agent", broker.port, host="h-real", rack="agents", interval_s=0.2,
                                    publish_interval_s=0.4,
                                    mqtt_extra='username = "h-real"\npassword = "secret-h-real"')
    hosts_by_instant: dict[int, list[tuple[str, bytes]]] = {}
    for message in host_messages(scenario, begin):
        hosts_by_instant.setdefault(message.ts_ms, []).append(skewed(message))
    instants = sorted(hosts_by_instant)
    parts = [instants[len(instants) * k // 5:len(instants) * (k + 1) // 5] for k in range(5)]
    chunks = [[m for t in part for m in hosts_by_instant[t]] for part in parts]
    simulator = credentials(broker.port, "simulator")
    server = MeterServer(gateway_settings.meters[0].port, [m.unit_id for m in gateway_settings.meters], register_map)
    gateway = LockstepGateway(gateway_settings, server, register_steps(scenario, begin, register_map))
    auditor = Recorder(credentials(broker.port, "auditor"), subscription(SAMPLES_CHANNEL), client_id="auditor")
    def send(payloads, who=simulator, client_id="simulator"):
        return publish_all(broker.port, payloads, who, client_id)

    def send_part(k: int) -> None:
        """The meters read over Modbus at each instant of part k, then the hosts' messages of those instants."""
        for instant in parts[k]:
            gateway.advance(instant)
        send(chunks[k])

    def last_stats() -> dict:
        found = rows(db, "SELECT * FROM collector_stats ORDER BY time DESC LIMIT 1")
        return found[0] if found else {}

    collectors = [start_collector_process(collector_toml)]
    agents = [AgentProcess(agent_toml)]
    try:
        send_part(0)
        time.sleep(1.0)  # the agent has sent some samples
        broker.stop()  # 1. broker restart; the agent spools meanwhile and is SIGKILLed during the outage
        time.sleep(1.0)
        agents[0].kill()
        broker.start()
        agents.append(AgentProcess(agent_toml))
        send_part(1)

        influx.stop()  # 2. InfluxDB down while data keeps coming
        send_part(2)
        time.sleep(1.0)

        publisher = threading.Thread(target=send_part, args=(3,))  # 3. collector SIGKILLed mid-stream
        publisher.start()
        time.sleep(0.3)
        collectors[0].kill()
        publisher.join(120)
        influx.start()
        collectors.append(start_collector_process(collector_toml))

        duplicates = random.Random(7).sample(chunks[0] + chunks[1], k=len(chunks[0]))  # 4. duplicated, reordered
        send(duplicates, client_id="duplicator")
        bad, expected_rejections = flood("dcem/v1/dc1/hall-a/flood/h-flood/samples", int(time.time() * 1000))
        send(bad, credentials(broker.port, "h-flood"), "h-flood")  # 5. a flood from one client
        intruding = [("dcem/v1/dc1/hall-a/agents/h-other/samples", p) for _, p in bad[-40:]]
        codes = send(intruding, credentials(broker.port, "h-real"), "intruder")  # 6. another host's topic
        send_part(4)
        unsent_meter_samples = gateway.close()
        time.sleep(1.0)
        assert agents[1].stop() == 0

        final_query = f"SELECT * FROM site_metrics WHERE period='15m' AND pue_status='ok' AND time >= {begin}ms"
        agent_j = agent_energy_j(agents)
        counted = wait_for(lambda: len(rows(db, final_query)) == len(truth["bins"])
                           and rows(db, "SELECT sum(energy_kwh) FROM rack_energy WHERE rack='agents'")[0]["sum"]
                           == pytest.approx(agent_j / 3.6e6, rel=1e-9)
                           and last_stats().get("rejected") == sum(expected_rejections.values()),
                           timeout_s=120)
        time.sleep(1.0)  # one more metrics round
        stats = last_stats()
        stored = rows(db, final_query)
        simulated_it = rows(db, "SELECT sum(energy_kwh) FROM rack_energy WHERE rack != 'agents' AND rack != 'flood'")
        agent_kwh = rows(db, "SELECT sum(energy_kwh) FROM rack_energy WHERE rack='agents'")[0]["sum"]
        progress = (stats, len(rows(db, final_query)), len(truth["bins"]), agent_j / 3.6e6,
                    rows(db, "SELECT sum(energy_kwh) FROM rack_energy WHERE rack='agents'"))
    finally:
        for agent in agents:
            if agent.process.poll() is None:
                agent.kill()
        for process in collectors:
            if process.poll() is None:
                process.terminate()
        exit_codes = [process.wait(30) for process in collectors]
        auditor.client.disconnect()
        server.close()
        broker.stop()
        influx.stop()

    assert counted, progress
    assert exit_codes == [-9, 0]  # killed once on purpose, then a clean stop: no crash
    assert unsent_meter_samples == 0
    assert_stored_bins_equal(stored, {b["start_ms"]: b for b in truth["bins"]})
    assert simulated_it[0]["sum"] == pytest.approx(truth["run"]["e_it_kwh"], rel=ROUNDING)
    assert agent_kwh == pytest.approx(agent_j / 3.6e6, rel=ROUNDING)
    agent_topic = "dcem/v1/dc1/hall-a/agents/h-real/samples"
    delivered = {}
    for message in auditor.snapshot():
        if message.topic == agent_topic:
            body = json.loads(message.payload)
            delivered.setdefault(body["session"], set()).update(s["seq"] for s in body["samples"])
    assert [sorted(seqs) == list(range(len(seqs))) for seqs in delivered.values()] == [True, True]
    assert sum(len(seqs) for seqs in delivered.values()) == sum(len(a.samples) for a in agents)
    rejected = {key.removeprefix("rejected_").replace("_", "-"): value for key, value in stats.items()
                if key.startswith("rejected_") and value}
    assert rejected == dict(expected_rejections)
    assert (stats["set_aside_batches"], stats["dropped_batches"]) == (0, 0)  # InfluxDB's outage cost no batch
    assert [getattr(code, "value", None) for code in codes] == [135] * len(intruding)  # not authorized
    assert not any("/h-other/" in m.topic for m in auditor.snapshot())
    figures = {
        "simulated_host_messages": sum(len(c) for c in chunks), "meters_read_over_modbus":
            len(instants) * len(gateway_settings.meters), "duplicates_sent": len(duplicates),
        "agent_samples": sum(len(a.samples) for a in agents), "agent_samples_delivered":
            sum(len(s) for s in delivered.values()), "flood_messages": len(bad),
        "intruder_publishes_refused_by_broker": len(intruding), "delivered_to_collector_topics":
            sum(1 for m in auditor.snapshot()), **{f"rejected_{k}": v for k, v in sorted(rejected.items())},
        "duplicate_samples_ignored": stats.get("duplicates"),
        "late_samples_already_counted": stats.get("refinements_ignored"), "lost": 0,
    }
    with capsys.disabled():
        print("\nFAULT-SUITE " + " ".join(f"{k}={v}" for k, v in figures.items()))
