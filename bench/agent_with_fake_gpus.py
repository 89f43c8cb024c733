"""Run the real dcem-agent with a fake NVML (tests/fakes/pynvml.py) driving 8 busy GPUs; for benchmarks.

    python bench/agent_with_fake_gpus.py --config agent.toml [any other dcem-agent flag]

The fake pynvml is put into sys.modules["pynvml"] before the agent starts, so the agent's NvmlSensor finds
BENCH_GPUS GPUs (default 8; the config needs `[nvml] enabled = true`). A daemon thread advances every GPU's
energy counter once a second at a slowly varying 300-650 W, with utilisation and temperature to match, as
a loaded GPU server would. Everything after the script name goes to `agent.cli.main` unchanged.

Environment (all optional):
  BENCH_GPUS=8                     how many fake GPUs
  BENCH_DRIVER_TID_FILE=path       write the GPU driver thread's native id there, so a benchmark can leave
                                   that thread's CPU time (benchmark scaffolding, not agent work) out
  BENCH_CPROFILE=path.prof         profile the agent's main thread with cProfile, written when it exits
  BENCH_TRACEMALLOC=path.txt       trace Python allocations; the top 40 by line are written when it exits
"""

from __future__ import annotations

import os
import random
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


class _Patch:
    """The two monkeypatch methods tests/fakes/pynvml.install() uses, applied for good (no undo)."""

    def setattr(self, target: Any, name: str, value: Any, raising: bool = True) -> None:
        setattr(target, name, value)

    def setitem(self, mapping: Any, name: Any, value: Any) -> None:
        mapping[name] = value


def install_fake_gpus(count: int) -> list[Any]:
    """Put the fake pynvml in sys.modules with `count` idle GPUs and return them."""
    from tests.fakes import pynvml as fake

    gpus = fake.make_gpus(count)
    fake.install(_Patch(), gpus)
    return gpus


def drive(gpus: list[Any], stop: threading.Event, period_s: float = 1.0, seed: int = 1) -> None:
    """Every period_s, run each GPU for the elapsed time at its own random-walk load between 300 and 650 W."""
    rng = random.Random(seed)
    watts = [rng.uniform(300, 650) for _ in gpus]
    for gpu, w in zip(gpus, watts):
        gpu.run(0.0, w)  # non-zero power from the first read on
    last = time.monotonic()
    while not stop.wait(period_s):
        now = time.monotonic()
        for index, gpu in enumerate(gpus):
            watts[index] = min(650.0, max(300.0, watts[index] + rng.uniform(-40, 40)))
            gpu.run(now - last, watts[index])
            gpu.util_percent = round(100 * (watts[index] - 100) / 600)
            gpu.temp_c = round(45 + watts[index] / 20)
        last = now


def main(argv: list[str]) -> int:
    trace_path = os.environ.get("BENCH_TRACEMALLOC")
    if trace_path:
        import tracemalloc

        tracemalloc.start(1)  # before any import, so the libraries' own memory is counted too
    gpus = install_fake_gpus(int(os.environ.get("BENCH_GPUS", "8")))
    stop = threading.Event()
    driver = threading.Thread(target=drive, args=(gpus, stop), name="fake-gpu-driver", daemon=True)
    driver.start()
    tid_file = os.environ.get("BENCH_DRIVER_TID_FILE")
    if tid_file:
        while driver.native_id is None:
            time.sleep(0.001)
        Path(tid_file).write_text(f"{driver.native_id}\n")

    from agent.cli import main as agent_main

    profile_path = os.environ.get("BENCH_CPROFILE")
    profiler = None
    if profile_path:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    try:
        return agent_main(argv)
    finally:
        stop.set()
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(profile_path)
        if trace_path:
            _write_tracemalloc(Path(trace_path))


def _write_tracemalloc(path: Path) -> None:
    import tracemalloc

    snapshot = tracemalloc.take_snapshot()
    current, peak = tracemalloc.get_traced_memory()
    lines = [f"traced python memory: current {current / 2**20:.2f} MiB, peak {peak / 2**20:.2f} MiB"]
    by_file = snapshot.statistics("filename")
    lines.append("top files:")
    lines += [f"  {stat.size / 2**10:9.1f} KiB  {stat.count:7d} blocks  {stat.traceback[0].filename}"
              for stat in by_file[:25]]
    lines.append("top lines:")
    lines += [f"  {stat.size / 2**10:9.1f} KiB  {stat.count:7d} blocks  {stat.traceback[0]}"
              for stat in snapshot.statistics("lineno")[:40]]
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
