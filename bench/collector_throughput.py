"""Collector throughput: agent messages/s from the broker through validation and accounting into InfluxDB.

Product spec target: at least 20,000 agent messages/s sustained at QoS 1 in ONE collector process (raw readings
stored at the per-host resolution, 10 s by default, plus site metrics), reported beside mosquitto_sub (the C
client) receiving the same stream in the same run, with publish-to-stored latency p99 under 2 s.

    .venv/bin/python bench/collector_throughput.py [--rate 20000] [--seconds 30] [--hosts 200000]
                                                       [--db influxd|victoria-metrics] [--client raw|paho]
                                                       [--compiled]

One run, everything on loopback, in a temp folder, stopped at the end (also on Ctrl-C or SIGTERM):

1. the site simulator's scenario for the benchmark (stream_publisher.bench_scenario: --hosts hosts in racks of
   40, rooms of 100 racks, the simulator's utility, UPS-output and cooling meters) and the collector's site
   config for it (simulator.site_config);
2. mosquitto (no persistence unless --broker-persistence; max_queued_messages above the whole stream), and
   influxd 1.6.7 set up for a large fleet (database created; collector on the v1 API) or VictoriaMetrics
   (collector on the v2 API);
3. the real collector as a subprocess, `python -m collector.cli --config <toml>` with the product's ingest
   defaults and collector_stats every second (`--profile FILE` or DCEM_BENCH_PROFILE=FILE runs it under
   cProfile and prints where the time goes; --compiled runs the whole benchmark from a copy of this checkout
   with the compiled collector, DCEM_COMPILE=1, built first);
4. `mosquitto_sub -q 1 -F %U` on the same subscription, writing the arrival time of every message;
5. bench/stream_publisher.py in --publishers processes: the simulator's messages (one sample per message, power
   and energy from simulator.model), --rate messages/s for --seconds s, each device once every
   (hosts + meters)/rate s, QoS 1 with bounded in-flight publishes; they start together once all are ready;
6. while it runs: InfluxDB is polled for the raw `host` points of a few probe racks (publish-to-stored latency:
   first seen minus the ts_ms the publisher put in the payload, the message's scheduled publish time), and the
   collector's collector_stats (messages, accepted, rejected, written_lines) for progress;
7. the collector drains its backlog (bounded by --drain-timeout), then everything is stopped and counted:
   sent (publishers' PUBACKs) vs received by mosquitto_sub vs accepted by the collector vs raw points stored.

The last line is machine-readable: `RESULT key=value ...` (see bench/README.md). Exit code 0 on pass.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pstats
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import stream_publisher as sp  # noqa: E402
from simulator.model import meters as sim_meters  # noqa: E402
from simulator.site_config import site_config  # noqa: E402
from collector.writers import InfluxV1Writer, QueryError  # noqa: E402
from common.local_servers import Influxd, ServerProcess, VictoriaMetrics, find_binary, free_port  # noqa: E402
from tests.compiled_build import add_compiled_option, rerun_compiled_if_asked, running_compiled  # noqa: E402

TARGET_MSGS_PER_S = 20_000
TARGET_P99_S = 2.0
SUB_TOPIC = f"{sp.TOPIC_ROOT}/v1/+/+/+/+/samples"
READY_TOPIC = "bench/ready"
DATABASE = "dcem"
STATS_INTERVAL_S = 1.0  # the collector's collector_stats interval in the benchmark


class Interrupted(Exception):
    pass


def _interrupt(*_):
    raise Interrupted()


# ---------------------------------------------------------------- set-up


def write_site_config(path: Path, scenario) -> None:
    """The collector's site config for the scenario (simulator.site_config), written as JSON, which is YAML too
    (PyYAML's safe_dump takes minutes for 200,000 hosts)."""
    path.write_text(json.dumps(site_config(scenario)))


def probe_racks(scenario, wanted: int) -> list[tuple[str, str]]:
    """(room, rack) of `wanted` racks spread over the site; with --order random their hosts publish at moments
    spread over the cycle."""
    racks = [(room.id, f"r{r:02d}") for room in scenario.rooms for r in range(1, room.racks + 1)]
    n = min(wanted, len(racks))
    return sorted({racks[j * len(racks) // n] for j in range(n)})




class BenchMosquitto(ServerProcess):
    """mosquitto for this benchmark: queues deep enough for the whole stream; persistence optional."""

    def __init__(self, folder: Path, max_queued: int, persistence: bool, inflight: int = 1000):
        folder.mkdir(parents=True, exist_ok=True)
        port = free_port()
        lines = [f"listener {port} 127.0.0.1", "allow_anonymous true", "log_type error", "log_type warning",
                 f"max_queued_messages {max_queued}",
                 # Outgoing QoS 1 window towards MQTT 3.1.1 clients (mosquitto_sub); MQTT 5 clients (the
                 # collector) get their own Receive Maximum (paho: 65535). Also sent to MQTT 5 publishers as
                 # the broker's Receive Maximum, the same bound the publishers keep by themselves.
                 f"max_inflight_messages {inflight}"]
        if persistence:
            lines += ["persistence true", f"persistence_location {folder}/", "autosave_interval 1"]
        else:
            lines.append("persistence false")
        (folder / "mosquitto.conf").write_text("\n".join(lines) + "\n")
        super().__init__([find_binary("mosquitto"), "-c", str(folder / "mosquitto.conf")], port,
                         folder / "mosquitto.log")


class BenchInfluxd(Influxd):
    """influxd 1.6.7 set up for a large fleet as docs/influxdb.md advises: no per-database series and per-tag value
    limits (unless `default_limits`: its default max-values-per-tag = 100000 refuses the points of any host beyond
    the 100,000th, a partial write), and a cache snapshot size of `cache_snapshot` (its default, 25m, is smaller
    than the series keys of 200,000 hosts, so every snapshot writes one TSM block per point)."""

    def __init__(self, folder: Path, cache_snapshot: str, default_limits: bool = False):
        super().__init__(folder)
        settings = f'  cache-snapshot-memory-size = "{cache_snapshot}"\n'
        if not default_limits:
            settings += "  max-values-per-tag = 0\n  max-series-per-database = 0\n"
        config = folder / "influxdb.conf"
        config.write_text(config.read_text().replace("[data]\n", "[data]\n" + settings, 1))

    def engine_counts(self, database: str) -> dict[str, int]:
        """What influxd's storage engine did for `database` so far, from /debug/vars: cache snapshots written to
        TSM files, the time spent writing them (ns), and TSM compactions (every level, full and optimize)."""
        with urllib.request.urlopen(f"{self.url}/debug/vars", timeout=10) as response:
            stats = json.loads(response.read())
        counts = {"snapshots": 0, "snapshot_ns": 0, "compactions": 0}
        for entry in stats.values():
            if isinstance(entry, dict) and entry.get("name") == "tsm1_engine" and \
                    entry.get("tags", {}).get("database") == database:
                values = entry["values"]
                counts["snapshots"] += values.get("cacheCompactions", 0)
                counts["snapshot_ns"] += values.get("cacheCompactionDuration", 0)
                counts["compactions"] += sum(v for k, v in values.items()
                                             if k.startswith("tsm") and k.endswith("Compactions"))
        return counts


def collector_toml(path: Path, args, site: Path, state: Path, broker_port: int, db_url: str) -> None:
    """The collector's TOML: product defaults, stats every second, plus --set SECTION.FIELD=VALUE overrides."""
    q = json.dumps
    sections: dict[str, dict[str, str]] = {
        "mqtt": {"host": q("127.0.0.1"), "port": str(broker_port)},
        "influx": ({"api": q("v1"), "url": q(db_url), "database": q(DATABASE)} if args.db == "influxd" else
                   {"api": q("v2"), "url": q(db_url), "org": q("bench"), "bucket": q(DATABASE),
                    "token": q("unused-by-victoria-metrics")}),
        "ingest": {"client_id": q("dcem-collector-bench")},
        "state": {"folder": q(str(state))},
        "report": {"stats_interval_s": str(STATS_INTERVAL_S)},
        "log": {"level": q("info")},
    }
    for dotted, value in args.overrides:
        section, _, key = dotted.partition(".")
        sections.setdefault(section, {})[key] = value
    text = f"site_config = {q(str(site))}\n"
    for name, fields in sections.items():
        text += f"\n[{name}]\n" + "".join(f"{key} = {value}\n" for key, value in fields.items())
    path.write_text(text)


# ---------------------------------------------------------------- database access


class Db:
    """Reads back what the collector stored: probe points, collector_stats, counts."""

    def __init__(self, kind: str, url: str):
        self.kind = kind
        self.url = url
        self.v1 = InfluxV1Writer(url, DATABASE, timeout_s=10) if kind == "influxd" else None

    def _rows(self, influxql: str) -> list[dict]:
        result = self.v1.query(influxql)["results"][0]
        out = []
        for series in result.get("series", []):
            tags = series.get("tags", {})
            out += [{**tags, **dict(zip(series["columns"], values))} for values in series["values"]]
        return out

    def _export(self, match: str, start_ms: int | None = None) -> list[dict]:
        params = {"match[]": match}
        if start_ms is not None:
            params["start"] = f"{start_ms / 1000:.3f}"
        with urllib.request.urlopen(f"{self.url}/api/v1/export?{urllib.parse.urlencode(params)}",
                                    timeout=10) as response:
            return [json.loads(text) for text in response.read().decode().splitlines() if text]

    def probe_points(self, racks: list[tuple[str, str]], since_ms: int) -> set[tuple[str, int]]:
        """(host, ts_ms) of the raw host points stored for the probe racks' (room, rack) hosts since since_ms
        (cpu_util: every host point has it, a session's first without power included). Tag equality only: a
        regular expression over 200,000 hosts costs influxd ~150 ms a poll."""
        if self.v1:
            where = " OR ".join(f"(room='{room}' AND rack='{rack}')" for room, rack in racks)
            rows = self._rows(f'SELECT cpu_util FROM "host" WHERE ({where}) AND time >= {since_ms}ms '
                              'GROUP BY "host"')
            return {(row["host"], row["time"]) for row in rows}
        rooms, names = "|".join(sorted({r for r, _ in racks})), "|".join(sorted({k for _, k in racks}))
        series = [s for s in self._export(f'host_cpu_util{{room=~"{rooms}",rack=~"{names}"}}', since_ms)
                  if (s["metric"]["room"], s["metric"]["rack"]) in set(racks)]
        return {(s["metric"]["host"], ts) for s in series for ts in s["timestamps"] if ts >= since_ms}

    def stats(self) -> list[dict]:
        """collector_stats points, oldest first: time, messages, accepted, rejected, written_lines, pending."""
        fields = ["messages", "accepted", "rejected", "written_lines", "pending", "backlog_batches",
                  "failed_writes", "write_latency_s", "flushes"]
        if self.v1:
            return self._rows(f"SELECT {', '.join(fields)} FROM collector_stats")
        by_time: dict[int, dict] = {}
        for s in self._export('{__name__=~"collector_stats_.*"}'):
            name = s["metric"]["__name__"].removeprefix("collector_stats_")
            if name in fields:
                for ts, value in zip(s["timestamps"], s["values"]):
                    by_time.setdefault(ts, {"time": ts})[name] = value
        return [by_time[t] for t in sorted(by_time)]

    def last_stats(self) -> dict | None:
        if self.v1:
            rows = self._rows("SELECT last(accepted) AS accepted, last(rejected) AS rejected, "
                              "last(messages) AS messages, last(backlog_batches) AS backlog_batches FROM collector_stats")
            return rows[0] if rows else None
        rows = self.stats()
        return rows[-1] if rows else None

    def count_raw(self, since_ms: int) -> int:
        """Raw `host` and `meter` points stored since since_ms."""
        if self.v1:
            total = 0
            for measurement, field_name in (("host", "cpu_util"), ("meter", "energy_kwh")):
                rows = self._rows(f'SELECT count({field_name}) AS n FROM "{measurement}" WHERE time >= {since_ms}ms')
                total += int(rows[0]["n"]) if rows else 0
            return total
        window = f"{int(time.time() - since_ms / 1000) + 60}s"
        query = f"sum(count_over_time(host_cpu_util[{window}])) + sum(count_over_time(meter_energy_kwh[{window}]))"
        params = urllib.parse.urlencode({"query": query, "time": f"{time.time():.3f}"})
        with urllib.request.urlopen(f"{self.url}/api/v1/query?{params}", timeout=30) as response:
            result = json.loads(response.read())["data"]["result"]
        return int(float(result[0]["value"][1])) if result else 0

    def count_measurements(self, since_ms: int) -> dict[str, int]:
        """Points per other measurement written meanwhile (rack_energy, site_metrics...)."""
        out = {}
        if self.v1:
            for m, f in (("rack_energy", "energy_kwh"), ("meter_energy", "energy_kwh"), ("site_metrics", "pue_status"),
                         ("collector_stats", "accepted")):
                rows = self._rows(f'SELECT count({f}) AS n FROM "{m}"')
                out[m] = int(rows[0]["n"]) if rows else 0
        return out

    def flush(self) -> None:
        if self.kind == "victoria-metrics":
            urllib.request.urlopen(f"{self.url}/internal/force_flush", timeout=10).read()


# ---------------------------------------------------------------- measurement helpers


@dataclass
class Proc:
    name: str
    pid: int
    cpu0: float = 0.0
    cpu1: float = 0.0

    def cpu(self) -> float:
        try:
            t = psutil.Process(self.pid).cpu_times()
            return t.user + t.system
        except psutil.Error:
            return self.cpu1 or self.cpu0

    def mark_start(self) -> None:
        self.cpu0 = self.cpu()

    def mark_end(self) -> None:
        self.cpu1 = self.cpu()

    @property
    def used(self) -> float:
        return max(0.0, self.cpu1 - self.cpu0)


def busy_rate(series: list[tuple[float, float]], start: float, total: int, tail: float = 0.995
              ) -> tuple[float, float, float]:
    """(rate, window start, window end) of a cumulative count series [(t, count)] between its last point at or
    before `start` and its last point below tail x total: the consumer's sustained rate while it had work,
    leaving out the warm-up and the tail."""
    series = sorted(series)
    if len(series) < 2:
        return 0.0, start, start
    before = [p for p in series if p[0] <= start]
    t0, c0 = before[-1] if before else series[0]
    below = [p for p in series if p[0] > t0 and p[1] < tail * total]
    t1, c1 = below[-1] if below else series[-1]
    if t1 <= t0:
        return 0.0, t0, t1
    return (c1 - c0) / (t1 - t0), t0, t1


def behind_schedule_max(series: list[tuple[float, float]], first_s: float, rate: float, total: int) -> float:
    """How far, at most, a consumer's cumulative count series [(t, count)] was behind a stream of `total` messages
    scheduled at `rate` per second from `first_s`: at each point before the last message, t minus the scheduled
    time of the newest message counted (0 when it had everything scheduled by then)."""
    behind = [t - (first_s + (count - 1) / rate) for t, count in series if 0 < count < total]
    return max([0.0, *behind])


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    k = (len(values) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def wait_for_text(path: Path, text: str, timeout_s: float, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with {process.returncode}:\n"
                               f"{path.read_text(errors='replace')[-3000:] if path.exists() else ''}")
        time.sleep(0.1)
    raise RuntimeError(f"{text!r} did not appear in {path} within {timeout_s} s")


def stop_process(process: subprocess.Popen | None, timeout_s: float = 20.0, sig: int = signal.SIGTERM) -> None:
    if process is None or process.poll() is not None:
        return
    try:
        process.send_signal(sig)
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# ---------------------------------------------------------------- profile breakdown

# (label, function name, file suffix): cumulative time of these entry points, per message.
_STAGES = [
    ("MQTT read: socket, MQTT decode (BufferedClient.loop_read)", "loop_read", "collector/service.py"),
    ("  of which socket recv (read-ahead)", "_sock_recv", "collector/service.py"),
    ("  of which PUBLISH packets read ahead", "_publish_burst", "collector/service.py"),
    ("JSON + pydantic decode (decode_batch)", "decode_batch", "common/contract.py"),
    ("topic parse (parse_topic)", "parse_topic", "common/contract.py"),
    ("validation (Ingest._check)", "_check", "collector/ingest.py"),
    ("accounting (EnergyBook.add_host_point)", "add_host_point", "collector/book.py"),
    ("raw host lines (_host_lines)", "_host_lines", "collector/ingest.py"),
    ("line encoding, all lines (lineproto.point)", "point", "collector/lineproto.py"),
    ("line encoding via lineproto.line (rack, site, stats)", "line", "collector/lineproto.py"),
    ("accumulator lines (Reporter.accumulator_lines)", "accumulator_lines", "collector/report.py"),
    ("dirty accumulators (EnergyBook.take_dirty)", "take_dirty", "collector/book.py"),
    ("InfluxDB write in the loop (SpooledOutput.submit)", "submit", "collector/output.py"),
    ("  of which HTTP request/response", "_request", "collector/writers.py"),
    ("output spool append (SpooledOutput.enqueue)", "enqueue", "collector/output.py"),
    ("SQLite state save (StateStore.save)", "save", "collector/state.py"),
    ("PUBACKs queued (BufferedClient.ack_all)", "ack_all", "collector/service.py"),
    ("MQTT write (paho loop_write)", "loop_write", "paho/mqtt/client.py"),
    ("site metrics (Reporter.site_lines)", "site_lines", "collector/report.py"),
    ("select() wait (idle)", "<built-in method select.select>", ""),
    ("whole flush (Collector.flush)", "flush", "collector/service.py"),
    ("whole run loop (Collector.run)", "run", "collector/service.py"),
]


def profile_report(path: Path, messages: int, top: int = 25) -> list[str]:
    stats = pstats.Stats(str(path))
    out = []
    by_key = stats.stats  # {(file, line, func): (cc, nc, tt, ct, callers)}
    total_tt = sum(v[2] for v in by_key.values())
    out.append(f"cProfile of the collector: {total_tt:.1f} s of profiled time over {messages} messages "
               f"({total_tt / max(1, messages) * 1e6:.0f} us/message, inflated by cProfile)")
    out.append("Where the time goes in the main thread (cProfile sees only the thread that started it: a writer "
               "thread's HTTP requests are not included); cumulative per entry point, indented rows are part of "
               "the row above:")
    for label, func, file_suffix in _STAGES:
        ct = sum(v[3] for (f, _l, name), v in by_key.items()
                 if name == func and (not file_suffix or f.endswith(file_suffix)))
        calls = sum(v[1] for (f, _l, name), v in by_key.items()
                    if name == func and (not file_suffix or f.endswith(file_suffix)))
        out.append(f"  {label:<50} {ct:8.2f} s {ct / max(1, messages) * 1e6:7.1f} us/msg  {calls:>9} calls")
    for order in ("cumulative", "tottime"):
        out.append(f"Top {top} functions by {order}:")
        rows = sorted(by_key.items(), key=lambda kv: kv[1][3 if order == "cumulative" else 2], reverse=True)[:top]
        for (f, line, name), (cc, nc, tt, ct, _callers) in rows:
            where = f"{Path(f).parent.name}/{Path(f).name}:{line}" if f != "~" else "~"
            out.append(f"  {ct:8.2f} cum {tt:8.2f} tot {nc:>9} calls  {where}({name})")
    return out


# ---------------------------------------------------------------- the run


@dataclass
class Run:
    args: argparse.Namespace
    folder: Path
    procs: dict[str, Proc] = field(default_factory=dict)
    children: list[subprocess.Popen] = field(default_factory=list)
    servers: list[ServerProcess] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)

    def say(self, text: str) -> None:
        print(text, flush=True)
        self.lines.append(text)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    exit_code = rerun_compiled_if_asked(args.compiled, Path(__file__), sys.argv[1:] if argv is None else argv)
    if exit_code is not None:
        return exit_code
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    folder = Path(tempfile.mkdtemp(prefix="dcem-collector-bench-"))
    run = Run(args, folder)
    result: dict | None = None
    try:
        result = execute(run)
    except Interrupted:
        print("interrupted: stopping everything", file=sys.stderr)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for child in run.children:
            stop_process(child, timeout_s=5 if result is None else 60)
        for server in run.servers:
            server.stop()
        if args.keep:
            print(f"kept: {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
    if result is None:
        return 2
    print("RESULT " + " ".join(f"{k}={v}" for k, v in result.items()), flush=True)
    return 0 if result["pass"] == "yes" else 1


def execute(run: Run) -> dict:
    args, folder = run.args, run.folder
    hosts = args.hosts
    total = int(round(args.rate / args.publishers * args.seconds)) * args.publishers
    run.say(f"collector throughput: rate {args.rate:g}/s for {args.seconds:g} s = {total} messages over {hosts} hosts "
            f"(each every {hosts / args.rate:g} s, {args.order} order), {args.publishers} {args.client} publisher process(es), "
            f"db {args.db}, nproc {os.cpu_count()}, folder {folder}")

    # 1. the simulator's scenario and the collector's site config for it
    t = time.monotonic()
    scenario = sp.bench_scenario(hosts, args.gpus)
    site = folder / "site.yaml"
    write_site_config(site, scenario)
    racks = sum(room.racks for room in scenario.rooms)
    devices = hosts + len(sim_meters(scenario))
    probe = probe_racks(scenario, args.probe_racks)
    probe_hosts = sum(room.hosts_per_rack for room in scenario.rooms for r in range(1, room.racks + 1)
                      if (room.id, f"r{r:02d}") in probe)

    # 2. servers
    broker = BenchMosquitto(folder / "broker", max_queued=max(1_000_000, 2 * total), persistence=args.broker_persistence,
                            inflight=args.broker_inflight)
    broker.start()
    run.servers.append(broker)
    if args.db == "influxd":
        db_server = BenchInfluxd(folder / "influxd", args.influx_cache_snapshot, args.influx_default_limits)
        db_server.start()
        run.servers.append(db_server)
        InfluxV1Writer(db_server.url, DATABASE).query(f"CREATE DATABASE {DATABASE}")
    else:
        db_server = VictoriaMetrics(folder / "vm")
        db_server.start()
        run.servers.append(db_server)
    db = Db(args.db, db_server.url)

    # publishers: the simulator's messages, built and connected while the collector starts
    pubs, pub_errs = [], []
    start_file = folder / "start-at"
    run_start_ms = int(time.time() * 1000)
    for p in range(args.publishers):
        out_path, err_path = folder / f"publisher-{p}.json", folder / f"publisher-{p}.err"
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            pubs.append((subprocess.Popen(
                [sys.executable, str(ROOT / "bench" / "stream_publisher.py"), "--port", str(broker.port),
                 "--rate", str(args.rate), "--seconds", str(args.seconds), "--hosts", str(hosts),
                 "--gpus", str(args.gpus), "--procs", str(args.publishers), "--proc-index", str(p),
                 "--max-inflight", str(args.max_inflight), "--client", args.client, "--order", args.order,
                 "--run-start-ms", str(run_start_ms), "--start-file", str(start_file),
                 "--ack-timeout", str(args.drain_timeout), "--raw-resolution-s", str(args.raw_resolution_s)],
                cwd=ROOT, stdout=out, stderr=err, start_new_session=True), out_path))
        pub_errs.append((pubs[-1][0], err_path))
        run.children.append(pubs[-1][0])

    # 3. collector
    state = folder / "state"
    toml = folder / "collector.toml"
    collector_toml(toml, args, site, state, broker.port, db_server.url)
    collector_log = folder / "collector.log"
    profile = args.profile or os.environ.get("DCEM_BENCH_PROFILE")
    profile_path = Path(profile).resolve() if profile else None
    prefix = [sys.executable, *(["-m", "cProfile", "-o", str(profile_path)] if profile_path else [])]
    argv = [*prefix, "-m", "collector.cli", "--config", str(toml)]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    with open(collector_log, "wb") as log:
        collector = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
    run.children.append(collector)
    wait_for_text(collector_log, "event=mqtt-connected", args.startup_timeout, collector)
    try:  # collectors that confirm their subscription say so (mqtt-subscribed)
        wait_for_text(collector_log, "event=mqtt-subscribed", 5.0, collector)
    except RuntimeError:
        if collector.poll() is not None:
            raise
    collector_start_s = time.monotonic() - t
    run.say(f"collector connected after {collector_start_s:.1f} s (site config with {hosts} hosts, "
            f"{racks} racks){' under cProfile' if profile_path else ''}")

    # 4. mosquitto_sub on the same subscription (+ a retained marker telling when it is subscribed)
    subprocess.run([find_binary("mosquitto_pub"), "-h", "127.0.0.1", "-p", str(broker.port), "-q", "1", "-r",
                    "-t", READY_TOPIC, "-m", "ready"], check=True, timeout=10)
    sub_out = folder / "mosquitto_sub.out"
    bound_s = int(args.seconds + args.drain_timeout + 60)
    with open(sub_out, "wb") as out:
        sub = subprocess.Popen([find_binary("mosquitto_sub"), "-h", "127.0.0.1", "-p", str(broker.port), "-q", "1",
                                "-i", "bench-mosquitto-sub", "-t", SUB_TOPIC, "-t", READY_TOPIC,
                                "-C", str(total + 1), "-W", str(bound_s), "-F", "%U"],
                               stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    run.children.append(sub)
    deadline = time.monotonic() + 10
    while sub_out.stat().st_size == 0:
        if time.monotonic() > deadline or sub.poll() is not None:
            raise RuntimeError(f"mosquitto_sub did not subscribe: {sub_out.read_text()[-500:]}")
        time.sleep(0.02)

    # 5. publishers (started with the collector, they build every message of the run meanwhile), then all
    # started together at start_at once every one is ready
    while not all(path.exists() and "ready" in path.read_text(errors="replace") for _, path in pub_errs):
        for p, err_path in pub_errs:
            if p.poll() is not None:
                raise RuntimeError(f"publisher exited with {p.returncode}: {err_path.read_text()[-2000:]}")
        time.sleep(0.05)
    start_at = time.time() + args.publisher_startup_s
    start_file.write_text(f"{start_at:.3f}")

    run.procs = {"collector": Proc("collector", collector.pid), "mosquitto": Proc("mosquitto", broker.process.pid),
                 "mosquitto_sub": Proc("mosquitto_sub", sub.pid), args.db: Proc(args.db, db_server.process.pid),
                 **{f"publisher-{i}": Proc(f"publisher-{i}", p.pid) for i, (p, _) in enumerate(pubs)},
                 "benchmark": Proc("benchmark", os.getpid())}
    while time.time() < start_at - 0.05:
        time.sleep(0.01)
    for proc in run.procs.values():
        proc.mark_start()
    host_cpu0 = psutil.cpu_times()
    t_start_wall = start_at
    start_ms = int(start_at * 1000)

    # 6. monitor: probe latency, collector progress
    seen: dict[tuple[str, int], tuple[float, float]] = {}  # point -> (first seen, previous poll's start)
    prev_poll = time.time()
    poll_s: list[float] = []
    backlog_now = 0
    pub_done_at = None
    drained_at = None
    last_change = time.time()
    last_value = -1
    last_seen: tuple = ()
    next_stats = 0.0
    cursor_ms = start_ms
    deadline = start_at + args.seconds + args.drain_timeout
    poll_errors = 0
    while True:
        now = time.time()
        if now > deadline:
            run.say(f"drain timeout: the collector did not finish within {args.drain_timeout:g} s after publishing")
            break
        try:
            t_q = time.time()
            db.flush() if args.db == "victoria-metrics" else None
            found = db.probe_points(probe, cursor_ms)
            t_done = time.time()
            poll_s.append(t_done - t_q)
            for key in found:
                if key not in seen:
                    seen[key] = (t_done, prev_poll)
            prev_poll = t_q
            if seen:
                cursor_ms = max(start_ms, max(ts for _, ts in seen) - 10_000)
            if now >= next_stats:
                next_stats = now + 0.5
                last = db.last_stats()
                if last:
                    value = (last.get("accepted") or 0) + (last.get("rejected") or 0)
                    backlog_now = last.get("backlog_batches") or 0
                    if (value, backlog_now) != last_seen:
                        last_seen, last_change = (value, backlog_now), now
                    last_value = value
        except (QueryError, OSError, ValueError, KeyError) as exc:
            poll_errors += 1
            if poll_errors in (1, 10, 100):
                run.say(f"poll error ({poll_errors}): {str(exc)[:200]}")
        if pub_done_at is None and all(p.poll() is not None for p, _ in pubs):
            pub_done_at = time.time()
        # caught up: everything accepted and nothing left in the output spool (collectors that write to
        # InfluxDB from a thread of their own spool first)
        if pub_done_at is not None and last_value >= total and not backlog_now:
            drained_at = time.time()
            break
        if pub_done_at is not None and now - last_change > args.stall_timeout:
            run.say(f"collector made no progress for {args.stall_timeout:g} s: stopping")
            break
        if collector.poll() is not None:
            run.say(f"collector exited with {collector.returncode}")
            break
        time.sleep(max(0.0, args.poll_interval - (time.time() - now)))
    end_wall = time.time()
    for proc in run.procs.values():
        if not proc.name.startswith("publisher"):
            proc.mark_end()
    host_cpu1 = psutil.cpu_times()
    # publishers have exited by now; their own JSON reports their CPU
    publishers = []
    for p, out_path in pubs:
        stop_process(p, timeout_s=max(5.0, args.drain_timeout))
        text = out_path.read_text().strip()
        publishers.append(json.loads(text.splitlines()[-1]) if text else {"sent": 0, "acked": 0, "cpu_s": 0})

    # let the last probe points and stats land, then stop the collector (it flushes and logs its counters)
    time.sleep(1.5)
    db.flush()
    try:
        for key in db.probe_points(probe, start_ms):
            seen.setdefault(key, (time.time(), prev_poll))
    except (QueryError, OSError):
        pass
    stats_rows = db.stats()
    stop_process(sub, timeout_s=5)
    t_stop = time.monotonic()
    stop_process(collector, timeout_s=args.drain_timeout + 120)
    collector_stop_s = time.monotonic() - t_stop
    log_text = collector_log.read_text(errors="replace")
    stopped = re.search(r"event=collector-stopped messages=(\d+) backlog_batches=(\d+)", log_text)
    db.flush()
    stored_raw = db.count_raw(start_ms - 60_000)
    other_counts = db.count_measurements(start_ms)
    engine = db_server.engine_counts(DATABASE) if args.db == "influxd" else {}

    # ---- figures
    sent = sum(p.get("sent", 0) for p in publishers)
    acked = sum(p.get("acked", 0) for p in publishers)
    planned = sum(p.get("planned", 0) for p in publishers)
    pub_failed = sum(p.get("publish_failed", 0) + p.get("ack_failures", 0) for p in publishers)
    first_ms = min((p["first_ts_ms"] for p in publishers if p.get("first_ts_ms")), default=start_ms)
    last_ms = max((p["last_ts_ms"] for p in publishers if p.get("last_ts_ms")), default=start_ms)
    pub_seconds = max(1e-9, (last_ms - first_ms) / 1000)
    pub_rate = (sent - 1) / pub_seconds if sent > 1 else 0.0
    pub_end_wall = last_ms / 1000

    final = stats_rows[-1] if stats_rows else {}
    rejected = int(final.get("rejected") or 0)
    collector_messages = int(stopped.group(1)) if stopped else int(final.get("messages") or 0)
    # the exit log counts every message flushed, including those still pending at the last stats line
    accepted = max(int(final.get("accepted") or 0), collector_messages - rejected)
    drained = drained_at is not None
    lost = sent - accepted
    same_slot = sum(p.get("same_slot", 0) for p in publishers)
    unstored = accepted - same_slot - stored_raw  # 0 when every raw reading the collector should store is stored
    failed_writes = int(final.get("failed_writes") or 0)
    backlog = int(final.get("backlog_batches") or 0)
    rejections = re.findall(r"event=influxdb-batch-rejected.*", log_text)
    influx_rejections = len(rejections)
    influx_rejection_sample = rejections[0] if rejections else ""
    stats_series = [(r["time"] / 1000, (r.get("accepted") or 0) + (r.get("rejected") or 0)) for r in stats_rows]
    window_start = t_start_wall + args.warmup
    c_rate, c_t0, c_t1 = busy_rate(stats_series, window_start, sent)
    lines_series = {r["time"] / 1000: r.get("written_lines") or 0 for r in stats_rows}
    points_per_s = 0.0
    if c_t1 > c_t0 and c_t0 in lines_series and c_t1 in lines_series:
        points_per_s = (lines_series[c_t1] - lines_series[c_t0]) / (c_t1 - c_t0)
    handled_series = [(r["time"] / 1000, r.get("messages") or 0) for r in stats_rows]
    behind_max_s = behind_schedule_max(handled_series, first_ms / 1000, args.rate, sent)
    caught_up = next((r["time"] / 1000 for r in stats_rows
                      if (r.get("accepted") or 0) + (r.get("rejected") or 0) >= sent
                      and not r.get("backlog_batches")), None) if sent else None
    drain_s = (caught_up - pub_end_wall) if caught_up else float("nan")

    sub_times = []
    for text in sub_out.read_text(errors="replace").splitlines()[1:]:  # the first is the retained marker
        try:
            sub_times.append(float(text))
        except ValueError:
            pass
    sub_received = len(sub_times)
    s_rate, s_t0, s_t1 = busy_rate([(t, i + 1) for i, t in enumerate(sub_times)], window_start, sent)
    sub_drain_s = (sub_times[-1] - pub_end_wall) if sub_times else float("nan")

    latencies = sorted(seen[key][0] - key[1] / 1000 for key in seen if key[1] >= start_ms)
    lower = sorted(max(0.0, seen[key][1] - key[1] / 1000) for key in seen if key[1] >= start_ms)
    expected_probe = round(sent * probe_hosts / devices) if devices else 0
    p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)

    window_s = max(1e-9, end_wall - t_start_wall)
    cpu = {name: proc.used for name, proc in run.procs.items()}
    for i, p in enumerate(publishers):
        cpu[f"publisher-{i}"] = p.get("cpu_s", 0.0)  # its publishing loop, start-up left out
    publisher_cpu = sum(v for k, v in cpu.items() if k.startswith("publisher"))
    busy = sum(getattr(host_cpu1, f) - getattr(host_cpu0, f) for f in ("user", "system", "nice", "irq", "softirq", "steal"))
    idle = sum(getattr(host_cpu1, f) - getattr(host_cpu0, f) for f in ("idle", "iowait"))
    host_busy_pct = 100 * busy / max(1e-9, busy + idle)
    collector_us_per_msg = cpu["collector"] / max(1, collector_messages) * 1e6
    cores = os.cpu_count()

    # ---- report
    run.say("")
    run.say(f"publishers: sent {sent} of {planned} planned, PUBACKs {acked}, failures {pub_failed}, "
            f"{pub_rate:,.0f} msg/s achieved over {pub_seconds:.1f} s "
            f"(behind schedule at most {max((p.get('behind_max_s', 0) for p in publishers), default=0):.2f} s, "
            f"in-flight bound {args.max_inflight} hit for "
            f"{sum(p.get('inflight_blocked_s', 0) for p in publishers):.2f} s), CPU {publisher_cpu:.1f} s "
            f"({100 * publisher_cpu / pub_seconds:.0f} % of one core)")
    run.say(f"collector: accepted {accepted}, rejected {rejected}, flushed {collector_messages} (its exit log: "
            f"{'collector-stopped messages=' + stopped.group(1) if stopped else 'not found'}), lost {lost}"
            + ("" if drained else " (NOT DRAINED: the rest was still queued in the broker when the run stopped)"))
    run.say(f"  sustained {c_rate:,.0f} msg/s accepted over its busy window {c_t1 - c_t0:.1f} s "
            f"(from publish start + {args.warmup:g} s until 99.5 % accepted); "
            f"{points_per_s:,.0f} points/s written (written_lines)")
    run.say(f"  caught up {drain_s:+.1f} s after the last publish; CPU {cpu['collector']:.1f} s = "
            f"{collector_us_per_msg:.0f} us per message ({100 * cpu['collector'] / window_s:.0f} % of one core over "
            f"{window_s:.1f} s); start-up {collector_start_s:.1f} s, stop {collector_stop_s:.1f} s")
    run.say(f"  its handling (messages flushed: spooled and acknowledged; from collector_stats, every "
            f"{STATS_INTERVAL_S:g} s) was at most {behind_max_s:.2f} s behind the publish schedule; latency beyond "
            f"that is the write to the database and the probe's polling")
    run.say(f"mosquitto_sub (C client, QoS 1, same subscription): received {sub_received}, "
            f"{s_rate:,.0f} msg/s over its busy window {s_t1 - s_t0:.1f} s, last message "
            f"{sub_drain_s:+.2f} s after the last publish, CPU {cpu['mosquitto_sub']:.1f} s")
    run.say(f"stored raw host and meter points since the start: {stored_raw} = accepted {accepted} - {same_slot} published "
            f"within their host's previous {args.raw_resolution_s:g} s raw slot (publish jitter; not stored as raw, "
            f"by design) - {unstored} missing; failed writes {failed_writes}, output backlog at the end "
            f"{backlog} batches; other points: {other_counts}")
    if engine:
        run.say(f"influxd (cache-snapshot-memory-size {args.influx_cache_snapshot}): {engine['snapshots']} cache "
                f"snapshots written to TSM files in {engine['snapshot_ns'] / 1e9:.1f} s, "
                f"{engine['compactions']} TSM compactions")
    if influx_rejections:
        run.say(f"  the collector logged {influx_rejections} influxdb-batch-rejected event(s), e.g.: "
                f"{influx_rejection_sample[:300]}")
    run.say(f"publish-to-stored latency over {len(latencies)} probe points of the {probe_hosts} hosts of racks "
            f"{','.join('/'.join(r) for r in probe)} ({expected_probe} expected; InfluxDB polled every {args.poll_interval:g} s, so the figures are "
            f"upper bounds by up to one poll): p50 {p50:.3f} s, p90 {percentile(latencies, 0.9):.3f} s, p99 {p99:.3f} s, "
            f"max {latencies[-1] if latencies else float('nan'):.3f} s; lower bounds (not yet visible at the "
            f"previous poll): p50 {percentile(lower, 0.5):.3f} s, p99 {percentile(lower, 0.99):.3f} s; "
            f"poll query {1000 * statistics.mean(poll_s) if poll_s else 0:.0f} ms mean")
    run.say("CPU seconds over the run window " + f"({window_s:.1f} s, host {host_busy_pct:.0f} % busy of "
            f"{cores} cores): " + ", ".join(f"{k} {v:.1f}" for k, v in cpu.items()))
    if profile_path and profile_path.exists():
        run.say("")
        for text in profile_report(profile_path, collector_messages):
            run.say(text)

    target_rate = args.rate >= TARGET_MSGS_PER_S and pub_rate >= 0.98 * args.rate
    kept_up = caught_up is not None and drain_s <= TARGET_P99_S
    passed = (target_rate and kept_up and drained and lost == 0 and rejected == 0 and unstored == 0 and pub_failed == 0 and sent == planned
              and c_rate >= 0.97 * TARGET_MSGS_PER_S and len(latencies) > 0 and p99 < TARGET_P99_S
              and not profile_path)
    return {
        "collector_msgs_per_s": round(c_rate), "mosquitto_sub_msgs_per_s": round(s_rate),
        "ratio": round(c_rate / s_rate, 3) if s_rate else 0, "points_per_s": round(points_per_s),
        "latency_p50_s": round(p50, 3), "latency_p99_s": round(p99, 3), "sent": sent, "accepted": accepted,
        "lost": lost, "cores": cores, "pass": "yes" if passed else "no", "compiled": "yes" if running_compiled() else "no",
        "rate": f"{args.rate:g}", "seconds": f"{args.seconds:g}", "hosts": hosts, "gpus": args.gpus,
        "meter_messages": sum(p.get("meter_messages", 0) for p in publishers), "engine": "simulator", "db": args.db,
        "publisher": f"{args.client}x{args.publishers}", "order": args.order, "publish_rate": round(pub_rate), "planned": planned,
        "acked": acked, "sub_received": sub_received, "rejected": rejected, "stored_raw": stored_raw, "same_slot": same_slot, "unstored": unstored, "failed_writes": failed_writes,
        "drained": "yes" if drained else "no", "drain_s": round(drain_s, 2), "handled_behind_max_s": round(behind_max_s, 2), "latency_max_s": round(latencies[-1], 3) if latencies else "nan",
        "probe_points": len(latencies), "collector_cpu_s": round(cpu["collector"], 1),
        "collector_us_per_msg": round(collector_us_per_msg), "mosquitto_cpu_s": round(cpu["mosquitto"], 1),
        "publisher_cpu_s": round(publisher_cpu, 1), "sub_cpu_s": round(cpu["mosquitto_sub"], 1),
        "db_cpu_s": round(cpu[args.db], 1), "host_busy_pct": round(host_busy_pct),
        **({"db_cache_snapshot": args.influx_cache_snapshot, "db_snapshots": engine["snapshots"],
            "db_snapshot_s": round(engine["snapshot_ns"] / engine["snapshots"] / 1e9, 2) if engine["snapshots"] else 0,
            "db_compactions": engine["compactions"]} if engine else {}),
        "profiled": "yes" if profile_path else "no",
        "settings": ";".join(f"{k}={v}" for k, v in args.overrides).replace(" ", "").replace('"', "") or "defaults",
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rate", type=float, default=20000, help="messages/s offered (default 20000)")
    p.add_argument("--seconds", type=float, default=30, help="how long to publish")
    p.add_argument("--hosts", type=int, default=None, help="hosts in the site (default rate x 10: each every 10 s)")
    p.add_argument("--gpus", type=int, default=0,
                   help="GPUs per simulated host (default 0; each GPU adds a raw gpu point per stored host point)")
    p.add_argument("--db", choices=["influxd", "victoria-metrics"], default="influxd")
    p.add_argument("--client", choices=["paho", "raw"], default="raw",
                   help="publisher MQTT client: a minimal raw-socket one sending pre-built packets (~5 us CPU per "
                        "message, the default) or paho-mqtt (~40 us)")
    p.add_argument("--publishers", type=int, default=None,
                   help="publisher processes (default: paho 1 per 12,000 msg/s, raw 1)")
    p.add_argument("--max-inflight", type=int, default=1000, help="QoS 1 publishes awaiting PUBACK per publisher")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds after the start left out of the rates")
    p.add_argument("--drain-timeout", type=float, default=None,
                   help="longest wait after publishing for the collector to catch up (default 60 + 2 x seconds)")
    p.add_argument("--stall-timeout", type=float, default=20.0, help="stop when the collector makes no progress")
    p.add_argument("--startup-timeout", type=float, default=300.0, help="longest wait for the collector to connect")
    p.add_argument("--publisher-startup-s", type=float, default=1.0,
                   help="delay between every publisher being ready and the common start")
    p.add_argument("--probe-racks", type=int, default=5, help="racks (40 hosts each) whose stored points are timed")
    p.add_argument("--order", choices=["random", "rack"], default="random",
                   help="host order within a publishing cycle: a fixed shuffle (independent agents) or rack by rack")
    p.add_argument("--poll-interval", type=float, default=0.2, help="how often InfluxDB is polled for them")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="collector setting as a TOML value, e.g. --set ingest.max_batch=10000 "
                        "--set 'mqtt.protocol=\"3.1.1\"' (then consider --broker-inflight)")
    p.add_argument("--broker-inflight", type=int, default=1000,
                   help="mosquitto max_inflight_messages: its QoS 1 window towards MQTT 3.1.1 subscribers")
    p.add_argument("--influx-cache-snapshot", default="128m", metavar="SIZE",
                   help="influxd cache-snapshot-memory-size (default 128m, docs/influxdb.md; influxd's own is 25m)")
    p.add_argument("--influx-default-limits", action="store_true",
                   help="keep influxd's max-values-per-tag = 100000 (refuses hosts beyond the 100,000th)")
    p.add_argument("--broker-persistence", action="store_true", help="mosquitto persistence (autosave every 1 s)")
    p.add_argument("--profile", help="run the collector under cProfile, writing this file (or DCEM_BENCH_PROFILE)")
    p.add_argument("--keep", action="store_true", help="keep the temp folder (logs, configs, outputs)")
    add_compiled_option(p)
    args = p.parse_args(argv)
    args.hosts = args.hosts or int(args.rate * 10)
    args.drain_timeout = args.drain_timeout if args.drain_timeout is not None else 60 + 2 * args.seconds
    args.publishers = args.publishers or (1 if args.client == "raw" else max(1, math.ceil(args.rate / 12_000)))
    args.overrides = []
    for item in args.set:
        key, _, value = item.partition("=")
        if "." not in key or not value:
            p.error(f"--set {item!r}: expected SECTION.FIELD=VALUE")
        args.overrides.append((key.strip(), value.strip()))
    args.raw_resolution_s = float(dict(args.overrides).get("ingest.raw_resolution_s", 10.0))
    return args


if __name__ == "__main__":
    sys.exit(main())
