"""Packaging beyond pyproject.toml: with DCEM_COMPILE=1 a wheel build compiles the collector's per-message modules
with mypyc into C extensions (docs/collector.md, "Compiled build"). The modules compiled are the ones mypy checks:
`[tool.mypy] files` in pyproject.toml. Without DCEM_COMPILE, and for metadata and source distributions, the
package is pure Python.

Every wheel build starts from an empty build/ folder: setuptools puts all of build/lib into the wheel, so a C
extension left by an earlier compiled build would otherwise ship in a later pure wheel and hide its source."""

import shutil
import sys
import tomllib
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "build_support"))
from backend import compile_requested  # noqa: E402  (DCEM_COMPILE is read in one place)

BUILDS_BINARIES = {"bdist_wheel", "build", "build_ext"}

ext_modules = []
if BUILDS_BINARIES & set(sys.argv[1:]):
    shutil.rmtree(ROOT / "build", ignore_errors=True)
    if compile_requested():
        from mypyc.build import mypycify

        with open(ROOT / "pyproject.toml", "rb") as config:
            compiled = tomllib.load(config)["tool"]["mypy"]["files"]
        ext_modules = mypycify(compiled, opt_level="3", group_name="dcem_collector")

setup(ext_modules=ext_modules)
