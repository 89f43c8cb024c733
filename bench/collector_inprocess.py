"""The collector's per-message cost without MQTT or a database: the real `Collector.flush` over the site
simulator's messages, in one process, timed per stage.

    .venv/bin/python bench/collector_inprocess.py [--hosts 200000] [--cycles 3] [--batch 10000] [--stages]
                                                  [--profile FILE] [--history-days 9] [--instructions]
                                                  [--compiled]

The site and its messages are the throughput benchmark's (bench/stream_publisher.py: the simulator's scenario,
each device once per cycle in a fixed shuffle, at --rate messages/s of simulated time ending now, so the
collector's clock checks pass). The collector is built without connecting anywhere: `Collector.flush` runs
unchanged with the messages as its pending batch, an output that only counts lines, a client that only counts
PUBACKs and a real SQLite state in a temp folder, with the garbage collector set up as `Collector.run` does. The
first cycle (every device's first message, which opens its session) is left out of the figures. It prints µs per message for the whole flush and, with --stages, for
the stages below (each timed by a thin wrapper, ~0.2 µs each); --profile writes a cProfile of the measured
flushes. The last line is machine-readable: `RESULT us_per_msg=... points_per_msg=... ...`.

--instructions counts the CPU instructions of the measured flushes instead of timing them: the script runs itself
under valgrind's callgrind (`apt-get install valgrind`; about 50 times slower, so use e.g. `--hosts 20000 --rate
2000`) with a fixed hash seed, and adds `instructions_per_msg=` to the RESULT line. On a shared machine wall-clock
figures of identical runs spread by ±10 %; the instruction count of identical runs by about 0.1 %, so it shows a
change of a few per cent that the timings hide. It does not see memory stalls: confirm a gain in time too.

--compiled measures the compiled collector (DCEM_COMPILE=1, docs/collector.md "Compiled build"): it builds it in
a copy of this checkout in a temp folder (about 30 s) and runs this script from there; the RESULT line says
`compiled=yes`. --stages does not work there: compiled classes cannot be wrapped.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import collector_throughput as bench  # noqa: E402
import stream_publisher as sp  # noqa: E402
from collector import ingest as ingest_module  # noqa: E402
from collector import service  # noqa: E402
from collector.config import CollectorConfig  # noqa: E402
from collector.report import Reporter, site_factors  # noqa: E402
from collector.site import SiteIndex, load_site_config  # noqa: E402
from collector.state import StateStore  # noqa: E402
from collector.accounting import BIN_MS  # noqa: E402
from collector.book import Accumulator, EnergyBook  # noqa: E402
from collector.ingest import Ingest, Limits  # noqa: E402
from simulator.model import meters  # noqa: E402
from tests.compiled_build import add_compiled_option, rerun_compiled_if_asked, running_compiled  # noqa: E402

# (label, object attribute path, method name): wrapped with a timer when --stages is given
STAGES = [
    ("Ingest.handle (whole)", "ingest", "handle"),
    ("  topic parse (parse_topic)", "ingest_module", "parse_topic"),
    ("  JSON + contract decode (decode_batch)", "ingest_module", "decode_batch"),
    ("  validation (Ingest._check)", "ingest", "_check"),
    ("  accounting (EnergyBook.add_host_point)", "book", "add_host_point"),
    ("  raw host lines (Ingest._host_lines)", "ingest", "_host_lines"),
    ("dirty accumulators (EnergyBook.take_dirty)", "book", "take_dirty"),
    ("accumulator lines (Reporter.accumulator_lines)", "reporter", "accumulator_lines"),
    ("output spool append (counted only)", "output", "enqueue"),
    ("SQLite state save (StateStore.save)", "store", "save"),
    ("PUBACKs (counted only)", "client", "ack_all"),
]


class CountingOutput:
    def __init__(self):
        self.lines = 0
        self.by_measurement: Counter[str] = Counter()

    def enqueue(self, lines: list[str]) -> bool:
        self.lines += len(lines)
        for text in lines:
            self.by_measurement[text[:text.find(",")]] += 1
        return True


class CountingClient:
    def __init__(self):
        self.acks = 0

    def ack_all(self, mids) -> None:
        self.acks += sum(1 for _ in mids)

    def has_buffered_input(self) -> bool:
        return True  # a collector under load always has the next messages waiting

    def socket(self):
        return None


def build(hosts: int, gpus: int, folder: Path, batch: int, history_days: float = 0.0, now_ms: int = 0
          ) -> service.Collector:
    """A Collector that connects nowhere: real ingest, book, reporter and state; counting output and client.
    history_days: the state holds that many days of rack and site bins before now_ms, as after that long a run."""
    scenario = sp.bench_scenario(hosts, gpus)
    site_path = folder / "site.yaml"
    bench.write_site_config(site_path, scenario)
    config = CollectorConfig.model_validate({
        "site_config": str(site_path), "influx": {"api": "v1", "url": "http://127.0.0.1:9", "database": "x"},
        "state": {"folder": str(folder / "state")}, "ingest": {"max_batch": batch}})
    site_config = load_site_config(site_path)
    c = service.Collector.__new__(service.Collector)
    c.config = config
    c.index = SiteIndex(site_config)
    c.book = EnergyBook(c.index, config.state.keep_points)
    c.store = StateStore(folder / "state" / "state.db")
    if history_days:
        save_history(c.store, c.index, history_days, now_ms)
    c.store.load_into(c.book)
    c.ingest = Ingest(c.index, c.book, config.mqtt.topic_root, Limits(**config.limits.model_dump()),
                      int(config.ingest.raw_resolution_s * 1000))
    c.reporter = Reporter(c.index, c.book, {}, {s.id: site_factors(s) for s in site_config.sites})
    c.output = CountingOutput()
    c.client = CountingClient()
    c.pending = []
    c.stats = Counter()
    c._last_logged = {}
    c._dead_letters_this_second = c._dead_letter_second = 0
    return c


def save_history(store: StateStore, index: SiteIndex, days: float, now_ms: int) -> None:
    """Save the rack and site (hosts) accumulators of every 15-minute bin of `days` days before now_ms, a day
    per transaction."""
    scopes = sorted({("rack", h.site, h.room, h.rack) for s in index.sites for h in index.expected_hosts(s.id)})
    scopes += [("hosts", s.id) for s in index.sites]
    last_bin = now_ms - now_ms % BIN_MS - BIN_MS
    bins = [last_bin - k * BIN_MS for k in range(int(days * 86_400_000 // BIN_MS))]
    for day in range(0, len(bins), 96):
        store.save([], {(*scope, start): Accumulator(1.0, 1.0) for start in bins[day:day + 96] for scope in scopes})


CALLGRIND_OUT = "DCEM_CALLGRIND_OUT"  # set in the run under callgrind: where it writes its counts


def count_instructions(argv: list[str]) -> int:
    """Run this script again under callgrind, instrumenting only the measured flushes; print its output with
    instructions_per_msg added to the RESULT line."""
    with tempfile.TemporaryDirectory(prefix="dcem-callgrind-") as folder:
        out = Path(folder) / "callgrind.out"
        env = {**os.environ, CALLGRIND_OUT: str(out), "PYTHONHASHSEED": "0"}
        run = subprocess.run(["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
                              sys.executable, __file__, *argv], env=env, stdout=subprocess.PIPE, text=True)
        totals = [line for line in out.read_text().splitlines() if line.startswith("totals:")]
    lines = run.stdout.splitlines()
    result = lines.pop() if lines and lines[-1].startswith("RESULT ") else None
    print("\n".join(lines))
    if run.returncode or result is None or not totals:
        raise SystemExit(f"the run under callgrind failed (exit {run.returncode})")
    messages = int(result.split(" messages=")[1].split()[0])
    instructions = int(totals[0].split()[1])
    print(f"{result} instructions_per_msg={instructions // messages}", flush=True)
    return 0


def callgrind_instrumentation(state: str) -> None:
    """Switch callgrind's counting on or off for this process. callgrind_control waits for callgrind to answer,
    which it does only while this process runs on: so it runs beside, and this process sleeps meanwhile."""
    control = subprocess.Popen(["callgrind_control", "--instr=" + state, str(os.getpid())],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(4)
    if control.wait() != 0:
        raise SystemExit(f"callgrind_control --instr={state} failed")


def wrap(timings: dict[str, list[float]], label: str, owner, name: str) -> None:
    original = getattr(owner, name, None)
    if original is None:
        return
    spent = timings.setdefault(label, [0.0, 0])
    clock = time.perf_counter

    def timed(*args, **kwargs):
        t = clock()
        try:
            return original(*args, **kwargs)
        finally:
            spent[0] += clock() - t
            spent[1] += 1

    setattr(owner, name, timed)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hosts", type=int, default=200_000)
    p.add_argument("--gpus", type=int, default=0)
    p.add_argument("--rate", type=float, default=20_000, help="messages/s of simulated time")
    p.add_argument("--cycles", type=int, default=3, help="publishing cycles (each device once per cycle)")
    p.add_argument("--batch", type=int, default=10_000, help="messages per flush (the collector's default max_batch)")
    p.add_argument("--stages", action="store_true", help="time each stage (slightly slower)")
    p.add_argument("--profile", help="write a cProfile of the measured flushes here")
    p.add_argument("--history-days", type=float, default=0.0,
                   help="start from a state holding this many days of rack and site bins (the collector keeps 9)")
    p.add_argument("--instructions", action="store_true",
                   help="count the measured flushes' CPU instructions under valgrind's callgrind")
    add_compiled_option(p)
    args = p.parse_args(argv)
    if args.stages and (args.compiled or running_compiled()):
        raise SystemExit("--stages wraps the collector's methods, which the compiled collector does not allow")
    exit_code = rerun_compiled_if_asked(args.compiled, Path(__file__), sys.argv[1:] if argv is None else argv)
    if exit_code is not None:
        return exit_code
    if args.instructions and CALLGRIND_OUT not in os.environ:
        return count_instructions(sys.argv[1:] if argv is None else argv)

    with tempfile.TemporaryDirectory(prefix="dcem-inprocess-") as tmp:
        t = time.perf_counter()
        scenario = sp.bench_scenario(args.hosts, args.gpus)
        devices = args.hosts + len(meters(scenario))
        total = devices * args.cycles
        begin_ms = int(time.time() * 1000) - int(total / args.rate * 1000) - 1000
        c = build(args.hosts, args.gpus, Path(tmp), args.batch, args.history_days, begin_ms)
        site = sp.SimulatedSite(scenario, sp.publish_order(devices, "random"), begin_ms - 1)
        messages = []
        for k in range(total):
            topic, payload = site.message(k % devices, begin_ms + int(k * 1000 / args.rate))
            messages.append((topic, payload, k % 65535 + 1, 1, False))
        print(f"built a site of {args.hosts} hosts and {total} messages"
              + (f", with {args.history_days:g} days of bins in the state" if args.history_days else "")
              + f" in {time.perf_counter() - t:.1f} s", flush=True)

        batches = [messages[i:i + args.batch] for i in range(0, total, args.batch)]
        first_cycle = -(-devices // args.batch)
        timings: dict[str, list[float]] = {}
        spent = 0.0
        measured = 0
        profiler = cProfile.Profile() if args.profile else None
        owners = {"ingest": c.ingest, "ingest_module": ingest_module, "book": c.book, "reporter": c.reporter,
                  "output": c.output, "store": c.store, "client": c.client}
        service._settle_heap()  # the garbage collector as `Collector.run` sets it up
        for i, batch in enumerate(batches):
            if i == first_cycle:
                lines0, by0 = c.output.lines, Counter(c.output.by_measurement)
                if args.stages:
                    for label, owner, name in STAGES:
                        wrap(timings, label, owners[owner], name)
                if profiler:
                    profiler.enable()
                if args.instructions:
                    callgrind_instrumentation("on")
            c.pending = batch
            t = time.perf_counter()
            c.flush()
            if i >= first_cycle:
                spent += time.perf_counter() - t
                measured += len(batch)
        if args.instructions:
            callgrind_instrumentation("off")
        if profiler:
            profiler.disable()
            profiler.dump_stats(args.profile)
        if not measured:
            raise SystemExit("nothing measured: give more --cycles")
        points = c.output.lines - lines0
        by = c.output.by_measurement - by0
        print(f"flushed {measured} messages after the first cycle in {len(batches) - first_cycle} flushes of "
              f"{args.batch}: {spent / measured * 1e6:.1f} us per message, {points / measured:.3f} points per "
              f"message ({', '.join(f'{m} {n / measured:.3f}' for m, n in by.most_common())})")
        for label, _owner, _name in STAGES:
            if label in timings:
                seconds, calls = timings[label]
                print(f"  {label:<50} {seconds / measured * 1e6:7.2f} us/msg  {calls:>9} calls")
        outcomes = dict(c.ingest.outcomes)
        rejected = sum(c.ingest.rejected.values())
        print(f"outcomes {outcomes}, rejected {dict(c.ingest.rejected)}")
        c.store.close()
    print(f"RESULT us_per_msg={spent / measured * 1e6:.1f} points_per_msg={points / measured:.3f} "
          f"messages={measured} rejected={rejected} hosts={args.hosts} gpus={args.gpus} batch={args.batch} "
          f"stages={'yes' if args.stages else 'no'} profiled={'yes' if args.profile else 'no'} "
          f"history_days={args.history_days:g} compiled={'yes' if running_compiled() else 'no'}", flush=True)
    return 0 if rejected == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
