"""Local server processes (mosquitto, InfluxDB 1.x, VictoriaMetrics) for the demo, benchmarks and tests.

Each runs as a subprocess on a free loopback port with its config and data in a folder of its own; stop()
and start() again keep the port and the data, so outages can be staged. Nothing here is for production:
point the product at your own broker and database there (see README).
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path


class ServerBinaryMissing(RuntimeError):
    """A server binary is not installed."""


def find_binary(name: str) -> str:
    """Full path of a server binary, looking in sbin too (Debian puts mosquitto there)."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")
    if not path:
        raise ServerBinaryMissing(f"{name} is not installed (apt-get install the package that provides it; "
                                  "scripts/bootstrap.sh does)")
    return path


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
        binary = find_binary("mosquitto")
        folder.mkdir(parents=True, exist_ok=True)
        port = free_port()
        lines = [
            f"listener {port} 127.0.0.1",
            "user root",
            "persistence true",
            f"persistence_location {folder}/",
            "autosave_interval 1",
            "max_queued_messages 1000000",
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


def http_status(url: str, data: bytes | None = None, timeout_s: float = 2.0) -> int | None:
    """The HTTP status `url` answers with (POST when `data` is given), or None if nothing answers."""
    try:
        with urllib.request.urlopen(url, data=data, timeout=timeout_s) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def wait_for_http(url: str, expected: int, timeout_s: float = 20.0) -> None:
    """Poll `url` until it answers with status `expected`."""
    deadline = time.monotonic() + timeout_s
    while http_status(url) != expected:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer {expected} within {timeout_s} s")
        time.sleep(0.05)


class Influxd(ServerProcess):
    """InfluxDB 1.x (`influxd`) with its meta, data and WAL in `folder`; optional auth with an admin user."""

    admin_user = "admin"
    admin_password = "adm1n-s3cret-pw"

    def __init__(self, folder: Path, auth_enabled: bool = False):
        binary = find_binary("influxd")
        folder.mkdir(parents=True, exist_ok=True)
        port = free_port()
        self.auth_enabled = auth_enabled
        self._admin_created = False
        config = folder / "influxdb.conf"
        # reporting-disabled is upstream's key; Debian's 1.6.7 build renamed it reporting-enabled (default false).
        config.write_text(f"""reporting-disabled = true
reporting-enabled = false
bind-address = "127.0.0.1:{free_port()}"

[meta]
  dir = "{folder}/meta"
  logging-enabled = false

[data]
  dir = "{folder}/data"
  wal-dir = "{folder}/wal"
  query-log-enabled = false

[monitor]
  store-enabled = false

[http]
  bind-address = "127.0.0.1:{port}"
  auth-enabled = {str(auth_enabled).lower()}
  log-enabled = false

[logging]
  level = "warn"
  suppress-logo = true
""")
        super().__init__([binary, "-config", str(config)], port, folder / "influxd.log")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start, wait for /ping to answer 204, and create the admin user the first time when auth is on."""
        super().start()
        wait_for_http(f"{self.url}/ping", 204)
        if self.auth_enabled and not self._admin_created:
            try:
                self._create_admin()
            except RuntimeError:
                self.stop()
                raise
            self._admin_created = True

    def _create_admin(self, timeout_s: float = 20.0) -> None:
        """CREATE USER, retried until the admin can log in: influxd answers 200 with the error inside the
        JSON while its meta store is not ready, which can last a moment after /ping."""
        statement = f"CREATE USER {self.admin_user} WITH PASSWORD '{self.admin_password}' WITH ALL PRIVILEGES"
        login = urllib.parse.urlencode({"u": self.admin_user, "p": self.admin_password})
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            http_status(f"{self.url}/query", urllib.parse.urlencode({"q": statement}).encode())
            try:
                with urllib.request.urlopen(f"{self.url}/query?{login}", data=b"q=SHOW+USERS", timeout=2) as response:
                    if b'"error"' not in response.read():
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"influxd did not accept the admin user within {timeout_s} s")


class VictoriaMetrics(ServerProcess):
    """Single-node VictoriaMetrics with its data in `folder`; recent writes are searchable at once, and a sample
    written twice (same series and timestamp) is stored once, as the collector's idempotent writes need."""

    def __init__(self, folder: Path):
        binary = find_binary("victoria-metrics")
        folder.mkdir(parents=True, exist_ok=True)
        port = free_port()
        argv = [binary, f"-storageDataPath={folder}", f"-httpListenAddr=127.0.0.1:{port}", "-retentionPeriod=100y",
                "-search.latencyOffset=0s", "-search.disableCache", "-dedup.minScrapeInterval=1ms"]
        super().__init__(argv, port, folder / "victoria-metrics.log")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start and wait for /health to answer 200."""
        super().start()
        wait_for_http(f"{self.url}/health", 200)

    def force_flush(self) -> None:
        """Make everything written so far visible to queries and exports."""
        if http_status(f"{self.url}/internal/force_flush") != 200:
            raise RuntimeError("victoria-metrics refused /internal/force_flush")
