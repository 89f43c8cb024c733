"""dcem-agent: measure this server's power and publish it over MQTT.

Configuration comes from a TOML file (--config; see agent/agent.example.toml), then environment variables
DCEM_AGENT_<SECTION>_<FIELD> (for example DCEM_AGENT_MQTT_PASSWORD), then the flags below.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

from agent import __version__
from agent.config import ENV_PREFIX, AgentConfig
from agent.runner import AgentRunner
from agent.sampler import Sampler
from agent.sensors import open_sensors
from agent.sensors.host import HostStatsReader
from common import logs
from common.config import ConfigError, load
from common.contract import SAMPLES_CHANNEL, STATUS_CHANNEL, Identity, Sample, topic_for
from common.mqtt import connect, make_client
from common.publisher import SpoolPublisher
from common.spool import Spool

log = logging.getLogger("agent")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="dcem-agent", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, help="TOML config file")
    parser.add_argument("--site", help="identity.site")
    parser.add_argument("--room", help="identity.room")
    parser.add_argument("--rack", help="identity.rack")
    parser.add_argument("--host", help="identity.host (default: this machine's short hostname)")
    parser.add_argument("--mqtt-host", help="mqtt.host")
    parser.add_argument("--mqtt-port", type=int, help="mqtt.port")
    parser.add_argument("--interval", type=float, help="sampling.interval_s (seconds between samples)")
    parser.add_argument("--publish-interval", type=float, help="sampling.publish_interval_s")
    parser.add_argument("--spool", type=Path, help="spool.path (SQLite file holding unacknowledged samples)")
    parser.add_argument("--powercap-root", type=Path, help="rapl.root (default /sys/class/powercap)")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="log.level")
    parser.add_argument("--stdout", action="store_true", help="also print every sample as a JSON line")
    parser.add_argument("--once", action="store_true",
                        help="print one sample (taken over one interval) and exit, without MQTT: an install check")
    parser.add_argument("--count", type=int, help="stop after this many samples")
    parser.add_argument("--version", action="version", version=__version__)
    return parser.parse_args(argv)


def build_config(args: argparse.Namespace) -> AgentConfig:
    overrides = {
        "identity.site": args.site, "identity.room": args.room, "identity.rack": args.rack,
        "identity.host": args.host, "mqtt.host": args.mqtt_host, "mqtt.port": args.mqtt_port,
        "sampling.interval_s": args.interval, "sampling.publish_interval_s": args.publish_interval,
        "spool.path": args.spool, "rapl.root": args.powercap_root, "log.level": args.log_level,
    }
    return load(AgentConfig, args.config, ENV_PREFIX, os.environ, overrides)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = build_config(args)
    except ConfigError as exc:
        print(f"dcem-agent: {exc}", file=sys.stderr)
        return 2
    logs.setup(config.log.level, config.log.format)
    host = HostStatsReader()
    try:
        sensors, unavailable = open_sensors(config, host)
    except ValueError as exc:
        print(f"dcem-agent: {exc}", file=sys.stderr)
        return 2
    sampler = Sampler(sensors, host, config.server.overhead_w, config.server.psu_efficiency,
                      wall_ms=lambda: int(time.time() * 1000), monotonic_s=time.monotonic)
    if args.once:
        return _print_one_sample(sampler, config.sampling.interval_s)

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    identity = Identity(site=config.identity.site, room=config.identity.room,
                        rack=config.identity.rack, device=config.identity.host)
    spool = Spool(config.spool.path, config.spool.max_samples)
    client = make_client(config.mqtt, client_id=f"dcem-agent-{identity.site}-{identity.device}")
    root = config.mqtt.topic_root
    publisher = SpoolPublisher(client, spool, topic_for(identity, SAMPLES_CHANNEL, root),
                               topic_for(identity, STATUS_CHANNEL, root), kind="host")
    connect(client, config.mqtt)
    client.loop_start()
    logs.event(log, logging.INFO, "agent-started", version=__version__, topic=publisher.samples_topic,
               broker=f"{config.mqtt.host}:{config.mqtt.port}", spool=str(spool.path), spool_depth=spool.depth)
    runner = AgentRunner(sampler, spool, publisher, config.sampling.interval_s, config.sampling.publish_interval_s,
                         on_sample=_print_sample if args.stdout else None, unavailable_sensors=unavailable)
    try:
        runner.run(stop, max_samples=args.count)
    finally:
        client.disconnect()
        client.loop_stop()
        spool.close()
        for sensor in sensors:
            sensor.close()
    return 0


def _print_sample(sample: Sample) -> None:
    print(sample.model_dump_json(exclude_none=True), flush=True)


def _print_one_sample(sampler: Sampler, interval_s: float) -> int:
    sampler.sample()
    time.sleep(interval_s)
    sample = sampler.sample()
    if sample is None:
        return 1
    print(json.dumps(sample.model_dump(mode="json", exclude_none=True), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
