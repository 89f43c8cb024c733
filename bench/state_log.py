"""The cost of the collector's point log in steady state: `StateStore.save` per new point, compaction included.

    .venv/bin/python bench/state_log.py [--hosts 200000] [--keep 16] [--cycles 70] [--batch 10000] [--compiled]

The throughput benchmark's runs are too short to show it: the log is first compacted once it holds twice the points
the book holds (`keep` + 1 per session), which at 200,000 hosts and one message per 10 s takes about 340 s. From then
on a compaction pass looks every logged point up in the book (see collector/state.py). Here every host sends one
point per cycle (a fixed shuffle, `--batch` points per save, as the collector's flushes), into a real SQLite state
in a temp folder, with no MQTT, no ingest and no database. It prints the save time per new point for every cycle
once compaction has begun, and one machine-readable line:

    RESULT us_per_point=... us_per_point_in_pass=... us_per_point_between=... cycles_in_pass_pct=...
           log_max_points=... held_points=... hosts=... keep=... period_cycles=...

`us_per_point` is the mean over one period, from the first pass's start to the second's (or to the last cycle);
compare it with `us_per_point_between` (appending alone, between passes). --compiled runs it from a copy of this
checkout with the compiled collector (DCEM_COMPILE=1, built first).
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from collector.accounting import Point  # noqa: E402
from collector.book import EnergyBook  # noqa: E402
from collector.site import stream_key  # noqa: E402
from collector.state import StateStore  # noqa: E402
from tests.compiled_build import add_compiled_option, rerun_compiled_if_asked, running_compiled  # noqa: E402

T0_MS = 1_796_000_000_000
STEP_MS = 10_000


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hosts", type=int, default=200_000)
    p.add_argument("--keep", type=int, default=16, help="points kept per session (the collector's state.keep_points)")
    p.add_argument("--cycles", type=int, default=70, help="points per host")
    p.add_argument("--batch", type=int, default=10_000, help="points per save (the collector's ingest.max_batch)")
    add_compiled_option(p)
    args = p.parse_args(argv)
    exit_code = rerun_compiled_if_asked(args.compiled, Path(__file__), sys.argv[1:] if argv is None else argv)
    if exit_code is not None:
        return exit_code

    streams = [stream_key("host", "bench", f"hall-{h // 40_000:02d}", f"r{h // 40:04d}", f"h{h:06d}")
               for h in range(args.hosts)]
    sessions = [f"sim-{T0_MS}-h{h:06d}" for h in range(args.hosts)]
    order = list(range(args.hosts))
    random.Random(1).shuffle(order)
    book = EnergyBook(index=None, keep_points=args.keep)
    period: list[tuple[float, bool]] = []  # (µs per new point, compacting) of each cycle from the first pass on
    log_max = 0
    gc.disable()  # the book's points live long; the collector freezes them out of the collector's walks likewise
    with tempfile.TemporaryDirectory(prefix="dcem-state-log-") as folder:
        store = StateStore(Path(folder) / "state.db")
        for cycle in range(args.cycles):
            spent, passes = 0.0, 0
            for first in range(0, args.hosts, args.batch):
                batch = []
                for h in order[first:first + args.batch]:
                    point = Point(sessions[h], cycle, T0_MS + cycle * STEP_MS, cycle * 3000.0)
                    book.restore_point(streams[h], point)  # as EnergyBook keeps an accepted point, without bins
                    batch.append((streams[h], point))
                started = time.perf_counter()
                store.save(batch, {}, book=book)
                spent += time.perf_counter() - started
                passes += store._pass_end != 0  # a compaction pass is under way (the store's own marker)
                log_max = max(log_max, store._log_points)
            us = spent / args.hosts * 1e6
            if passes and period and not period[-1][1]:
                break  # the second pass begins: one whole period measured
            if passes or period:
                period.append((us, bool(passes)))
                print(f"cycle {cycle}: {us:.2f} us per new point, log {store._log_points:,} points"
                      f"{', compacting' if passes else ''}", flush=True)
        held = book.held_points()
        store.close()
    if not period:
        raise SystemExit("no compaction pass began: give more --cycles (the log must reach twice the book's points)")
    in_pass = [us for us, compacting in period if compacting]
    between = [us for us, compacting in period if not compacting]
    print(f"RESULT us_per_point={mean(us for us, _ in period):.2f} us_per_point_in_pass={mean(in_pass):.2f} "
          f"us_per_point_between={mean(between):.2f} cycles_in_pass_pct={100 * len(in_pass) / len(period):.0f} "
          f"log_max_points={log_max} held_points={held} hosts={args.hosts} keep={args.keep} "
          f"period_cycles={len(period)} compiled={'yes' if running_compiled() else 'no'}", flush=True)
    return 0


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else float("nan")


if __name__ == "__main__":
    sys.exit(main())
