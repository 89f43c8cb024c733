"""Writers that send line protocol (ms timestamps) to InfluxDB, through the v1 `/write` endpoint or the v2 write API.

Both raise WriteError, whose flags tell the caller what to do with the batch: `retryable` (the server is down,
slow or overloaded: keep the batch and try again later) and `bad_data` (the server refused this batch's
content: retrying it cannot succeed, other batches can). Authentication failures and a missing database or
bucket are neither: nothing will be written until an operator fixes the configuration or the server.
Credentials travel only in the Authorization header, never in a URL, an error message or a log.
"""

from __future__ import annotations

import base64
import gzip
import http.client
import json
import ssl
from typing import Literal, Protocol
from urllib.parse import urlencode, urlsplit

import urllib3
from influxdb_client import InfluxDBClient, WritePrecision
from influxdb_client.client.exceptions import InfluxDBError
from influxdb_client.client.write_api import SYNCHRONOUS
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

_DETAIL_MAX = 500
_BAD_DATA_STATUSES = {400, 413, 422}
_CAUSES = {
    401: "authentication failed: check the username and password (v1) or the token (v2)",
    403: "not authorized: grant the user WRITE on the database (v1) or the token write access to the bucket (v2)",
    404: "the database or bucket does not exist, or the URL is wrong: create it or fix the configuration",
}


class InfluxError(Exception):
    """A request InfluxDB did not carry out; the message names the server and the cause, never a credential."""

    def __init__(self, message: str, *, retryable: bool, status: int | None = None, bad_data: bool = False,
                 line: str | None = None):
        super().__init__(message)
        self.retryable = retryable
        self.status = status
        self.bad_data = bad_data
        self.line = line


class WriteError(InfluxError):
    """A write that failed: `retryable` (try again later), `bad_data` (the batch itself was refused), `line`
    (the offending line, when the server named one)."""


class QueryError(InfluxError):
    """A query that failed, with the same attributes as WriteError."""


class Writer(Protocol):
    """Sends batches of line-protocol lines (ms timestamps) to one database or bucket."""

    target: str  # where it writes, for messages; never holds a credential

    def write(self, lines: list[str]) -> None:
        """Write all lines or raise WriteError."""

    def close(self) -> None:
        """Release connections."""


# A partial write refused by a database limit is a configuration problem, not bad data: the batch must stay
# in the spool (and the collector stop acknowledging once it fills) rather than be set aside.
_DATABASE_LIMITS = ("max-values-per-tag", "max-series-per-database")


def error_for_status(status: int, detail: str, target: str, kind: type[InfluxError] = WriteError) -> InfluxError:
    """The error for an HTTP status that is not a success, classified by what the caller should do."""
    line = offending_line(detail)
    detail = detail.strip()[:_DETAIL_MAX]
    if status == 429 or status >= 500:
        return kind(f"{target} is overloaded or failing (HTTP {status}): {detail}", retryable=True, status=status)
    if status in _CAUSES:
        return kind(f"{target} refused the request (HTTP {status}): {_CAUSES[status]} ({detail})",
                    retryable=False, status=status)
    if any(limit in detail for limit in _DATABASE_LIMITS):
        return kind(f"{target} refused points by a limit of its own configuration (HTTP {status}): {detail}; "
                    "raise or disable that limit (InfluxDB 1.x: [data] max-values-per-tag = 0, "
                    "max-series-per-database = 0)", retryable=False, status=status)
    return kind(f"{target} refused the data (HTTP {status}): {detail}", retryable=False, status=status,
                bad_data=status in _BAD_DATA_STATUSES, line=line)


def offending_line(detail: str) -> str | None:
    """The line an InfluxDB error quotes ("unable to parse '<line>': why"), or None."""
    prefix = "unable to parse '"
    first = detail.split("\n", 1)[0]
    start = first.find(prefix)
    end = first.rfind("': ")
    if start < 0 or end < start + len(prefix):
        return None
    return first[start + len(prefix):end]


def check_url(url: str) -> str:
    """`url` without a trailing slash; ValueError if it is not http(s) or carries credentials."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("the InfluxDB URL must look like http://host:8086 or https://host:8086")
    if parts.username is not None or parts.password is not None:
        raise ValueError("the InfluxDB URL must not contain credentials: set username/password or token instead")
    if parts.query or parts.fragment:
        raise ValueError("the InfluxDB URL must not have a query string or fragment")
    return url.rstrip("/")


class InfluxV1Writer:
    """POST /write?db=..&rp=..&precision=ms over one keep-alive connection (InfluxDB 1.x, and 2.x/3.x v1 compat).

    Not thread-safe: use one writer per thread. A dropped connection is reopened on the next request.
    """

    def __init__(self, url: str, database: str, retention_policy: str | None = None, username: str | None = None,
                 password: str | None = None, timeout_s: float = 10.0, gzip: bool = False):
        base = check_url(url)
        parts = urlsplit(base)
        self.database = database
        self.target = f"InfluxDB at {base} (database {database!r})"
        self._https = parts.scheme == "https"
        self._host, self._port = parts.hostname, parts.port or (443 if self._https else 80)
        self._path = parts.path
        self._timeout_s = timeout_s
        self._gzip = gzip
        params = {"db": database, "precision": "ms", **({"rp": retention_policy} if retention_policy else {})}
        self._write_path = f"{self._path}/write?{urlencode(params)}"
        self._auth = {}
        if username:
            basic = base64.b64encode(f"{username}:{password or ''}".encode()).decode()
            self._auth = {"Authorization": f"Basic {basic}"}
        self._write_headers = {"Content-Type": "text/plain; charset=utf-8", **self._auth}
        if gzip:
            self._write_headers["Content-Encoding"] = "gzip"
        self._connection: http.client.HTTPConnection | None = None

    def write(self, lines: list[str]) -> None:
        """Write the lines in one request; WriteError if InfluxDB did not store them."""
        if not lines:
            return
        body = "\n".join(lines).encode()
        if self._gzip:
            body = gzip.compress(body, compresslevel=1)
        status, detail, _ = self._request("POST", self._write_path, body, self._write_headers, WriteError)
        if status >= 300:
            raise error_for_status(status, detail, self.target)

    def query(self, influxql: str, database: str | None = None) -> dict:
        """Run InfluxQL (POST /query, epoch=ms) and return the decoded answer; QueryError if a statement failed."""
        form = {"q": influxql, "db": database or self.database, "epoch": "ms"}
        headers = {"Content-Type": "application/x-www-form-urlencoded", **self._auth}
        status, detail, body = self._request("POST", f"{self._path}/query", urlencode(form).encode(), headers,
                                             QueryError)
        if status >= 300:
            raise error_for_status(status, detail, self.target, QueryError)
        answer = json.loads(body)
        errors = [result["error"] for result in answer.get("results", []) if "error" in result]
        if errors:
            raise QueryError(f"{self.target} refused the query: {'; '.join(errors)[:_DETAIL_MAX]}", retryable=False)
        return answer

    def close(self) -> None:
        """Close the connection."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _request(self, method: str, path: str, body: bytes, headers: dict[str, str],
                 kind: type[InfluxError]) -> tuple[int, str, bytes]:
        """(status, error detail, body); reopens a kept-alive connection the server closed, once."""
        while True:
            reused = self._connection is not None
            connection = self._connection or self._connect()
            self._connection = connection
            try:
                connection.request(method, path, body=body, headers=headers)
                response = connection.getresponse()
                data = response.read()
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                if reused and not isinstance(exc, TimeoutError):
                    continue
                raise kind(f"{self.target} is unreachable: {_describe(exc, self._timeout_s)}",
                           retryable=True) from exc
            if response.will_close:
                self.close()
            detail = "" if response.status < 300 else _error_detail(response, data)
            return response.status, detail, data

    def _connect(self) -> http.client.HTTPConnection:
        if self._https:
            return http.client.HTTPSConnection(self._host, self._port, timeout=self._timeout_s,
                                               context=ssl.create_default_context())
        return http.client.HTTPConnection(self._host, self._port, timeout=self._timeout_s)


class InfluxV2Writer:
    """The v2 write API through influxdb-client (InfluxDB 2.x, 3.x, 1.8+, VictoriaMetrics), synchronous."""

    def __init__(self, url: str, token: str | None, org: str, bucket: str, timeout_s: float = 10.0,
                 gzip: bool = False):
        base = check_url(url)
        self.org, self.bucket = org, bucket
        self.target = f"InfluxDB at {base} (org {org!r}, bucket {bucket!r})"
        self._timeout_s = timeout_s
        self._client = InfluxDBClient(url=base, token=token, org=org, timeout=int(timeout_s * 1000),
                                      enable_gzip=gzip)
        self._api = self._client.write_api(write_options=SYNCHRONOUS)

    def write(self, lines: list[str]) -> None:
        """Write the lines in one request; WriteError if the server did not store them."""
        if not lines:
            return
        try:
            self._api.write(bucket=self.bucket, org=self.org, record=lines, write_precision=WritePrecision.MS)
        except InfluxDBError as exc:
            status = getattr(exc.response, "status", None)
            if status is None:
                raise WriteError(f"{self.target} failed: {exc.message}", retryable=True) from exc
            raise error_for_status(status, str(exc.message), self.target) from exc
        except (OSError, urllib3.exceptions.HTTPError) as exc:
            raise WriteError(f"{self.target} is unreachable: {_describe(exc, self._timeout_s)}",
                             retryable=True) from exc

    def close(self) -> None:
        """Close the client and its connection pool."""
        self._api.close()
        self._client.close()


def _describe(exc: BaseException, timeout_s: float) -> str:
    if isinstance(exc, (TimeoutError, urllib3.exceptions.TimeoutError)):
        return f"no answer within {timeout_s:g} s"
    return f"{type(exc).__name__}: {exc}"


def _error_detail(response: http.client.HTTPResponse, body: bytes) -> str:
    try:
        return str(json.loads(body)["error"])
    except (ValueError, KeyError, TypeError):
        return response.getheader("X-Influxdb-Error") or body.decode(errors="replace") or response.reason


class InfluxConfig(BaseModel):
    """Where the collector writes: `api = "v1"` (database, retention_policy, username, password) or
    `api = "v2"` (org, bucket, token)."""

    model_config = ConfigDict(extra="forbid")

    api: Literal["v1", "v2"] = "v2"
    url: str = "http://localhost:8086"
    timeout_s: float = Field(default=10.0, gt=0, le=300)
    gzip: bool = False
    database: str | None = Field(default=None, min_length=1, description="v1: the database")
    retention_policy: str | None = Field(default=None, min_length=1, description="v1: default policy if unset")
    username: str | None = Field(default=None, min_length=1, description="v1: user with WRITE on the database")
    password: SecretStr | None = None
    org: str | None = Field(default=None, min_length=1, description="v2: organisation")
    bucket: str | None = Field(default=None, min_length=1, description="v2: bucket")
    token: SecretStr | None = Field(default=None, description="v2: API token with write access to the bucket")

    @field_validator("url")
    @classmethod
    def _url(cls, url: str) -> str:
        return check_url(url)

    @model_validator(mode="after")
    def _fields_of_the_api(self) -> InfluxConfig:
        v1, v2 = ("database", "retention_policy", "username", "password"), ("org", "bucket", "token")
        required, foreign = (("database",), v2) if self.api == "v1" else (("org", "bucket"), v1)
        missing = [name for name in required if getattr(self, name) is None]
        if missing:
            raise ValueError(f'api = "{self.api}" needs {" and ".join(missing)}')
        stray = [name for name in foreign if getattr(self, name) is not None]
        if stray:
            raise ValueError(f'not used with api = "{self.api}": {", ".join(stray)}')
        if self.api == "v1" and (self.username is None) != (self.password is None):
            raise ValueError("username and password must be given together")
        return self


def make_writer(config: InfluxConfig) -> Writer:
    """The writer for `config`."""
    if config.api == "v1":
        password = config.password.get_secret_value() if config.password else None
        return InfluxV1Writer(config.url, config.database, config.retention_policy, config.username, password,
                              config.timeout_s, config.gzip)
    token = config.token.get_secret_value() if config.token else None
    return InfluxV2Writer(config.url, token, config.org, config.bucket, config.timeout_s, config.gzip)
