"""The InfluxDB writers and the spooled output against real servers: influxd 1.6.7 (v1 API) and VictoriaMetrics
(v2 write API through influxdb-client): exact values, idempotent writes, outages, bad data, credentials."""

from __future__ import annotations

import json
import logging
import urllib.parse
import urllib.request

import pytest
from pydantic import ValidationError

from collector.lineproto import line
from collector.output import MAX_RETRY_DELAY_S, SpooledOutput
from collector.writers import InfluxConfig, InfluxV1Writer, InfluxV2Writer, QueryError, WriteError, make_writer
from common.spool import Spool
from tests.servers import Influxd, VictoriaMetrics, free_port

pytestmark = pytest.mark.servers

DB = "dcem"
TS = 1_700_000_000_123
SECRET = "pa55-w0rd-never-logged"


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def influxd(tmp_path):
    server = Influxd(tmp_path / "influxd")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def v1(influxd):
    writer = InfluxV1Writer(influxd.url, DB)
    writer.query(f"CREATE DATABASE {DB}")
    yield writer
    writer.close()


@pytest.fixture
def vm(tmp_path):
    server = VictoriaMetrics(tmp_path / "vm")
    server.start()
    yield server
    server.stop()


def rows(writer: InfluxV1Writer, influxql: str) -> list[dict]:
    """The rows of an InfluxQL answer as dicts, without the columns a row has no value in."""
    series = writer.query(influxql)["results"][0].get("series", [])
    return [{column: value for column, value in zip(s["columns"], values, strict=True) if value is not None}
            for s in series for values in s["values"]]


def export(vm: VictoriaMetrics, match: str) -> dict[str, dict]:
    """VictoriaMetrics' raw samples of the series matching `match`, by metric name."""
    vm.force_flush()
    query = urllib.parse.urlencode({"match[]": match})
    with urllib.request.urlopen(f"{vm.url}/api/v1/export?{query}", timeout=10) as response:
        series = [json.loads(text) for text in response.read().splitlines()]
    return {s["metric"]["__name__"]: s for s in series}


def logged(caplog, name: str) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.getMessage() == name]


def everything_logged(caplog) -> str:
    return caplog.text + "".join(repr(getattr(record, "fields", "")) for record in caplog.records)


def energy_batch(host: str, start: int, count: int) -> list[str]:
    return [line("energy", {"site": "dc1", "host": host}, {"j": float(k)}, TS + k) for k in range(start, start + count)]


def test_v1_stores_exact_values_and_ms_timestamps(v1) -> None:
    v1.write([
        line("power", {"site": "dc1", "host": "h1"},
             {"w": 0.1, "third": 1 / 3, "big": 2**62 + 1, "estimated": True, "method": 'rapl "v2" \\'}, TS),
        line("power", {"site": "dc1", "host": "h2"}, {"w": 1e16, "tiny": 5e-324, "estimated": False}, TS + 1),
    ])
    assert rows(v1, "SELECT * FROM power") == [
        {"time": TS, "site": "dc1", "host": "h1", "w": 0.1, "third": 1 / 3, "big": 2**62 + 1, "estimated": True,
         "method": 'rapl "v2" \\'},
        {"time": TS + 1, "site": "dc1", "host": "h2", "w": 1e16, "tiny": 5e-324, "estimated": False},
    ]


def test_v1_names_that_need_escaping_come_back_unchanged(v1) -> None:
    v1.write([line("power draw,kW", {"rack id": "r=1,a b", "host": "CORP\\h1"}, {"energy j,=": 2.5}, TS)])
    assert rows(v1, 'SELECT * FROM "power draw,kW"') == [
        {"time": TS, "rack id": "r=1,a b", "host": "CORP\\h1", "energy j,=": 2.5}]


def test_v1_same_series_and_timestamp_is_stored_once(v1) -> None:
    batch = energy_batch("h1", 0, 3)
    v1.write(batch)
    v1.write(batch)
    assert rows(v1, "SELECT COUNT(j) FROM energy") == [{"time": 0, "count": 3}]
    v1.write([line("energy", {"site": "dc1", "host": "h1"}, {"j": 9.5}, TS)])
    assert [row["j"] for row in rows(v1, "SELECT j FROM energy")] == [9.5, 1.0, 2.0]


def test_v1_retention_policy_and_gzip(influxd, v1) -> None:
    v1.query(f'CREATE RETENTION POLICY "long" ON {DB} DURATION 1000w REPLICATION 1')
    writer = InfluxV1Writer(influxd.url, DB, retention_policy="long", gzip=True)
    writer.write([line("p", {}, {"w": 1.25}, TS)])
    writer.close()
    assert rows(v1, f'SELECT w FROM "{DB}"."long"."p"') == [{"time": TS, "w": 1.25}]
    assert rows(v1, "SELECT w FROM p") == []


def test_v1_malformed_line_is_bad_data_and_names_the_line(v1) -> None:
    with pytest.raises(WriteError) as caught:
        v1.write(["p w=1.0 1", "p w=oops 2"])
    error = caught.value
    assert (error.retryable, error.bad_data, error.status, error.line) == (False, True, 400, "p w=oops 2")
    assert "unable to parse" in str(error)


def test_v1_missing_database_is_a_configuration_error(influxd) -> None:
    writer = InfluxV1Writer(influxd.url, "nope")
    with pytest.raises(WriteError) as caught:
        writer.write(["p w=1.0 1"])
    error = caught.value
    assert (error.retryable, error.bad_data, error.status) == (False, False, 404)
    assert "'nope'" in str(error) and "does not exist" in str(error)


def test_v1_reopens_a_connection_the_server_closed(influxd, v1) -> None:
    v1.write(energy_batch("h1", 0, 1))
    influxd.stop()
    influxd.start()
    v1.write(energy_batch("h1", 1, 1))
    assert rows(v1, "SELECT COUNT(j) FROM energy") == [{"time": 0, "count": 2}]


def test_unreachable_servers_are_retryable_and_errors_hold_no_credentials() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    writers = [InfluxV1Writer(url, DB, username="collector", password=SECRET, timeout_s=2),
               InfluxV2Writer(url, token=SECRET, org="dc", bucket="energy", timeout_s=2)]
    for writer in writers:
        with pytest.raises(WriteError) as caught:
            writer.write(["p w=1.0 1"])
        writer.close()
        assert caught.value.retryable and "unreachable" in str(caught.value)
        assert SECRET not in str(caught.value) and SECRET not in repr(caught.value.__cause__)


def test_v1_authentication_and_no_credentials_in_errors_or_logs(tmp_path, caplog) -> None:
    server = Influxd(tmp_path / "auth", auth_enabled=True)
    server.start()
    try:
        admin = InfluxV1Writer(server.url, DB, username=server.admin_user, password=server.admin_password)
        admin.query(f"CREATE DATABASE {DB}")
        admin.write(energy_batch("h1", 0, 2))
        with pytest.raises(QueryError) as anonymous:
            InfluxV1Writer(server.url, DB).query("SELECT * FROM energy")
        assert anonymous.value.status == 401

        caplog.set_level(logging.INFO)
        output = SpooledOutput(InfluxV1Writer(server.url, DB, username=server.admin_user, password=SECRET),
                               Spool(tmp_path / "spool.db", 100), clock=Clock())
        assert output.submit(energy_batch("h1", 2, 2))
        assert output.stats().backlog_batches == 1  # refused credentials: kept, not set aside
        [record] = logged(caplog, "influxdb-refuses-writes")
        assert "authentication failed" in record.fields["reason"] and "401" in record.fields["reason"]
        assert SECRET not in everything_logged(caplog)
        assert server.admin_password not in everything_logged(caplog)
        assert len(rows(admin, "SELECT j FROM energy")) == 2
        output.close()
        admin.close()
    finally:
        server.stop()


def test_spooled_output_loses_nothing_while_influxdb_is_down(tmp_path, influxd, v1, caplog) -> None:
    caplog.set_level(logging.INFO)
    clock = Clock()
    output = SpooledOutput(InfluxV1Writer(influxd.url, DB, timeout_s=2), Spool(tmp_path / "spool.db", 1000),
                           clock=clock)
    batches = [energy_batch(f"h{i}", 0, 50) for i in range(6)]
    assert output.submit(batches[0])
    assert output.stats().written_lines == 50 and output.stats().last_write_latency_s > 0

    influxd.stop()
    assert all(output.submit(batch) for batch in batches[1:4])
    stats = output.stats()
    assert (stats.backlog_batches, stats.backlog_lines, stats.failed_writes) == (3, 150, 1)
    clock.now = 1.0
    assert output.drain() == 0
    assert output.stats().failed_writes == 2
    assert len(logged(caplog, "influxdb-unavailable")) == 1

    influxd.start()
    assert output.submit(batches[4])  # the backlog goes first: spooled behind it
    clock.now = 3.0
    assert output.drain() == 4
    assert output.submit(batches[5])
    stats = output.stats()
    assert (stats.backlog_batches, stats.backlog_lines, stats.written_lines, stats.failed_writes) == (0, 0, 300, 2)
    assert len(logged(caplog, "influxdb-available")) == 1
    counts = rows(v1, "SELECT COUNT(j) FROM energy GROUP BY host")
    assert counts == [{"time": 0, "count": 50}] * 6
    output.close()


def test_spool_left_by_an_earlier_run_is_written(tmp_path, v1, influxd) -> None:
    spool = Spool(tmp_path / "spool.db", 1000)
    spool.extend(["\n".join(energy_batch(f"h{i}", 0, 10)).encode() for i in range(3)])
    output = SpooledOutput(InfluxV1Writer(influxd.url, DB), spool, clock=Clock())
    assert (output.stats().backlog_batches, output.stats().backlog_lines) == (3, 30)
    assert output.drain(max_batches=2) == 2
    assert output.drain() == 1
    assert rows(v1, "SELECT COUNT(j) FROM energy") == [{"time": 0, "count": 30}]
    output.close()


def test_bad_batch_is_set_aside_and_the_backlog_goes_on(tmp_path, influxd, v1, caplog) -> None:
    caplog.set_level(logging.INFO)
    bad = [*energy_batch("h2", 0, 2), f"energy,host=h2 j=oops {TS}"]
    spool = Spool(tmp_path / "spool.db", 1000)
    spool.extend(["\n".join(batch).encode() for batch in (energy_batch("h1", 0, 5), bad, energy_batch("h3", 0, 5))])
    rejected = Spool(tmp_path / "rejected.db", 1000)
    output = SpooledOutput(InfluxV1Writer(influxd.url, DB), spool, rejected=rejected, clock=Clock())
    assert output.drain() == 3
    stats = output.stats()
    assert (stats.backlog_batches, stats.rejected_batches, stats.written_lines) == (0, 1, 10)
    assert [body for _, body in rejected.peek(10)] == ["\n".join(bad).encode()]
    [record] = logged(caplog, "influxdb-batch-rejected")
    assert record.fields["line"] == f"energy,host=h2 j=oops {TS}"
    assert "unable to parse" in record.fields["reason"]
    assert rows(v1, "SELECT COUNT(j) FROM energy GROUP BY host") == [{"time": 0, "count": n} for n in (5, 2, 5)]
    output.close()


def test_back_off_doubles_from_1_s_to_30_s_and_the_backlog_is_logged_once_a_minute(tmp_path, caplog) -> None:
    caplog.set_level(logging.INFO)
    clock = Clock()
    writer = InfluxV1Writer(f"http://127.0.0.1:{free_port()}", DB, timeout_s=2)
    output = SpooledOutput(writer, Spool(tmp_path / "spool.db", 100), clock=clock)
    assert output.submit(["p w=1.0 1"])
    failed_at, failures = clock.now, 1
    for delay in (1, 2, 4, 8, 16, MAX_RETRY_DELAY_S, MAX_RETRY_DELAY_S):
        clock.now = failed_at + delay - 0.01
        assert output.drain() == 0 and output.stats().failed_writes == failures
        clock.now = failed_at + delay
        assert output.drain() == 0 and output.stats().failed_writes == failures + 1
        failed_at, failures = clock.now, failures + 1
    assert output.stats().backlog_batches == 1
    # failures at 0, 1, 3, 7, 15, 31, 61 and 91 s: the first is logged, then the backlog once, at 61 s
    assert len(logged(caplog, "influxdb-unavailable")) == 1
    [still] = logged(caplog, "influxdb-still-unavailable")
    assert (still.fields["backlog_batches"], still.fields["free_batches"]) == (1, 99)
    output.close()


def test_v2_writer_stores_exact_values_in_victoria_metrics_once(vm) -> None:
    writer = InfluxV2Writer(vm.url, token=SECRET, org="dc", bucket="energy")
    batch = [line("power", {"site": "dc1", "host": "h1"}, {"w": 0.1, "j": 123456.789, "n": 7}, TS),
             line("power", {"site": "dc1", "host": "h1"}, {"w": 250.5, "j": 123457.0, "n": 8}, TS + 1000)]
    writer.write(batch)
    writer.write(batch)
    labels = {"site": "dc1", "host": "h1"}
    assert export(vm, '{__name__=~"power_.*"}') == {
        "power_w": {"metric": {"__name__": "power_w", **labels}, "values": [0.1, 250.5], "timestamps": [TS, TS + 1000]},
        "power_j": {"metric": {"__name__": "power_j", **labels}, "values": [123456.789, 123457.0],
                    "timestamps": [TS, TS + 1000]},
        "power_n": {"metric": {"__name__": "power_n", **labels}, "values": [7, 8], "timestamps": [TS, TS + 1000]},
    }
    writer.close()


def test_config_is_validated_and_makes_the_writer() -> None:
    v1 = InfluxConfig(api="v1", url="http://127.0.0.1:8086/", database=DB, username="u", password=SECRET)
    assert isinstance(make_writer(v1), InfluxV1Writer) and v1.url == "http://127.0.0.1:8086"
    v2 = InfluxConfig(api="v2", org="dc", bucket="energy", token=SECRET)
    assert isinstance(make_writer(v2), InfluxV2Writer)
    assert SECRET not in repr(v1) + repr(v2)
    for bad, why in [({"api": "v1"}, "needs database"), ({"api": "v2", "org": "dc"}, "needs bucket"),
                     ({"api": "v1", "database": DB, "token": "t"}, "not used"),
                     ({"api": "v1", "database": DB, "username": "u"}, "together"),
                     ({"api": "v2", "org": "dc", "bucket": "b", "url": "ftp://x"}, "http"),
                     ({"api": "v2", "org": "dc", "bucket": "b", "bukket": "b"}, "Extra inputs")]:
        with pytest.raises(ValidationError, match=why):
            InfluxConfig(**bad)


def test_a_full_output_spool_refuses_a_batch_instead_of_dropping_an_older_one(tmp_path) -> None:
    """The collector acknowledges MQTT messages once their lines are spooled: dropping spooled lines later
    would lose acknowledged data, so a full spool says no and the messages wait at the broker."""
    unreachable = InfluxV1Writer(f"http://127.0.0.1:{free_port()}", DB, timeout_s=0.5)
    output = SpooledOutput(unreachable, Spool(tmp_path / "spool.db", 3), clock=Clock())
    assert all(output.enqueue([f"m v={i}i {i}"]) for i in range(3))
    assert output.full and not output.enqueue(["m v=99i 99"])
    assert output.stats().backlog_batches == 3 and output.stats().dropped_batches == 0
    output.close()


def test_a_write_refused_by_a_database_limit_stays_in_the_spool_as_a_configuration_problem() -> None:
    """influxd 1.x answers 400 'partial write: max-values-per-tag limit exceeded' past 100,000 values of a tag:
    that is not bad data to set aside (the messages would be acknowledged and the points never stored)."""
    from collector.writers import error_for_status

    detail = '{"error":"partial write: max-values-per-tag limit exceeded (100000/100000): measurement=\\"host\\""}'
    error = error_for_status(400, detail, "InfluxDB at http://db:8086")
    assert not error.bad_data and not error.retryable
    assert "max-values-per-tag = 0" in str(error)
    malformed = error_for_status(400, '{"error":"unable to parse \'x y\': invalid field format"}', "db")
    assert malformed.bad_data
