"""The collector's compiled build for the tests and the benchmarks: a copy of this checkout in which the modules
that `DCEM_COMPILE=1 pip install .` compiles (setup.py, docs/collector.md "Compiled build") are the C extensions
of that wheel, built from the copy. Python imports an extension before the source beside it, so the tests and
benchmarks run from the copy run the compiled collector.

Building needs mypy and setuptools>=77 in this environment (the `test` extra); it takes about 30 s.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NOT_COPIED = (".*", "build", "dist", "*.egg-info", "__pycache__", "*.so", "*.db", "*.db-wal", "*.db-shm")


def compiled_modules() -> list[str]:
    """The modules the compiled build compiles (pyproject.toml [tool.mypy] files), as dotted names."""
    with open(REPO / "pyproject.toml", "rb") as config:
        files = tomllib.load(config)["tool"]["mypy"]["files"]
    return [file.removesuffix(".py").replace("/", ".") for file in files]


def compiled_checkout(folder: Path) -> Path:
    """Copy this checkout to folder/checkout, build the compiled wheel from the copy and put the wheel's C
    extensions beside their sources there; return the copy. RuntimeError with pip's output if the build fails."""
    checkout = folder / "checkout"
    shutil.copytree(REPO, checkout, ignore=shutil.ignore_patterns(*NOT_COPIED))
    wheels = folder / "wheel"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-build-isolation", "--no-deps",
                            "--wheel-dir", str(wheels), str(checkout)], env={**os.environ, "DCEM_COMPILE": "1"},
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    built = sorted(wheels.glob("*.whl"))
    if build.returncode or not built:
        raise RuntimeError(f"building the compiled wheel failed (exit {build.returncode}):\n{build.stdout[-4000:]}")
    with zipfile.ZipFile(built[0]) as wheel:
        wheel.extractall(checkout, [name for name in wheel.namelist() if name.endswith(".so")])
    return checkout


def running_compiled() -> bool:
    """Whether this process imports the compiled modules as C extensions."""
    return all(importlib.import_module(name).__file__.endswith(".so") for name in compiled_modules())


def add_compiled_option(parser: argparse.ArgumentParser) -> None:
    """The benchmarks' --compiled option (see rerun_compiled_if_asked)."""
    parser.add_argument("--compiled", action="store_true",
                        help="measure the compiled collector (DCEM_COMPILE=1, built first in a temp folder)")


def rerun_compiled_if_asked(compiled: bool, script: Path, argv: list[str]) -> int | None:
    """For a benchmark given --compiled: build a compiled checkout in a temporary folder, run `script`'s copy there
    with argv (the same arguments) and return its exit code. None when not asked, or already running compiled
    (the copy itself is given --compiled too)."""
    if not compiled or running_compiled():
        return None
    with tempfile.TemporaryDirectory(prefix="dcem-compiled-") as folder:
        print("building the compiled collector (about 30 s)", flush=True)
        checkout = compiled_checkout(Path(folder))
        return subprocess.run([sys.executable, str(checkout / script.resolve().relative_to(REPO)), *argv]).returncode
