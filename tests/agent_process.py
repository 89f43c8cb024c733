"""Runs the real dcem-agent command as a subprocess with a config written into a temp folder."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

TESTDATA = Path(__file__).parent / "testdata"


def write_agent_config(folder: Path, port: int, host: str = "h01", interval_s: float = 0.1,
                       publish_interval_s: float = 0.2, mqtt_extra: str = "", rack: str = "r01") -> Path:
    """A config for one agent on the fake package-only powercap tree, publishing to 127.0.0.1:port."""
    folder.mkdir(parents=True, exist_ok=True)
    powercap = folder / "powercap"
    if not powercap.exists():
        shutil.copytree(TESTDATA / "powercap" / "package-only", powercap, symlinks=True)
    config = folder / "agent.toml"
    config.write_text(f"""
[identity]
site = "dc1"
room = "hall-a"
rack = "{rack}"
host = "{host}"

[sampling]
interval_s = {interval_s}
publish_interval_s = {publish_interval_s}

[mqtt]
host = "127.0.0.1"
port = {port}
{mqtt_extra}

[spool]
path = "{folder / 'spool.db'}"

[rapl]
root = "{powercap}"

[nvml]
enabled = false
""")
    return config


class AgentProcess:
    """dcem-agent --stdout; every sample it has spooled is collected from its standard output."""

    def __init__(self, config: Path, *extra_args: str, env: dict[str, str] | None = None):
        self.samples: list[dict] = []
        self.sessions: list[str] = []
        self.process = subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "--config", str(config), "--stdout", *extra_args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )
        self.stderr_lines: list[str] = []
        self._threads = [threading.Thread(target=self._read_stdout, daemon=True),
                         threading.Thread(target=self._read_stderr, daemon=True)]
        for thread in self._threads:
            thread.start()

    def _read_stdout(self) -> None:
        for line in self.process.stdout:
            self.samples.append(json.loads(line))

    def _read_stderr(self) -> None:
        for line in self.process.stderr:
            self.stderr_lines.append(line)

    def wait(self, timeout_s: float = 30.0) -> int:
        code = self.process.wait(timeout=timeout_s)
        for thread in self._threads:
            thread.join(timeout=5)
        return code

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.terminate()
        return self.wait()

    def kill(self) -> None:
        self.process.kill()
        self.wait()

    @property
    def stderr(self) -> str:
        return "".join(self.stderr_lines)
