"""Real servers for tests: the local server processes, failing under CI=true and skipping elsewhere when a
binary is missing. Servers are never mocked.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from common import local_servers
from common.local_servers import ServerProcess, free_port, http_status, wait_for_http, wait_for_port

__all__ = ["Influxd", "Mosquitto", "ServerProcess", "VictoriaMetrics", "add_mqtt_user", "free_port", "http_status",
           "make_test_ca", "require_binary", "wait_for_http", "wait_for_port"]


def require_binary(name: str) -> str:
    """Full path of a server binary; fail under CI=true, skip elsewhere, when it is not installed."""
    try:
        return local_servers.find_binary(name)
    except local_servers.ServerBinaryMissing as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(str(exc))
        pytest.skip(str(exc))


class Mosquitto(local_servers.Mosquitto):
    def __init__(self, *args, **kwargs):
        require_binary("mosquitto")
        super().__init__(*args, **kwargs)


class Influxd(local_servers.Influxd):
    def __init__(self, *args, **kwargs):
        require_binary("influxd")
        super().__init__(*args, **kwargs)


class VictoriaMetrics(local_servers.VictoriaMetrics):
    def __init__(self, *args, **kwargs):
        require_binary("victoria-metrics")
        super().__init__(*args, **kwargs)


def add_mqtt_user(password_file: Path, username: str, password: str) -> None:
    """Add a user to a mosquitto password file (created when missing) with mosquitto_passwd."""
    tool = require_binary("mosquitto_passwd")
    create = [] if password_file.exists() else ["-c"]
    subprocess.run([tool, *create, "-b", str(password_file), username, password], check=True, capture_output=True)


def make_test_ca(folder: Path, server_name: str = "localhost") -> dict[str, Path]:
    """A throwaway CA and a server certificate for `server_name` (and 127.0.0.1), made with openssl."""
    openssl = require_binary("openssl")
    folder.mkdir(parents=True, exist_ok=True)
    paths = {name: folder / f"{name}.pem" for name in ("ca", "ca-key", "cert", "key")}
    csr, ext = folder / "server.csr", folder / "server.ext"
    ext.write_text(f"subjectAltName=DNS:{server_name},IP:127.0.0.1\n")
    steps = [
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=dcem test CA",
         "-keyout", paths["ca-key"], "-out", paths["ca"]],
        ["req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={server_name}", "-keyout", paths["key"], "-out", csr],
        ["x509", "-req", "-in", csr, "-CA", paths["ca"], "-CAkey", paths["ca-key"], "-CAcreateserial",
         "-days", "2", "-extfile", ext, "-out", paths["cert"]],
    ]
    for step in steps:
        subprocess.run([openssl, *map(str, step)], check=True, capture_output=True)
    return paths


