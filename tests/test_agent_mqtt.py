"""The agent against a real mosquitto: delivery, energy, outages, SIGKILL, TLS and per-host ACL."""

from __future__ import annotations

import shutil
import threading
import time
from collections import Counter

import pytest

from agent.runner import AgentRunner
from agent.sampler import Sampler
from agent.sensors.rapl import RaplSensor
from common.contract import SAMPLES_CHANNEL, STATUS_CHANNEL, Identity, decode_batch, decode_status, subscription, topic_for
from common.mqtt import MqttConfig, TlsConfig, connect, make_client
from common.publisher import SpoolPublisher
from common.spool import Spool
from tests.agent_process import TESTDATA, AgentProcess, write_agent_config
from tests.servers import Mosquitto, add_mqtt_user, make_test_ca
from tests.subscriber import Recorder

pytestmark = pytest.mark.servers

SAMPLES = subscription(SAMPLES_CHANNEL)


def received_samples(messages) -> list[tuple[str, dict]]:
    """(session, sample) for every sample in every batch received, in arrival order."""
    found = []
    for message in messages:
        batch = decode_batch(message.payload)
        found += [(batch.session, sample.model_dump()) for sample in batch.samples]
    return found


@pytest.fixture
def broker(tmp_path):
    server = Mosquitto(tmp_path / "broker")
    server.start()
    yield server
    server.stop()


def test_samples_arrive_with_exact_energy_deltas(tmp_path, broker):
    powercap = tmp_path / "powercap"
    shutil.copytree(TESTDATA / "powercap" / "near-wrap", powercap)
    energy_file = next(powercap.glob("intel-rapl:0/energy_uj"))
    max_range = int(next(powercap.glob("intel-rapl:0/max_energy_range_uj")).read_text())
    step_uj = 150_000_000  # 150 J per simulated second: 150 W
    clock = iter(float(i) for i in range(1000))
    sensor = RaplSensor.open(powercap, max_power_w=500, sample_interval_s=1.0)
    sampler = Sampler([sensor], host=None, overhead_w=60.0, psu_efficiency=0.9,
                      wall_ms=lambda: int(time.time() * 1000), monotonic_s=lambda: next(clock))

    def advance_counter(_sample) -> None:
        energy_file.write_text(str((int(energy_file.read_text()) + step_uj) % (max_range + 1)))

    config = MqttConfig(host="127.0.0.1", port=broker.port)
    recorder = Recorder(config, SAMPLES)
    client = make_client(config, "agent-under-test")
    identity = Identity(site="dc1", room="hall-a", rack="r01", device="h01")
    spool = Spool(tmp_path / "spool.db", 1000)
    publisher = SpoolPublisher(client, spool, topic_for(identity, SAMPLES_CHANNEL), topic_for(identity, STATUS_CHANNEL),
                               kind="host")
    connect(client, config)
    client.loop_start()
    assert publisher.connected.wait(10)
    AgentRunner(sampler, spool, publisher, interval_s=0.01, publish_interval_s=0.05,
                on_sample=advance_counter).run(threading.Event(), max_samples=20)
    client.disconnect()
    client.loop_stop()

    assert recorder.wait_until(lambda m: len(received_samples(m)) >= 20)
    samples = [sample for _, sample in received_samples(recorder.snapshot())]
    assert [s["seq"] for s in samples] == list(range(20))
    package = [next(r for r in s["readings"] if r["component"] == "cpu-package") for s in samples]
    server = [next(r for r in s["readings"] if r["component"] == "server-input") for s in samples]
    assert [r["energy_j"] for r in package] == [150.0 * i for i in range(20)]  # wrapped once on the way
    assert all(r["power_w"] == pytest.approx(150.0) for r in package[1:])
    assert all(r["power_w"] == pytest.approx((150.0 + 60.0) / 0.9) for r in server[1:])
    assert server[-1]["energy_j"] == pytest.approx(19 * (150.0 + 60.0) / 0.9)
    assert spool.depth == 0
    recorder.close()


def test_broker_restart_loses_nothing(tmp_path, broker):
    recorder = Recorder(MqttConfig(host="127.0.0.1", port=broker.port), SAMPLES, client_id="restart-recorder")
    agent = AgentProcess(write_agent_config(tmp_path / "agent", broker.port), "--count", "60")
    assert recorder.wait_until(lambda m: len(m) >= 2)
    broker.stop()
    time.sleep(2.0)  # the agent keeps sampling into its spool meanwhile
    broker.start()
    assert agent.wait(timeout_s=60) == 0, agent.stderr
    assert len(agent.samples) == 60
    assert recorder.wait_until(lambda m: len({s["seq"] for _, s in received_samples(m)}) >= 60)
    seqs = Counter(s["seq"] for _, s in received_samples(recorder.snapshot()))
    assert sorted(seqs) == list(range(60)), "every sample arrives"
    recorder.close()


def test_agent_killed_while_broker_down_loses_nothing(tmp_path, broker):
    recorder = Recorder(MqttConfig(host="127.0.0.1", port=broker.port), SAMPLES, client_id="kill-recorder")
    config = write_agent_config(tmp_path / "agent", broker.port)
    first = AgentProcess(config)
    assert recorder.wait_until(lambda m: len(m) >= 1)
    broker.stop()
    time.sleep(1.5)
    first.kill()  # SIGKILL while everything since the outage sits only in the spool
    spooled = {(first.samples[0]["ts_ms"], s["seq"]) for s in first.samples}
    assert len(spooled) >= 10

    second = AgentProcess(config, "--count", "5")
    broker.start()
    assert second.wait(timeout_s=60) == 0, second.stderr

    def first_session_seqs(messages):
        sessions = [session for session, _ in received_samples(messages)]
        first_session = sessions[0]
        return {s["seq"] for session, s in received_samples(messages) if session == first_session}

    expected = {s["seq"] for s in first.samples}
    assert recorder.wait_until(lambda m: expected <= first_session_seqs(m))
    sessions = {session for session, _ in received_samples(recorder.snapshot())}
    assert len(sessions) == 2, "the restarted agent runs a new session"
    recorder.close()


def test_tls_with_generated_ca(tmp_path):
    ca = make_test_ca(tmp_path / "ca")
    broker = Mosquitto(tmp_path / "broker", tls=ca)
    broker.start()
    try:
        tls_config = MqttConfig(host="localhost", port=broker.port, tls=TlsConfig(ca_file=ca["ca"]))
        recorder = Recorder(tls_config, SAMPLES)
        agent_config = write_agent_config(tmp_path / "agent", broker.port, mqtt_extra="tls = { ca_file = "
                                          f"\"{ca['ca']}\" }}")
        agent_config.write_text(agent_config.read_text().replace('host = "127.0.0.1"', 'host = "localhost"'))
        agent = AgentProcess(agent_config, "--count", "5")
        assert agent.wait() == 0, agent.stderr
        assert recorder.wait_until(lambda m: len(received_samples(m)) >= 5)
        recorder.close()
    finally:
        broker.stop()


def test_acl_confines_each_host_to_its_own_topics(tmp_path):
    passwords = tmp_path / "passwd"
    for user in ("h01", "h02", "collector"):
        add_mqtt_user(passwords, user, f"secret-{user}")
    acl = tmp_path / "acl"
    acl.write_text("user collector\ntopic read dcem/#\n\npattern write dcem/v1/+/+/+/%u/#\n")
    broker = Mosquitto(tmp_path / "broker", password_file=passwords, acl_file=acl)
    broker.start()
    try:
        collector = MqttConfig(host="127.0.0.1", port=broker.port, username="collector", password="secret-collector")
        recorder = Recorder(collector, "dcem/#")
        honest = write_agent_config(tmp_path / "h01", broker.port, host="h01",
                                    mqtt_extra='username = "h01"\npassword = "secret-h01"')
        # h01's credentials, but claiming to be h02: every publish must be refused.
        impostor = write_agent_config(tmp_path / "impostor", broker.port, host="h02",
                                      mqtt_extra='username = "h01"\npassword = "secret-h01"')
        AgentProcess(honest, "--count", "5").wait()
        liar = AgentProcess(impostor, "--count", "20")
        assert liar.wait() == 0
        assert recorder.wait_until(lambda m: len(received_samples([x for x in m if x.topic.endswith("samples")])) >= 5)
        time.sleep(0.5)
        topics = {message.topic for message in recorder.snapshot()}
        assert "dcem/v1/dc1/hall-a/r01/h01/samples" in topics
        assert not any("/h02/" in topic for topic in topics)
        assert "mqtt-publish-refused" in liar.stderr
        assert "secret-h01" not in liar.stderr
        recorder.close()
    finally:
        broker.stop()


def test_status_is_retained_and_last_will_marks_offline(tmp_path, broker):
    config = write_agent_config(tmp_path / "agent", broker.port, mqtt_extra="keepalive_s = 5")
    agent = AgentProcess(config)
    statuses = Recorder(MqttConfig(host="127.0.0.1", port=broker.port), subscription(STATUS_CHANNEL))
    assert statuses.wait_until(lambda m: any(decode_status(x.payload).state == "online" for x in m))
    online = next(decode_status(x.payload) for x in statuses.snapshot() if decode_status(x.payload).state == "online")
    assert online.overhead is not None and online.overhead.rss_bytes > 0
    assert online.sensors["rapl"] == "ok"
    agent.kill()  # no clean disconnect: the broker publishes the last will
    assert statuses.wait_until(lambda m: decode_status(m[-1].payload).state == "offline", timeout_s=60)
    statuses.close()
