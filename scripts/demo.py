"""The demo: a simulated data-center day and this machine's agent, through a broker, the collector and InfluxDB.

Starts mosquitto and InfluxDB 1.x on loopback with configs in a temporary folder, runs the collector, this
machine's real agent (without RAPL or a GPU it says so and uses its CPU model) and the site simulator
(simulator/scenarios/small-site.yaml: GPU racks, cooling that follows the weather, PV, a green-power
feeder, a diesel test run) for one simulated day in accelerated time. Then it prints the site's PUE, CUE,
green ratio and coverage by period as the collector stored them, beside the simulator's ground truth, and
the alerts the collector raised from the rule profiles the site selects (with the documents they come from).
Everything it started is stopped at the end, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from collector.writers import InfluxV1Writer
from common.local_servers import Influxd, Mosquitto
from simulator.cli import DEFAULT_SCENARIO
from simulator.messages import messages
from simulator.run import publish
from simulator.scenario import load_scenario, start_ms
from simulator.site_config import site_config
from simulator.truth import ground_truth

DEMO_PROFILES = ("wuhan-new-large", "national-hub-new", "gb-40879-2021", "operational")
HOST = socket.gethostname().split(".")[0] or "demo-host"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hours", type=float, default=24.0, help="simulated hours (default a day)")
    parser.add_argument("--step", type=int, default=60, help="simulated seconds between samples (divides 900)")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    with tempfile.TemporaryDirectory(prefix="dcem-demo-") as folder:
        try:
            return run(Path(folder), args.hours, args.step)
        except KeyboardInterrupt:
            print("\ninterrupted; stopping everything")
            return 130


def run(folder: Path, hours: float, step_s: int) -> int:
    scenario = load_scenario(DEFAULT_SCENARIO).model_copy(update={"duration_h": hours, "step_s": step_s})
    begin = start_ms(scenario, int(time.time() * 1000))
    broker, influx = Mosquitto(folder / "broker"), Influxd(folder / "influxd")
    processes: list[subprocess.Popen] = []
    try:
        broker.start()
        influx.start()
        db = InfluxV1Writer(influx.url, "dcem")
        db.query("CREATE DATABASE dcem")
        step(f"mosquitto on 127.0.0.1:{broker.port}, InfluxDB on {influx.url} (database dcem)")
        write_configs(folder, scenario, broker.port, influx.url)
        processes.append(start("collector", "collector.cli", folder / "collector.toml"))
        processes.append(start("agent", "agent.cli", folder / "agent.toml", "--count", "600"))
        time.sleep(3)
        step(f"simulating {scenario.site}: {hours:g} h from {local(begin, scenario.timezone)}, a sample every "
             f"{step_s} s from every host and meter, published as fast as the broker takes them")
        sent = publish_with_progress(scenario, begin, broker.port)
        step(f"{sent} messages published; waiting for the collector to account them")
        wait_until_counted(db, scenario.site, begin, hours)
        wait_for_local_power(db)
        report(db, scenario, begin)
        return 0
    finally:
        for process in processes:
            if process.poll() is None:
                process.terminate()
                process.wait(20)
        influx.stop()
        broker.stop()


def step(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def local(ms: int, zone: str) -> str:
    import pandas as pd

    return pd.Timestamp(ms, unit="ms", tz="UTC").tz_convert(zone).strftime("%Y-%m-%d %H:%M %Z")


def write_configs(folder: Path, scenario, port: int, influx_url: str) -> None:
    sites = site_config(scenario)
    sites["sites"][0]["rules"] = list(DEMO_PROFILES)
    sites["sites"].append({"id": "local", "name": "This machine", "timezone": scenario.timezone,
                           "grid_region": str(scenario.grid_region), "rules": ["operational"],
                           "rooms": [{"id": "lab", "racks": [{"id": "r01", "hosts": [HOST]}]}]})
    (folder / "site.yaml").write_text(yaml.safe_dump(sites, sort_keys=False))
    (folder / "agent.toml").write_text(f"""
[identity]
site = "local"
room = "lab"
rack = "r01"
host = "{HOST}"
[sampling]
interval_s = 1.0
publish_interval_s = 5.0
[mqtt]
host = "127.0.0.1"
port = {port}
[spool]
path = "{folder / 'agent-spool.db'}"
[log]
level = "warning"
""")
    (folder / "collector.toml").write_text(f"""
site_config = "{folder / 'site.yaml'}"
[mqtt]
host = "127.0.0.1"
port = {port}
[influx]
api = "v1"
url = "{influx_url}"
database = "dcem"
[state]
folder = "{folder / 'collector'}"
[report]
metrics_interval_s = 2.0
[log]
level = "warning"
""")


def start(name: str, module: str, config: Path, *extra: str) -> subprocess.Popen:
    step(f"starting the {name} ({module.split('.')[0]})")
    return subprocess.Popen([sys.executable, "-m", module, "--config", str(config), *extra])


def publish_with_progress(scenario, begin: int, port: int) -> int:
    every = 5000
    counted = 0

    def tracked():
        nonlocal counted
        for message in messages(scenario, begin):
            counted += 1
            if counted % every == 0:
                step(f"  {counted} messages sent")
            yield message

    return publish(tracked(), "127.0.0.1", port, speed=0)


def query(db: InfluxV1Writer, text: str) -> list[dict]:
    result = db.query(text)["results"][0]
    return [{**s.get("tags", {}), **dict(zip(s["columns"], v))} for s in result.get("series", []) for v in s["values"]]


def wait_until_counted(db: InfluxV1Writer, site: str, begin: int, hours: float, timeout_s: float = 180) -> None:
    bins = int(hours * 4)
    deadline = time.monotonic() + timeout_s
    found = 0
    while time.monotonic() < deadline:
        found = len(query(db, f"SELECT pue FROM site_metrics WHERE site='{site}' AND period='15m' "
                              f"AND pue_status='ok' AND time >= {begin}ms"))
        if found >= bins:
            time.sleep(3)  # one more metrics round after the last bin
            return
        time.sleep(1)
    step(f"only {found} of {bins} bins complete after {timeout_s:.0f} s; showing what is there")


def wait_for_local_power(db: InfluxV1Writer, timeout_s: float = 20) -> None:
    """Wait until this machine's agent has a raw point with its server input. The first one stored is often its
    session's first sample, which has no power yet (power needs an interval): the next 10 s slot has."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = query(db, "SELECT count(server_input_w) AS n FROM host WHERE site='local'")
        if found and found[0]["n"]:
            return
        time.sleep(1)


def report(db: InfluxV1Writer, scenario, begin: int) -> None:
    truth = ground_truth(scenario, begin)
    site = scenario.site
    print(f"\nSite {site} ({scenario.timezone}), as stored by the collector:")
    print(f"{'period':<27}{'PUE':>8}  {'category':<10}{'coverage':>9}{'CUE loc':>9}{'CUE mkt':>9}{'green':>8}  status")
    shown = []
    for period, count in (("1h", 3), ("1d", 2), ("mtd", 1), ("12m", 1)):
        shown += query(db, f"SELECT * FROM site_metrics WHERE site='{site}' AND period='{period}' "
                           f"ORDER BY time DESC LIMIT {count}")[::-1]
    for row in shown:
        label = f"{row['period']} from {local(row['time'], scenario.timezone)[:16]}"
        print(f"{label:<27}{fmt(row.get('pue'), 3):>8}  {row.get('pue_category') or '-':<10}"
              f"{fmt(row.get('coverage'), 2):>9}{fmt(row.get('cue_location'), 3):>9}{fmt(row.get('cue_market'), 3):>9}"
              f"{fmt(row.get('green_ratio'), 3):>8}  {row.get('pue_status')}")
    bins = query(db, f"SELECT e_facility_kwh, e_it_kwh FROM site_metrics WHERE site='{site}' AND period='15m' "
                     f"AND pue_status='ok' AND time >= {begin}ms")
    stored_facility = sum(b["e_facility_kwh"] for b in bins)
    stored_it = sum(b["e_it_kwh"] for b in bins)
    run = truth["run"]
    print(f"\nThe whole run from the stored 15-minute bins: facility {stored_facility:.3f} kWh, IT {stored_it:.3f} kWh,"
          f" PUE {stored_facility / stored_it:.4f}")
    print(f"The simulator's ground truth:               facility {run['e_facility_kwh']:.3f} kWh, IT "
          f"{run['e_ups_output_kwh']:.3f} kWh, PUE {run['pue1']:.4f}, green {run['green_ratio']:.4f}")
    factors = truth["factors"]
    print(f"Emission factors used: grid {factors['grid']} kgCO2/kWh ({factors['region']}, {factors['year']}), "
          f"residual {factors['residual']}, diesel {factors['diesel']}")
    local_host = query(db, "SELECT count(server_input_w) AS n, mean(server_input_w) AS w, last(cpu_method) AS m "
                           "FROM host WHERE site='local'")
    if local_host:
        print(f"\nThis machine ({HOST}): {local_host[0]['n'] or 0} raw points, mean server input "
              f"{fmt(local_host[0]['w'], 1)} W, CPU method {local_host[0]['m']} (site 'local' has no facility "
              f"meter, so it gets no PUE: withheld rather than guessed)")
    report_alerts(db, site, scenario.timezone, begin)
    print(f"\nThe data was in {db.target}: measurements site_metrics (PUE, CUE, green "
          "ratio by period), rack_energy, room_energy, meter_energy, host, gpu, meter, device_status, alert, collector_stats "
          "(docs/influx-schema.md). The demo's servers stop now.")


def report_alerts(db: InfluxV1Writer, site: str, zone: str, begin: int) -> None:
    """Every alert event of the run, with the rule's source, and the alerts still firing at the end."""
    events = query(db, f"SELECT * FROM alert WHERE site='{site}' AND time >= {begin}ms")
    print(f"\nAlerts for {site} (profiles {', '.join(DEMO_PROFILES)}; rules/README.md): {len(events)} events")
    latest = {}
    for e in events:
        value = "no data" if e.get("value") is None else f"{e['value']:.4g}"
        threshold = "" if e.get("threshold") is None else f" {e['threshold']:g}"
        print(f"  {local(e['time'], zone)[5:16]}  {e['state']:<8} {e['severity']:<8} {e['rule']:<22} "
              f"{e.get('period') or '':<4} {value} ({e['comparison']}{threshold})")
        latest[(e["rule"], e.get("subject"))] = e
    firing = [e for e in latest.values() if e["state"] == "firing"]
    print(f"Firing at the end: {len(firing)}")
    for e in firing:
        print(f"  {e['rule']}: {e['title']}\n    source: {e['source']}")


def fmt(value, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


if __name__ == "__main__":
    sys.exit(main())
