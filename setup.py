"""Packaging beyond pyproject.toml: with DCEM_COMPILE=1 the collector's per-message modules are compiled with
mypyc into C extensions (docs/collector.md, "Compiled build"). The modules compiled are the ones mypy checks:
`[tool.mypy] files` in pyproject.toml. Without DCEM_COMPILE the package is pure Python."""

import os
import tomllib
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent
ext_modules = []
if os.environ.get("DCEM_COMPILE") == "1":
    from mypyc.build import mypycify

    with open(ROOT / "pyproject.toml", "rb") as config:
        compiled = tomllib.load(config)["tool"]["mypy"]["files"]
    ext_modules = mypycify(compiled, opt_level="3", group_name="dcem_collector")

setup(ext_modules=ext_modules)
