"""The demo: a broker, a database, this machine's agent and the collector, on loopback, for a minute.

Starts mosquitto and InfluxDB 1.x with configs in a temporary folder, runs the collector and the real
agent of this machine (without RAPL or a GPU it says so and uses its CPU model), prints what the agent
publishes as it arrives, then what the collector stored. Everything it started is stopped at the end,
also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from collector.writers import InfluxV1Writer
from common.contract import SAMPLES_CHANNEL, decode_batch, subscription
from common.local_servers import Influxd, Mosquitto
from common.mqtt import MqttConfig, connect, make_client

HOST = socket.gethostname().split(".")[0] or "demo-host"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="how long the agent runs")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    with tempfile.TemporaryDirectory(prefix="dcem-demo-") as folder:
        return run(Path(folder), args.seconds)


def run(folder: Path, seconds: float) -> int:
    broker, influx = Mosquitto(folder / "broker"), Influxd(folder / "influxd")
    processes: list[subprocess.Popen] = []
    try:
        broker.start()
        influx.start()
        db = InfluxV1Writer(influx.url, "dcem")
        db.query("CREATE DATABASE dcem")
        print(f"mosquitto on 127.0.0.1:{broker.port}, InfluxDB on {influx.url} (database dcem)\n")
        collector_config = write_configs(folder, broker.port, influx.url)
        processes.append(subprocess.Popen([sys.executable, "-m", "collector.cli", "--config", str(collector_config),
                                          "--log-level", "warning"]))
        watch_samples(broker.port)
        print(f"agent of this machine ({HOST}) sampling every second for {seconds:.0f} s; what it publishes:")
        agent = subprocess.Popen([sys.executable, "-m", "agent.cli", "--config", str(folder / "agent.toml"),
                                  "--count", str(int(seconds))])
        processes.append(agent)
        agent.wait()
        time.sleep(3)
        print_stored(db)
        return 0
    except KeyboardInterrupt:
        print("\ninterrupted; stopping everything")
        return 130
    finally:
        for process in processes:
            if process.poll() is None:
                process.terminate()
                process.wait(20)
        influx.stop()
        broker.stop()


def write_configs(folder: Path, port: int, influx_url: str) -> Path:
    (folder / "site.yaml").write_text(f"""
sites:
  - id: demo
    name: "Demo site"
    timezone: Asia/Shanghai
    grid_region: central
    rooms:
      - id: lab
        racks:
          - id: r01
            hosts: [{HOST}]
""")
    (folder / "agent.toml").write_text(f"""
[identity]
site = "demo"
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
""")
    config = folder / "collector.toml"
    config.write_text(f"""
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
metrics_interval_s = 5.0
""")
    return config


def watch_samples(port: int) -> None:
    """Print a line for every batch the agent publishes."""
    client = make_client(MqttConfig(host="127.0.0.1", port=port), "demo-watcher")

    def show(_client, _userdata, message) -> None:
        batch = decode_batch(message.payload)
        for sample in batch.samples:
            parts = [f"{r.component}={r.power_w:.1f}W({r.method})" for r in sample.readings if r.power_w is not None]
            print(f"{message.topic}  seq={sample.seq}  {'  '.join(parts) or '(first sample: counters start)'}")

    client.on_connect = lambda c, *_: c.subscribe(subscription(SAMPLES_CHANNEL), qos=1)
    client.on_message = show
    connect(client, MqttConfig(host="127.0.0.1", port=port))
    threading.Thread(target=client.loop_forever, daemon=True).start()


def print_stored(db: InfluxV1Writer) -> None:
    def query(text: str) -> list[dict]:
        result = db.query(text)["results"][0]
        series = result.get("series", [])
        return [dict(zip(s["columns"], v)) for s in series for v in s["values"]]

    print("\nStored in InfluxDB (database dcem):")
    hosts = query("SELECT count(server_input_w) AS points, mean(server_input_w) AS mean_w FROM host")
    if hosts:
        print(f"  host: {hosts[0]['points']} raw points, mean server input {hosts[0]['mean_w']:.1f} W (estimated)")
    for rack in query("SELECT energy_kwh, host_coverage FROM rack_energy"):
        print(f"  rack_energy bin {time.strftime('%H:%M', time.gmtime(rack['time'] / 1000))}Z: "
              f"{rack['energy_kwh'] * 1000:.3f} Wh, host coverage {rack['host_coverage']:.1%}")
    for metric in query("SELECT pue, pue_status, e_it_kwh FROM site_metrics WHERE period='1h'"):
        print(f"  site_metrics 1h: PUE {metric['pue']} ({metric['pue_status']}), IT {metric['e_it_kwh']} kWh")
    print("  (no facility meter in this demo yet: PUE is withheld rather than guessed)")
    print(f"\nThe data was in {db.target}; the demo's servers stop now.")


if __name__ == "__main__":
    sys.exit(main())
