"""Real servers for tests, started as subprocesses on free loopback ports with configs in a temp folder.

Servers are never mocked. A missing binary skips the test on a developer machine and fails it under CI=true.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest


def require_binary(name: str) -> str:
    """Full path of a server binary; fail under CI=true, skip elsewhere, when it is not installed."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")
    if path:
        return path
    message = f"{name} is not installed (apt-get install the package that provides it)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout_s} s")


class ServerProcess:
    """One server binary with fixed arguments; stop() and start() again keep its port and data."""

    def __init__(self, argv: list[str], port: int, log_path: Path):
        self.argv = argv
        self.port = port
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        try:
            wait_for_port(self.port)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"{self.argv[0]} did not start; its log:\n{self.log_path.read_text()[-2000:]}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


class Mosquitto(ServerProcess):
    """mosquitto with persistence; optional password file, ACL and TLS listener."""

    def __init__(self, folder: Path, password_file: Path | None = None, acl_file: Path | None = None,
                 tls: dict[str, Path] | None = None):
        binary = require_binary("mosquitto")
        folder.mkdir(parents=True, exist_ok=True)
        port = free_port()
        lines = [
            f"listener {port} 127.0.0.1",
            "user root",
            "persistence true",
            f"persistence_location {folder}/",
            "autosave_interval 1",
            "max_queued_messages 0",
            "log_type error",
            "log_type warning",
        ]
        if password_file:
            lines += ["allow_anonymous false", f"password_file {password_file}"]
        else:
            lines.append("allow_anonymous true")
        if acl_file:
            lines.append(f"acl_file {acl_file}")
        if tls:
            lines += [f"cafile {tls['ca']}", f"certfile {tls['cert']}", f"keyfile {tls['key']}"]
        config = folder / "mosquitto.conf"
        config.write_text("\n".join(lines) + "\n")
        super().__init__([binary, "-c", str(config)], port, folder / "mosquitto.log")


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
