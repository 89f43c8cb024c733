"""Modbus mode: the simulated facility meters served over Modbus TCP and read by the meter gateway, step by step.

One pymodbus server on a loopback port answers for every meter of simulator.model.meters(), one unit (slave)
id each (1, 2, ... in that order), as a Modbus TCP-to-RTU gateway in front of a meter bus does. Each unit
serves the energy (and power) registers of one of the gateway's register profiles (agent/gateway/profiles/).
The meter gateway's own code (agent.gateway: pollers, spools, MQTT publishers, from the config this module
writes) reads them and publishes the meter samples; the simulator publishes only the hosts' messages.

Time. The gateway stamps each sample with its clock, and the collector spreads a sample's energy over the
time since the previous one. For the stored bins to equal the truth, every read must happen at a step
boundary, stamped with that boundary's simulated time. So the simulator drives the gateway in LOCKSTEP: at
each simulated instant it sets the registers to that instant's values, sets the gateway's clock (the runner's
injected `clock`) to the instant, and calls the runner's poll_once(), which returns once every meter has been
read; then the gateway's publishers send what was read. A free-running `dcem-meter-gateway` process cannot be
exact against a run in accelerated or past time: it stamps with the wall clock, between step boundaries.

Exactness. An energy register holds the cumulative kWh since the run's start rounded to what its type and
scale can represent (float32: 24 significant bits; uint32 x 0.01: 0.01 kWh), and the gateway counts the
register's increases. `registered_truth` is the ground truth with each meter's step energy taken as the
increase of its register, which is what the collector can see; it equals the collector's figures to
floating-point rounding. How far it is from the model's exact truth depends on the profile: see
simulator/README.md, "Modbus mode".
"""

from __future__ import annotations

import asyncio
import struct
import tempfile
import threading
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from agent.gateway.cli import open_gateway
from agent.gateway.config import GatewayConfig, SpoolConfig
from agent.gateway.registers import RegisterMap, RegisterSpec, decode_raw, encode_raw
from agent.gateway.runner import GatewayRunner
from collector.site import FACILITY_RACK, FACILITY_ROOM
from common.config import toml_text
from simulator.messages import Message, messages, meter_topic
from simulator.model import meters
from simulator.run import DEFAULT_MAX_INFLIGHT, publish
from simulator.scenario import Scenario
from simulator.truth import J_PER_KWH, Step, ground_truth, steps

DEFAULT_PROFILE = "generic"
DEFAULT_PORT = 5020
MODBUS_HOST = "127.0.0.1"
GATEWAY_DEVICE = "meter-gateway"
MAX_POLL_INTERVAL_S = 300.0  # agent.gateway.config.PollingConfig's limit


@dataclass(frozen=True)
class Registers:
    """What every meter's registers hold at one step boundary: raw (unscaled) values by meter id."""

    ts_ms: int
    energy: dict[str, int | float]
    power: dict[str, int | float]


def held(value: float, spec: RegisterSpec) -> int | float:
    """The raw value a register of `spec` holds for `value` (kWh or kW): value / scale, rounded to the type."""
    units = value / spec.scale
    if spec.data_type != "float32":
        units = round(units)
    try:
        return decode_raw(encode_raw(units, spec), spec)
    except (OverflowError, struct.error) as exc:
        raise ValueError(f"{value:g} does not fit a {spec.data_type} register at scale {spec.scale:g}") from exc


def register_steps(scenario: Scenario, start_ms: int, register_map: RegisterMap) -> Iterator[Registers]:
    """The registers at every step boundary, from the start (energy 0) to the end: energy holds the meter's
    cumulative energy since the start, power the power of the step just ended (at the start: of the first)."""
    step_ms = scenario.step_ms
    exact_j = {m.id: 0.0 for m in meters(scenario)}

    def boundary(ts_ms: int, step: Step) -> Registers:
        return Registers(ts_ms, {m: held(j / J_PER_KWH, register_map.energy) for m, j in exact_j.items()},
                         {} if register_map.power is None else
                         {m: held(step.device_j[m] / scenario.step_s / 1000, register_map.power) for m in exact_j})

    for index, step in enumerate(steps(scenario, start_ms)):
        if index == 0:
            yield boundary(step.start_ms, step)
        for meter_id in exact_j:
            exact_j[meter_id] += step.device_j[meter_id]
        yield boundary(step.start_ms + step_ms, step)


def registered_steps(scenario: Scenario, start_ms: int, register_map: RegisterMap) -> Iterator[Step]:
    """The model's steps with each meter's energy replaced by the increase of its energy register."""
    joules_per_unit = register_map.energy.scale * J_PER_KWH
    boundaries = register_steps(scenario, start_ms, register_map)
    before = next(boundaries)
    for step, after in zip(steps(scenario, start_ms), boundaries):
        metered = {m: (raw - before.energy[m]) * joules_per_unit for m, raw in after.energy.items()}
        yield Step(step.start_ms, step.device_j | metered, step.export_j)
        before = after


def registered_truth(scenario: Scenario, start_ms: int, register_map: RegisterMap) -> dict:
    """The ground truth as the meters' registers can show it (see the module docstring); it names the map."""
    truth = ground_truth(scenario, start_ms, registered_steps(scenario, start_ms, register_map))
    truth["meter_registers"] = register_map.model_dump(mode="json", exclude_none=True)
    return truth


def gateway_config(scenario: Scenario, modbus_port: int = DEFAULT_PORT, profile: str = DEFAULT_PROFILE,
                   broker: tuple[str, int] = ("localhost", 1883), spool_folder: Path | None = None) -> dict:
    """The meter gateway's config (agent/gateway/gateway.example.toml format) for the served meters, as a
    mapping; meters sit under the collector's facility room and rack defaults, as in the site config."""
    interval_s = float(min(scenario.step_s, MAX_POLL_INTERVAL_S))
    config = {
        "identity": {"site": scenario.site, "room": FACILITY_ROOM, "rack": FACILITY_RACK, "gateway": GATEWAY_DEVICE},
        "mqtt": {"host": broker[0], "port": broker[1]},
        "polling": {"interval_s": interval_s, "publish_interval_s": interval_s},
        "spool": {"folder": str(spool_folder or Path(tempfile.gettempdir()) / "dcem-simulator-gateway-spool")},
        "meters": [{"id": m.id, "host": MODBUS_HOST, "port": modbus_port, "unit_id": unit, "profile": profile,
                    "role": str(m.role), **({"source": str(m.source)} if m.source else {}),
                    "timeout_s": min(2.0, interval_s / 2)}
                   for unit, m in enumerate(meters(scenario), start=1)],
    }
    GatewayConfig.model_validate(config)
    return config


def write_gateway_config(path: Path, config: dict) -> Path:
    """Write a gateway config mapping (gateway_config) as TOML; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = "# dcem-meter-gateway config for the simulator's Modbus meters (written by dcem-simulator).\n\n"
    path.write_text(header + toml_text(config), encoding="utf-8")
    return path


class MeterServer:
    """pymodbus's Modbus TCP server on a loopback port, in a thread of its own, with one unit per meter.

    Every unit serves the energy (and power) registers of `register_map` with the values last given to
    hold(); other addresses answer exception 2 (illegal address) and writes exception 1, as a meter's do.
    """

    def __init__(self, port: int, unit_ids: Iterable[int], register_map: RegisterMap, host: str = MODBUS_HOST):
        self.port = port
        self.register_map = register_map
        self._specs = sorted((s for s in (register_map.energy, register_map.power) if s is not None),
                             key=lambda spec: spec.address)
        self._first = self._specs[0].address
        size = max(spec.address + spec.count for spec in self._specs) - self._first
        self._images = {unit: [0] * size for unit in unit_ids}
        self._server: ModbusTcpServer | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="modbus-meters", daemon=True)
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._listen(host), self._loop).result(timeout=10)
        except RuntimeError as exc:  # pymodbus: "Could not start listen"
            self._stop_loop()
            raise OSError(f"the Modbus server cannot listen on {host}:{port} (is the port in use?)") from exc
        except BaseException:
            self._stop_loop()
            raise

    async def _listen(self, host: str) -> None:
        devices = [SimDevice(unit, action=partial(self._answer, unit),
                             simdata=[SimData(spec.address, count=spec.count, values=0, datatype=DataType.REGISTERS)
                                      for spec in self._specs])
                   for unit in self._images]
        self._server = ModbusTcpServer(devices, address=(host, self.port))
        await self._server.serve_forever(background=True)

    async def _answer(self, unit, function_code, start_address, address, count, registers, values):
        if values is not None:
            return ExcCodes.ILLEGAL_FUNCTION
        registers[:] = self._images[unit]
        return None

    def hold(self, unit: int, energy_raw: int | float, power_raw: int | float | None = None) -> None:
        """Set what a unit's registers answer from now on (raw values, as `held` gives them)."""
        image = [0] * len(self._images[unit])
        for spec, raw in ((self.register_map.energy, energy_raw), (self.register_map.power, power_raw)):
            if spec is not None and raw is not None:
                offset = spec.address - self._first
                image[offset:offset + spec.count] = encode_raw(raw, spec)
        self._images[unit] = image  # one reference swap: a read sees the old image or the new one

    def close(self) -> None:
        if self._server is not None:
            asyncio.run_coroutine_threadsafe(self._server.shutdown(), self._loop).result(timeout=5)
        self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    def __enter__(self) -> MeterServer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class SimulatedClock:
    """The gateway's clock in lockstep: the simulated instant the simulator set last."""

    def __init__(self, ts_ms: int = 0):
        self.ts_ms = ts_ms

    def __call__(self) -> tuple[float, int]:
        return self.ts_ms / 1000, self.ts_ms


class MeterNotRead(RuntimeError):
    """A served meter did not answer the gateway at a step: the step's energy would be misplaced in time."""


class LockstepGateway:
    """The meter gateway (agent.gateway's runner, pollers, spools and publishers) reading the served meters
    once per simulated instant, stamped with that instant. Its spool is a temporary folder: a run is not resumed.
    """

    def __init__(self, config: GatewayConfig, server: MeterServer, registers: Iterator[Registers]):
        self.server = server
        self.clock = SimulatedClock()
        self.unit_of = {meter.id: meter.unit_id for meter in config.meters}
        self._registers = registers
        self._stack = ExitStack()
        spool = self._stack.enter_context(tempfile.TemporaryDirectory(prefix="dcem-sim-gateway-"))
        config = config.model_copy(update={"spool": SpoolConfig(folder=Path(spool))})
        try:
            self.runner: GatewayRunner = self._stack.enter_context(open_gateway(config, self.clock))
        except BaseException:
            self._stack.close()
            raise

    def advance(self, ts_ms: int) -> None:
        """Hold instant ts_ms's registers, let every meter be read at ts_ms, publish what was read."""
        registers = next(self._registers)
        if registers.ts_ms != ts_ms:
            raise ValueError(f"the registers are for {registers.ts_ms}, the instant is {ts_ms}")
        for meter_id, unit in self.unit_of.items():
            self.server.hold(unit, registers.energy[meter_id], registers.power.get(meter_id))
        self.clock.ts_ms = ts_ms
        read = {sample.meter_id for sample in self.runner.poll_once()}
        missing = [channel.poller for channel in self.runner.channels if channel.poller.meter.id not in read]
        if missing:
            raise MeterNotRead("; ".join(f"{p.meter.id} at {ts_ms}: {p.last_error}" for p in missing))
        for channel in self.runner.channels:
            channel.publisher.pump()

    def close(self) -> int:
        """Flush the spools and stop the gateway; returns how many samples the broker did not acknowledge."""
        try:
            self.runner.shutdown()
            return sum(channel.spool.depth for channel in self.runner.channels)
        finally:
            self._stack.close()


def host_messages(scenario: Scenario, start_ms: int) -> Iterator[Message]:
    """The simulator's messages without the meters' (the gateway publishes those)."""
    meter_topics = {meter_topic(scenario, m) for m in meters(scenario)}
    return (message for message in messages(scenario, start_ms) if message.topic not in meter_topics)


def publish_with_gateway(scenario: Scenario, start_ms: int, config: GatewayConfig, speed: float = 0.0,
                         max_inflight: int = DEFAULT_MAX_INFLIGHT) -> int:
    """Serve the meters per `config` (one host and port, one register map), publish the hosts' messages and
    let the gateway read and publish the meters at every instant; returns the number of host messages."""
    served = {(m.host, m.port, m.register_map()) for m in config.meters}
    if len(served) != 1:
        raise ValueError("the served meters must share one host, port and register map")
    host, port, register_map = served.pop()
    with MeterServer(port, [m.unit_id for m in config.meters], register_map, host) as server:
        gateway = LockstepGateway(config, server, register_steps(scenario, start_ms, register_map))
        try:
            count = publish(host_messages(scenario, start_ms), config.mqtt.host, config.mqtt.port, speed,
                            max_inflight, on_instant=gateway.advance)
        finally:
            unsent = gateway.close()
    if unsent:
        raise TimeoutError(f"the broker did not acknowledge {unsent} meter samples")
    return count

