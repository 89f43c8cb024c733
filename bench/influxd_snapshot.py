"""influxd 1.x alone: how long its cache snapshots take and how long they hold a write, for a large fleet.

    .venv/bin/python bench/influxd_snapshot.py [--hosts 200000] [--points-per-s 22000] [--seconds 180]
                                               [--batch 10000] [--cache-snapshot 128m]

Starts influxd 1.6.7 set up as the throughput benchmark does (bench/collector_throughput.py: no series limits,
`cache-snapshot-memory-size` from --cache-snapshot) in a temp folder, and writes raw `host` points as the collector
does (tags site, room, rack, host; fields cpu_util and power_w; ms timestamps, each host every hosts/points-per-s
seconds) through the collector's v1 writer (`/write`), --batch lines per request at --points-per-s, for
--seconds. Nothing else runs, so this is influxd's own behaviour; compare it with the same figures in the
throughput benchmark, where the broker and the collector share its cores.

The last line is machine-readable: `RESULT points_per_s=... write_p50_s=... write_p99_s=... write_max_s=...
snapshots=... snapshot_s=... db_cpu_us_per_point=...`; `snapshot_s` is the mean time influxd spent writing one
snapshot (its /debug/vars `cacheCompactionDuration`), `write_max_s` the slowest write, which a snapshot usually causes.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from collector_throughput import DATABASE, BenchInfluxd, percentile  # noqa: E402
from collector.lineproto import point, series  # noqa: E402
from collector.writers import InfluxV1Writer  # noqa: E402


def host_series(hosts: int) -> list[str]:
    """The escaped series of every host, racks of 40 in rooms of 100 racks, in a random publishing order."""
    out = [series("host", {"site": "bench", "room": f"room-{i // 4000:02d}", "rack": f"rack-{i // 40:04d}",
                           "host": f"host-{i:06d}"}) for i in range(hosts)]
    random.Random(1).shuffle(out)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hosts", type=int, default=200_000)
    p.add_argument("--points-per-s", type=float, default=22_000, help="host points written per second")
    p.add_argument("--seconds", type=float, default=180, help="how long to write (a 128m snapshot comes after "
                   "about 130 s at the defaults)")
    p.add_argument("--batch", type=int, default=10_000, help="lines per write request (the collector's max_batch)")
    p.add_argument("--cache-snapshot", default="128m", help="influxd's cache-snapshot-memory-size")
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="dcem-influxd-snapshot-") as folder:
        db = BenchInfluxd(Path(folder) / "influxd", args.cache_snapshot)
        db.start()
        try:
            writer = InfluxV1Writer(db.url, DATABASE, timeout_s=60)
            writer.query(f"CREATE DATABASE {DATABASE}")
            hosts = host_series(args.hosts)
            influxd = psutil.Process(db.process.pid)
            cpu0, engine0 = sum(influxd.cpu_times()[:2]), db.engine_counts(DATABASE)
            start = time.time()
            first_ms = int(start * 1000)
            latencies: list[float] = []
            written = 0
            while time.time() - start < args.seconds:
                time.sleep(max(0.0, start + written / args.points_per_s - time.time()))
                lines = []
                for n in range(written, written + args.batch):
                    cycle, index = divmod(n, args.hosts)
                    ts_ms = first_ms + round((cycle * args.hosts + index) * 1000 / args.points_per_s)
                    lines.append(point(hosts[index], {"cpu_util": (n % 100) / 100, "power_w": 200.0 + n % 97}, ts_ms))
                sent_at = time.perf_counter()
                writer.write(lines)
                latencies.append(time.perf_counter() - sent_at)
                written += len(lines)
            elapsed = time.time() - start
            cpu = sum(influxd.cpu_times()[:2]) - cpu0
            engine1 = db.engine_counts(DATABASE)
            writer.close()
        finally:
            db.stop()
    snapshots = engine1["snapshots"] - engine0["snapshots"]
    snapshot_ns = engine1["snapshot_ns"] - engine0["snapshot_ns"]
    result = {
        "points_per_s": round(written / elapsed), "seconds": round(elapsed), "hosts": args.hosts,
        "batch": args.batch, "writes": len(latencies), "write_p50_s": round(percentile(latencies, 0.5), 3),
        "write_p99_s": round(percentile(latencies, 0.99), 3), "write_max_s": round(max(latencies), 3),
        "snapshots": snapshots, "snapshot_s": round(snapshot_ns / snapshots / 1e9, 2) if snapshots else 0,
        "db_cache_snapshot": args.cache_snapshot, "db_cpu_us_per_point": round(cpu / written * 1e6, 1),
        "cores": psutil.cpu_count(),
    }
    print(f"influxd alone: {written} host points in {elapsed:.1f} s, {len(latencies)} writes of {args.batch} lines; "
          f"{snapshots} cache snapshot(s) of {result['snapshot_s']} s on average; slowest write "
          f"{result['write_max_s']} s (p99 {result['write_p99_s']} s)")
    print("RESULT " + " ".join(f"{key}={value}" for key, value in result.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
