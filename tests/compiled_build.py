"""The collector's compiled build for the tests and the benchmarks: a copy of this checkout in which the modules
that `DCEM_COMPILE=1 pip install .` compiles (setup.py, docs/collector.md "Compiled build") are the C extensions
of that wheel, built from the copy. Python imports an extension before the source beside it, so the tests and
benchmarks run from the copy run the compiled collector.

Building needs mypy and setuptools>=77 in this environment (the `test` extra); it takes about 30 s.
"""

from __future__ import annotations

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
NOT_COPIED = (".git", ".venv", "build", "*.egg-info", "__pycache__", ".pytest_cache", ".hypothesis", "*.so")


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


def run_compiled(script: Path, argv: list[str]) -> int:
    """Run `script` (a file of this checkout) with argv from a compiled checkout built in a temporary folder, and
    return its exit code: how the benchmarks' --compiled measure the compiled collector."""
    with tempfile.TemporaryDirectory(prefix="dcem-compiled-") as folder:
        print("building the compiled collector (about 30 s)", flush=True)
        checkout = compiled_checkout(Path(folder))
        return subprocess.run([sys.executable, str(checkout / script.resolve().relative_to(REPO)), *argv]).returncode
