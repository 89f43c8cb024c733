"""The gateway against a real Modbus TCP server (pymodbus's own, in a thread) and a real mosquitto."""

from __future__ import annotations

import asyncio
import threading

import pytest
from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from agent.gateway.cli import open_gateway
from agent.gateway.config import GatewayConfig, MeterConfig
from agent.gateway.poller import MeterPoller
from agent.gateway.registers import RegisterMap, RegisterSpec, encode_raw
from common.contract import SAMPLES_CHANNEL, EnergySource, MeterRole, decode_batch, parse_topic, subscription
from common.mqtt import MqttConfig
from tests.servers import Mosquitto, free_port, wait_for_port
from tests.subscriber import Recorder

KWH = 3_600_000.0
UNIT = 1
BLOCK = 64
FLOAT_ENERGY = RegisterSpec(address=0, data_type="float32", scale=1.0)
FLOAT_POWER = RegisterSpec(address=2, data_type="float32", scale=1.0)
UINT_ENERGY = RegisterSpec(address=10, data_type="uint32", word_order="little", scale=0.01, function=4)


class MeterServer:
    """pymodbus's TCP server on a free loopback port, serving registers the test sets, or misbehaving."""

    def __init__(self):
        self.port = free_port()
        self.registers = [0] * BLOCK
        self.exception: ExcCodes | None = None
        self.silent = False
        self._loop = asyncio.new_event_loop()
        self._server: ModbusTcpServer | None = None
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(self._serve(),), daemon=True)
        self._thread.start()
        wait_for_port(self.port)

    async def _serve(self) -> None:
        device = SimDevice(UNIT, simdata=[SimData(0, count=BLOCK, values=0, datatype=DataType.REGISTERS)],
                           action=self._serve_test_registers)
        self._server = ModbusTcpServer(device, address=("127.0.0.1", self.port))
        await self._server.serve_forever()

    def set(self, spec: RegisterSpec, value: int | float) -> None:
        self.registers[spec.address:spec.address + spec.count] = encode_raw(value, spec)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._server.shutdown(), self._loop).result(timeout=5)
        self._thread.join(timeout=5)

    async def _serve_test_registers(self, function_code, start_address, address, count, registers, values):
        if self.silent:
            await asyncio.sleep(2)
        registers[:] = self.registers[start_address:start_address + len(registers)]
        return self.exception


@pytest.fixture
def meter_server():
    server = MeterServer()
    yield server
    server.stop()


def meter_config(port: int, energy: RegisterSpec = FLOAT_ENERGY, power: RegisterSpec | None = FLOAT_POWER,
                 meter_id: str = "utility-1") -> MeterConfig:
    return MeterConfig(id=meter_id, host="127.0.0.1", port=port, unit_id=UNIT, timeout_s=0.3,
                       registers=RegisterMap(energy=energy, power=power), role=MeterRole.FACILITY_INPUT,
                       source=EnergySource.GRID)


def poll(poller: MeterPoller, now_s: float):
    result = poller.poll(now_s, now_ms=1_700_000_000_000 + int(now_s * 1000))
    return None if result is None else (result.session, result.sample)


def test_normal_reads_give_cumulative_energy_power_and_seq(meter_server):
    meter_server.set(FLOAT_ENERGY, 1000.0)
    meter_server.set(FLOAT_POWER, 12.5)
    poller = MeterPoller(meter_config(meter_server.port), nominal_interval_s=5.0)
    first_session, first = poll(poller, 0.0)
    meter_server.set(FLOAT_ENERGY, 1000.25)
    session, second = poll(poller, 5.0)
    poller.close()
    assert session == first_session
    assert (first.seq, second.seq) == (0, 1)
    assert (first.interval_s, second.interval_s) == (5.0, 5.0)
    reading = second.readings[0]
    assert reading.energy_j == pytest.approx(0.25 * KWH)
    assert reading.power_w == pytest.approx(12_500.0)
    assert (reading.component, reading.method, reading.role, reading.source) == (
        "meter", "meter", MeterRole.FACILITY_INPUT, EnergySource.GRID)


def test_uint32_rollover_continues_the_session(meter_server):
    meter_server.set(UINT_ENERGY, 2**32 - 100)
    poller = MeterPoller(meter_config(meter_server.port, energy=UINT_ENERGY, power=None), nominal_interval_s=5.0)
    session, _ = poll(poller, 0.0)
    meter_server.set(UINT_ENERGY, 50)
    after_session, sample = poll(poller, 5.0)
    poller.close()
    assert after_session == session and sample.seq == 1
    assert sample.readings[0].energy_j == pytest.approx(1.5 * KWH)  # 100 units to 0, 50 more: 150 x 0.01 kWh
    assert sample.readings[0].power_w is None


def test_meter_replacement_starts_a_new_session_at_zero(meter_server):
    meter_server.set(FLOAT_ENERGY, 52_000.0)
    poller = MeterPoller(meter_config(meter_server.port), nominal_interval_s=5.0)
    old_session, _ = poll(poller, 0.0)
    meter_server.set(FLOAT_ENERGY, 52_010.0)
    poll(poller, 5.0)
    meter_server.set(FLOAT_ENERGY, 0.2)  # the new meter
    new_session, first = poll(poller, 10.0)
    meter_server.set(FLOAT_ENERGY, 1.2)
    _, second = poll(poller, 15.0)
    poller.close()
    assert new_session != old_session
    assert (first.seq, first.readings[0].energy_j) == (0, 0.0)
    assert (second.seq, second.readings[0].energy_j) == (1, pytest.approx(1.0 * KWH))


def test_silent_meter_goes_stale_backs_off_and_recovers_in_the_same_session(meter_server):
    meter_server.set(FLOAT_ENERGY, 10.0)
    poller = MeterPoller(meter_config(meter_server.port), nominal_interval_s=5.0)
    session, _ = poll(poller, 0.0)
    meter_server.silent = True
    assert poll(poller, 5.0) is None
    assert poller.state.startswith("stale: no answer")
    assert poller.backoff.next_try_s == 6.0
    assert poll(poller, 5.5) is None and poller.backoff.failures == 1  # not due: not even tried
    assert poll(poller, 6.0) is None and poller.backoff.next_try_s == 8.0
    meter_server.silent = False
    meter_server.set(FLOAT_ENERGY, 11.0)
    recovered_session, sample = poll(poller, 8.0)
    poller.close()
    assert poller.state == "ok" and recovered_session == session
    assert (sample.seq, sample.interval_s) == (1, 8.0)
    assert sample.readings[0].energy_j == pytest.approx(1.0 * KWH)  # the outage's energy is still counted


def test_stopped_server_is_stale(meter_server):
    poller = MeterPoller(meter_config(meter_server.port), nominal_interval_s=5.0)
    meter_server.stop()
    meter_server.stop = lambda: None
    assert poll(poller, 0.0) is None
    poller.close()
    assert poller.backoff.stale and poller.state.startswith("stale: no answer")


def test_exception_responses_mark_the_meter_stale(meter_server):
    beyond = RegisterSpec(address=500, data_type="float32", scale=1.0)
    missing = MeterPoller(meter_config(meter_server.port, energy=beyond, meter_id="missing"), 5.0)
    assert poll(missing, 0.0) is None
    assert missing.state == "stale: Modbus exception code 2 at address 500"
    busy = MeterPoller(meter_config(meter_server.port, meter_id="busy"), 5.0)
    meter_server.exception = ExcCodes.DEVICE_BUSY
    assert poll(busy, 0.0) is None and busy.state.startswith("stale: Modbus exception code 6")
    meter_server.exception = None
    assert poll(busy, 1.0) is not None and busy.state == "ok"
    missing.close()
    busy.close()


@pytest.mark.servers
def test_gateway_publishes_each_meter_on_its_own_topic(tmp_path, meter_server):
    broker = Mosquitto(tmp_path / "broker")
    broker.start()
    second_server = MeterServer()
    try:
        meter_server.set(FLOAT_ENERGY, 500.0)
        meter_server.set(FLOAT_POWER, 3.0)
        second_server.set(UINT_ENERGY, 1000)
        mqtt = MqttConfig(host="127.0.0.1", port=broker.port)
        recorder = Recorder(mqtt, subscription(SAMPLES_CHANNEL))
        config = GatewayConfig(
            identity={"site": "wuhan-1"}, mqtt=mqtt, polling={"interval_s": 1.0, "publish_interval_s": 1.0},
            spool={"folder": tmp_path / "spool"},
            meters=[meter_config(meter_server.port, meter_id="utility-1"),
                    meter_config(second_server.port, energy=UINT_ENERGY, power=None, meter_id="ups-out.1")
                    .model_copy(update={"role": MeterRole.UPS_OUTPUT, "room": "hall-a"})])
        with open_gateway(config) as runner:
            runner.poll_once()
            meter_server.set(FLOAT_ENERGY, 500.5)
            second_server.set(UINT_ENERGY, 1100)
            runner.run(threading.Event(), max_cycles=3)
        assert recorder.wait_until(lambda messages: sum(
            len(decode_batch(m.payload).samples) for m in messages) >= 6, timeout_s=20)
        recorder.close()
        by_device = {}
        for message in recorder.snapshot():
            identity, _ = parse_topic(message.topic)
            batch = decode_batch(message.payload)
            assert batch.kind == "meter"
            by_device.setdefault((identity.room, identity.rack, identity.device), []).extend(batch.samples)
        assert set(by_device) == {("facility", "main", "utility-1"), ("hall-a", "main", "ups-out.1")}
        utility = by_device[("facility", "main", "utility-1")]
        ups = by_device[("hall-a", "main", "ups-out.1")]
        assert [s.seq for s in utility] == [0, 1, 2] and [s.seq for s in ups] == [0, 1, 2]
        assert utility[-1].readings[0].energy_j == pytest.approx(0.5 * KWH)
        assert utility[-1].readings[0].power_w == pytest.approx(3000.0)
        assert ups[-1].readings[0].energy_j == pytest.approx(1.0 * KWH)
        assert all(channel.spool.depth == 0 for channel in runner.channels)
    finally:
        second_server.stop()
        broker.stop()
