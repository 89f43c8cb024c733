"""The compiled build (DCEM_COMPILE=1, setup.py): the collector's tests pass on it too.

mypyc checks the compiled modules' annotations at run time and binds calls between them at build time, so the
compiled collector can differ from the sources where an annotation is wrong. Every test file that uses the
collector runs again here, in a copy of this checkout whose compiled modules are the wheel's C extensions.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.compiled_build import compiled_checkout, compiled_modules

TESTS = Path(__file__).resolve().parent
USES_COLLECTOR = re.compile(r"^(from|import) (collector\b|tests\.collector_harness\b)", re.MULTILINE)


def collector_test_files() -> list[str]:
    """The test files that import the collector or run it (through tests/collector_harness.py)."""
    return sorted(f"tests/{path.name}" for path in TESTS.glob("test_*.py")
                  if path.name != Path(__file__).name and USES_COLLECTOR.search(path.read_text()))


def test_the_collector_test_files_are_found() -> None:
    files = collector_test_files()
    assert {"tests/test_ingest.py", "tests/test_lineproto.py", "tests/test_collector_pipeline.py"} <= set(files)
    assert "tests/test_rapl.py" not in files


def test_the_backend_asks_for_mypy_and_refuses_an_editable_compiled_install(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = importlib.util.spec_from_file_location("dcem_build_backend", TESTS.parent / "build_support" / "backend.py")
    backend = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(backend)
    monkeypatch.setenv("DCEM_COMPILE", "1")
    assert [requirement.split(">")[0] for requirement in backend.get_requires_for_build_wheel()] == ["mypy"]
    for refused in (lambda: backend.get_requires_for_build_editable(),
                    lambda: backend.prepare_metadata_for_build_editable("unused"),
                    lambda: backend.build_editable("unused")):
        with pytest.raises(SystemExit, match="not `pip install -e .`"):
            refused()
    monkeypatch.setenv("DCEM_COMPILE", "true")
    with pytest.raises(SystemExit, match="set it to 1"):
        backend.get_requires_for_build_wheel()


@pytest.mark.servers
def test_the_collector_tests_pass_on_the_compiled_build(tmp_path: Path) -> None:
    checkout = compiled_checkout(tmp_path)
    loaded = subprocess.run(
        [sys.executable, "-c", "import importlib, sys\n"
                               "for name in sys.argv[1:]: print(importlib.import_module(name).__file__)",
         *compiled_modules()], cwd=checkout, stdout=subprocess.PIPE, text=True, check=True).stdout.split()
    assert loaded and all(file.endswith(".so") for file in loaded), loaded
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *collector_test_files()],
                         cwd=checkout, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=1200)
    assert run.returncode == 0, run.stdout[-8000:]
