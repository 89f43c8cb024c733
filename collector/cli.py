"""dcem-collector: account server and facility energy from MQTT and write it, with PUE, CUE and the
green-power ratio, to InfluxDB.

Configuration comes from a TOML file (--config; see collector/collector.example.toml), then environment
variables DCEM_COLLECTOR_<SECTION>_<FIELD> (for example DCEM_COLLECTOR_INFLUX_TOKEN), then the flags.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path

from collector.config import ENV_PREFIX, CollectorConfig
from collector.factors import FactorError
from collector.ledger import LedgerError
from collector.rules import RuleError
from collector.service import Collector
from collector.site import SiteConfigError
from common import logs
from common.config import ConfigError, load


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="dcem-collector", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, help="TOML config file")
    parser.add_argument("--site-config", type=Path, help="site_config (YAML: sites, racks, hosts, meters)")
    parser.add_argument("--mqtt-host", help="mqtt.host")
    parser.add_argument("--mqtt-port", type=int, help="mqtt.port")
    parser.add_argument("--state", type=Path, help="state.folder (accounting state and output spool)")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="log.level")
    parser.add_argument("--check", action="store_true",
                        help="validate the configuration files (site, ledger, factors, rules) and exit")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    overrides = {"site_config": args.site_config, "mqtt.host": args.mqtt_host, "mqtt.port": args.mqtt_port,
                 "state.folder": args.state, "log.level": args.log_level}
    try:
        config = load(CollectorConfig, args.config, ENV_PREFIX, os.environ, overrides)
        logs.setup(config.log.level, config.log.format)
        collector = Collector(config)
    except (ConfigError, SiteConfigError, LedgerError, FactorError, RuleError) as exc:
        print(f"dcem-collector: {exc}", file=sys.stderr)
        return 2
    if args.check:
        rules = sum(len(site_rules) for site_rules in collector.alerting.rules.values())
        print(f"configuration valid: {len(collector.index.sites)} site(s), {rules} rule(s)")
        return 0
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    collector.run(stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
