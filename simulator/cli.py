"""dcem-simulator: write the site config, publish a scenario's messages to a broker, and write the ground truth."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from simulator.messages import messages
from simulator.run import DEFAULT_MAX_INFLIGHT, publish
from simulator.scenario import ScenarioError, load_scenario, start_ms
from simulator.site_config import write_site_config
from simulator.truth import ground_truth, write_truth

DEFAULT_SCENARIO = Path(__file__).parent / "scenarios" / "small-site.yaml"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="dcem-simulator", description=__doc__)
    parser.add_argument("--scenario", type=Path, default=DEFAULT_SCENARIO, help="scenario YAML")
    parser.add_argument("--broker", help="host:port; without it, only the files are written")
    parser.add_argument("--speed", type=float, default=0.0,
                        help="simulated seconds per real second; 0: as fast as the broker acknowledges")
    parser.add_argument("--max-inflight", type=int, default=DEFAULT_MAX_INFLIGHT)
    parser.add_argument("--truth", type=Path, help="write the ground truth JSON here (after publishing)")
    parser.add_argument("--site-config", type=Path, help="write the collector site config YAML here (first)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        scenario = load_scenario(args.scenario)
        begin = start_ms(scenario, int(time.time() * 1000))
    except ScenarioError as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.site_config:
        write_site_config(args.site_config, scenario)
    if args.broker:
        host, _, port = args.broker.rpartition(":")
        count = publish(messages(scenario, begin), host or "localhost", int(port), args.speed, args.max_inflight)
        print(f"published {count} messages for {scenario.site} from {begin} ms", file=sys.stderr)
    if args.truth:
        write_truth(args.truth, ground_truth(scenario, begin))
    return 0


if __name__ == "__main__":
    sys.exit(main())
