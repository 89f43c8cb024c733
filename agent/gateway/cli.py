"""dcem-meter-gateway: read facility meters over Modbus TCP and publish their energy over MQTT.

Configuration comes from a TOML file (--config; see agent/gateway/gateway.example.toml), then environment
variables DCEM_GATEWAY_<SECTION>_<FIELD> (for example DCEM_GATEWAY_MQTT_PASSWORD), then the flags below.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from agent import __version__
from agent.gateway.config import ENV_PREFIX, GatewayConfig, MeterConfig
from agent.gateway.poller import MeterPoller, new_session_id
from agent.gateway.runner import Clock, GatewayRunner, MeterChannel, system_clock
from common import logs
from common.config import ConfigError, load
from common.contract import SAMPLES_CHANNEL, STATUS_CHANNEL, Identity, Status, encode, topic_for
from common.mqtt import connect, make_client
from common.publisher import SpoolPublisher
from common.spool import Spool

log = logging.getLogger("gateway")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="dcem-meter-gateway", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True, help="TOML config file")
    parser.add_argument("--site", help="identity.site")
    parser.add_argument("--mqtt-host", help="mqtt.host")
    parser.add_argument("--mqtt-port", type=int, help="mqtt.port")
    parser.add_argument("--interval", type=float, help="polling.interval_s (seconds between meter reads)")
    parser.add_argument("--publish-interval", type=float, help="polling.publish_interval_s")
    parser.add_argument("--spool", type=Path, help="spool.folder (one SQLite file per meter)")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="log.level")
    parser.add_argument("--count", type=int, help="stop after this many polling cycles")
    parser.add_argument("--version", action="version", version=__version__)
    return parser.parse_args(argv)


def build_config(args: argparse.Namespace) -> GatewayConfig:
    overrides = {
        "identity.site": args.site, "mqtt.host": args.mqtt_host, "mqtt.port": args.mqtt_port,
        "polling.interval_s": args.interval, "polling.publish_interval_s": args.publish_interval,
        "spool.folder": args.spool, "log.level": args.log_level,
    }
    return load(GatewayConfig, args.config, ENV_PREFIX, os.environ, overrides)


def meter_identity(config: GatewayConfig, meter: MeterConfig) -> Identity:
    """The topic identity of a meter: the gateway's site, the meter's room and rack (or the defaults), its id."""
    return Identity(site=config.identity.site, room=meter.room or config.identity.room,
                    rack=meter.rack or config.identity.rack, device=meter.id)


@contextmanager
def open_gateway(config: GatewayConfig, clock: Clock = system_clock) -> Iterator[GatewayRunner]:
    """A runner with every meter's poller, spool and MQTT publisher connected; all closed on exit.
    `clock` is the runner's time source (see agent.gateway.runner)."""
    root = config.mqtt.topic_root
    gateway = Identity(site=config.identity.site, room=config.identity.room, rack=config.identity.rack,
                       device=config.identity.gateway)
    status_topic = topic_for(gateway, STATUS_CHANNEL, root)
    with ExitStack() as stack:
        status_client = make_client(config.mqtt, client_id=f"dcem-gw-{gateway.site}-{gateway.device}")
        status_client.will_set(status_topic, encode(Status(state="offline")), qos=1, retain=True)
        _start(stack, status_client, config)
        channels = [_open_channel(stack, config, meter) for meter in config.meters]
        yield GatewayRunner(channels, status_client, status_topic, new_session_id(gateway.device),
                            config.polling.interval_s, config.polling.publish_interval_s, clock)


def _open_channel(stack: ExitStack, config: GatewayConfig, meter: MeterConfig) -> MeterChannel:
    identity = meter_identity(config, meter)
    root = config.mqtt.topic_root
    poller = MeterPoller(meter, config.polling.interval_s)
    stack.callback(poller.close)
    spool = Spool(config.spool.folder / f"{meter.id}.db", config.spool.max_samples)
    stack.callback(spool.close)
    client = make_client(config.mqtt, client_id=f"dcem-gw-{identity.site}-{meter.id}")
    publisher = SpoolPublisher(client, spool, topic_for(identity, SAMPLES_CHANNEL, root),
                               topic_for(identity, STATUS_CHANNEL, root), kind="meter")
    _start(stack, client, config)
    register_map = poller.register_map
    logs.event(log, logging.INFO, "meter-configured", meter=meter.id, host=f"{meter.host}:{meter.port}",
               unit_id=meter.unit_id, profile=register_map.name, confidence=register_map.confidence,
               topic=publisher.samples_topic, spool_depth=spool.depth)
    if meter.profile and register_map.confidence != "confirmed":
        logs.event(log, logging.WARNING, "meter-profile-unconfirmed", meter=meter.id, profile=register_map.name,
                   confidence=register_map.confidence,
                   action="compare the published kWh and kW with the meter's display once before trusting them "
                          "(see agent/gateway/README.md, Profiles)")
    return MeterChannel(poller, spool, publisher)


def _start(stack: ExitStack, client, config: GatewayConfig) -> None:
    connect(client, config.mqtt)
    client.loop_start()
    stack.callback(client.loop_stop)
    stack.callback(client.disconnect)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = build_config(args)
    except ConfigError as exc:
        print(f"dcem-meter-gateway: {exc}", file=sys.stderr)
        return 2
    logs.setup(config.log.level, config.log.format)
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)  # its errors are reported as meter-stale events
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    with open_gateway(config) as runner:
        logs.event(log, logging.INFO, "gateway-started", version=__version__, meters=len(config.meters),
                   broker=f"{config.mqtt.host}:{config.mqtt.port}", status_topic=runner.status_topic)
        runner.run(stop, max_cycles=args.count)
    return 0


if __name__ == "__main__":
    sys.exit(main())
