"""setuptools' build backend, which also asks for mypy when DCEM_COMPILE=1 (setup.py then compiles the collector's
per-message modules with mypyc). A compiled build is a wheel: an editable install would leave the C extensions
beside the sources, where they would hide later edits of those sources."""

import os

from setuptools import build_meta
from setuptools.build_meta import (  # the hooks used as setuptools defines them
    build_sdist,
    build_wheel,
    get_requires_for_build_sdist,
    prepare_metadata_for_build_wheel,
)

__all__ = ["build_editable", "build_sdist", "build_wheel", "get_requires_for_build_editable",
           "get_requires_for_build_sdist", "get_requires_for_build_wheel", "prepare_metadata_for_build_editable",
           "prepare_metadata_for_build_wheel"]

MYPY = "mypy>=1.13,<3"


def compile_requested() -> bool:
    """DCEM_COMPILE=1 asks for the compiled build, unset or 0 for the pure one; any other value is refused."""
    value = os.environ.get("DCEM_COMPILE", "")
    if value not in ("", "0", "1"):
        raise SystemExit(f"DCEM_COMPILE={value!r}: set it to 1 for the compiled build, or leave it unset")
    return value == "1"


def get_requires_for_build_wheel(config_settings=None):
    if compile_requested():  # setuptools would run setup.py to ask, which needs mypy already; it asks for nothing else
        return [MYPY]
    return build_meta.get_requires_for_build_wheel(config_settings)


def get_requires_for_build_editable(config_settings=None):
    _refuse_compiled_editable()
    return build_meta.get_requires_for_build_editable(config_settings)


def prepare_metadata_for_build_editable(metadata_directory, config_settings=None):
    _refuse_compiled_editable()
    return build_meta.prepare_metadata_for_build_editable(metadata_directory, config_settings)


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    _refuse_compiled_editable()
    return build_meta.build_editable(wheel_directory, config_settings, metadata_directory)


def _refuse_compiled_editable():
    if compile_requested():
        raise SystemExit("DCEM_COMPILE=1 builds a wheel: install it with `pip install .`, not `pip install -e .`")
