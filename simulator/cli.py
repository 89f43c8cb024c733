"""dcem-simulator: write the site config, publish a scenario's messages to a broker, and write the ground truth.

With --modbus, the facility meters are served as Modbus TCP devices instead, and the meter gateway's own code
reads them at every simulated step and publishes their samples (simulator/README.md, "Modbus mode").
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from agent.gateway.config import GatewayConfig
from agent.gateway.registers import load_profile, profile_names
from simulator.messages import messages
from simulator.modbus import (
    DEFAULT_PORT,
    DEFAULT_PROFILE,
    gateway_config,
    publish_with_gateway,
    registered_truth,
    write_gateway_config,
)
from simulator.run import DEFAULT_MAX_INFLIGHT, publish
from simulator.scenario import ScenarioError, load_scenario, start_ms
from simulator.site_config import write_site_config
from simulator.truth import ground_truth, write_truth

DEFAULT_SCENARIO = Path(__file__).parent / "scenarios" / "small-site.yaml"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="dcem-simulator", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", type=Path, default=DEFAULT_SCENARIO, help="scenario YAML")
    parser.add_argument("--broker", help="host:port; without it, only the files are written")
    parser.add_argument("--speed", type=float, default=0.0,
                        help="simulated seconds per real second; 0: as fast as the broker acknowledges")
    parser.add_argument("--max-inflight", type=int, default=DEFAULT_MAX_INFLIGHT)
    parser.add_argument("--truth", type=Path, help="write the ground truth JSON here (after publishing)")
    parser.add_argument("--site-config", type=Path, help="write the collector site config YAML here (first)")
    modbus = parser.add_argument_group("Modbus mode")
    modbus.add_argument("--modbus", action="store_true",
                        help="the meters are Modbus TCP devices: with --broker, serve them on 127.0.0.1:--modbus-port "
                             "(one unit id per meter) and let the meter gateway read and publish them at every "
                             "step; the truth counts the meters' energy as their registers hold it")
    modbus.add_argument("--modbus-port", type=int, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}")
    modbus.add_argument("--modbus-profile", choices=profile_names(), default=DEFAULT_PROFILE,
                        help=f"the gateway register profile the meters serve (default {DEFAULT_PROFILE}: float32 kWh)")
    modbus.add_argument("--gateway-config", type=Path,
                        help="write the meter gateway's TOML config for the served meters here (first)")
    return parser.parse_args(argv)


def _broker(address: str | None) -> tuple[str, int]:
    host, _, port = (address or "localhost:1883").rpartition(":")
    return host or "localhost", int(port)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        scenario = load_scenario(args.scenario)
        begin = start_ms(scenario, int(time.time() * 1000))
    except ScenarioError as exc:
        print(exc, file=sys.stderr)
        return 2
    host, port = _broker(args.broker)
    spool = args.gateway_config.parent / "gateway-spool" if args.gateway_config else None
    gateway = gateway_config(scenario, args.modbus_port, args.modbus_profile, (host, port), spool)
    if args.site_config:
        write_site_config(args.site_config, scenario)
    if args.gateway_config:
        write_gateway_config(args.gateway_config, gateway)
    try:
        if args.broker and args.modbus:
            count = publish_with_gateway(scenario, begin, GatewayConfig.model_validate(gateway), args.speed,
                                         args.max_inflight)
            print(f"published {count} host messages for {scenario.site} from {begin} ms; the meter gateway read "
                  f"{len(gateway['meters'])} Modbus meters on 127.0.0.1:{args.modbus_port}", file=sys.stderr)
        elif args.broker:
            count = publish(messages(scenario, begin), host, port, args.speed, args.max_inflight)
            print(f"published {count} messages for {scenario.site} from {begin} ms", file=sys.stderr)
    except OSError as exc:  # the broker or the Modbus port; TimeoutError included
        print(f"dcem-simulator: {exc}", file=sys.stderr)
        return 1
    if args.truth:
        truth = (registered_truth(scenario, begin, load_profile(args.modbus_profile)) if args.modbus
                 else ground_truth(scenario, begin))
        write_truth(args.truth, truth)
    return 0


if __name__ == "__main__":
    sys.exit(main())
