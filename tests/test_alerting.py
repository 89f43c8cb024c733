"""Alert evaluation inside the collector (collector/alerting.py): site metrics bin by bin in data time, device
rules, several sites at once, the events' InfluxDB and MQTT forms, and states kept across a restart."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest
import yaml

from collector.accounting import BIN_MS, Point
from collector.alerting import GRACE_MS, Alerting, alert_line, alert_message, log_fields
from collector.book import EnergyBook
from collector.ingest import DeviceObservations
from collector.report import Reporter, site_factors
from collector.rules import Rule, Source
from collector.site import SiteConfig, SiteIndex
from tests.lineparse import parse

T0 = int(datetime(2026, 3, 2, 0, 0, tzinfo=timezone.utc).timestamp() * 1000)  # 08:00 in Shanghai
SITES = """
sites:
  - id: dc1
    name: PUE 1.5
    grid_region: central
    rooms: [{id: hall, racks: [{id: r01, hosts: [h01, h02]}]}]
    meters: [{id: utility, role: facility-input, source: grid}]
  - id: dc2
    name: PUE 1.2
    grid_region: central
    rooms: [{id: hall, racks: [{id: r01, hosts: [h01, h02]}]}]
    meters: [{id: utility, role: facility-input, source: grid}]
"""
CONFIG = SiteConfig.model_validate(yaml.safe_load(SITES))
INDEX = SiteIndex(CONFIG)
FACILITY_W = {"dc1": 1200.0, "dc2": 960.0}  # hosts draw 400 W each: PUE 1.5 and 1.2
PUE_HIGH = Rule(id="pue-high", title="PUE above 1.25", metric="pue", period="15m", comparison=">", threshold=1.25,
                hold_s=1800, hysteresis=0.01, severity="critical")
METER_STALE = Rule(id="meter-stale", title="meter stale", metric="meter_lag_s", comparison=">", threshold=300,
                   severity="critical")
OFFLINE = Rule(id="offline", title="offline", metric="agent_offline", comparison=">=", threshold=1, hold_s=300,
               severity="warning")
GPU_LIMIT = Rule(id="gpu-limit", title="gpu at limit", metric="gpu_power_limit_ratio", comparison=">=",
                 threshold=0.98, hold_s=600, hysteresis=0.05, severity="info")


def feed(book: EnergyBook, site: str, until_ms: int, step_ms: int = 5 * 60_000, meter_until: int | None = None):
    """Every device of the site at constant power from T0 to until_ms, one point per step."""
    for host in ("h01", "h02"):
        info = INDEX.host(site, "hall", "r01", host)
        for seq, t in enumerate(range(T0, until_ms + 1, step_ms)):
            book.add_host_point(info, Point(f"{site}-{host}-s", seq, t, 400.0 * (t - T0) / 1000), None)
    meter = INDEX.meter(site, "facility", "main", "utility")
    for seq, t in enumerate(range(T0, (meter_until or until_ms) + 1, step_ms)):
        book.add_meter_point(meter, Point(f"{site}-utility-s", seq, t, FACILITY_W[site] * (t - T0) / 1000))


def make(rules: dict, book: EnergyBook, path=None) -> Alerting:
    reporter = Reporter(INDEX, book, {}, {s.id: site_factors(s) for s in CONFIG.sites})
    return Alerting(rules, INDEX, book, reporter, path)


def test_site_rule_fires_in_data_time_after_its_hold_for_the_site_above_the_threshold_only():
    book = EnergyBook(INDEX)
    for site in ("dc1", "dc2"):
        feed(book, site, T0 + 2 * 3_600_000)
    alerting = make({"dc1": (PUE_HIGH,), "dc2": (PUE_HIGH,)}, book)
    events = alerting.evaluate(now_ms=T0 + 10 * 86_400_000, devices=DeviceObservations())
    # bins end at T0+15', +30', +45': the PUE of 1.5 has held 30 minutes at the third bin end
    assert [(e.site, e.state, e.t_ms, e.value) for e in events] == [("dc1", "firing", T0 + 3 * BIN_MS,
                                                                     pytest.approx(1.5, rel=1e-12))]
    assert alerting.evaluated_through == {"dc1": T0 + 8 * BIN_MS, "dc2": T0 + 8 * BIN_MS}
    assert alerting.evaluate(T0 + 10 * 86_400_000, DeviceObservations()) == []  # each bin is evaluated once


def test_a_bin_waits_for_every_reporting_device_unless_the_grace_time_has_passed():
    book = EnergyBook(INDEX)
    feed(book, "dc1", T0 + 3_600_000, meter_until=T0 + 30 * 60_000)  # the meter lags 30 minutes
    alerting = make({"dc1": (PUE_HIGH,)}, book)
    alerting.evaluate(T0, DeviceObservations())
    clock = T0 + 3_600_000
    assert alerting.evaluated_through["dc1"] == clock - GRACE_MS - (clock - GRACE_MS) % BIN_MS


def test_device_rules_meter_lag_offline_and_gpu_at_its_limit():
    book = EnergyBook(INDEX)
    feed(book, "dc1", T0 + 3_600_000, meter_until=T0 + 50 * 60_000)
    alerting = make({"dc1": (METER_STALE, OFFLINE, GPU_LIMIT)}, book)
    devices = DeviceObservations(online={("dc1", "hall", "r01", "h01"): False, ("dc1", "hall", "r01", "h02"): True},
                                 gpu_limit_ratio={("dc1", "hall", "r01", "h01", "GPU-1"): (T0, 0.99)})
    now = T0 + 3_600_000
    first = alerting.evaluate(now, devices)
    assert [(e.rule.id, e.subject, e.state, e.value) for e in first] == [("meter-stale", "utility", "firing", 600.0)]
    devices.gpu_limit_ratio[("dc1", "hall", "r01", "h01", "GPU-1")] = (T0 + 600_000, 0.985)
    later = alerting.evaluate(now + 300_000, devices)
    assert [(e.rule.id, e.subject, e.state) for e in later] == [("offline", "h01", "firing"),
                                                                ("gpu-limit", "h01:GPU-1", "firing")]
    devices.online[("dc1", "hall", "r01", "h01")] = True
    assert [(e.rule.id, e.state) for e in alerting.evaluate(now + 310_000, devices)] == [("offline", "resolved")]


def test_states_survive_a_restart_so_nothing_fires_twice(tmp_path):
    path = tmp_path / "alerts.json"
    book = EnergyBook(INDEX)
    feed(book, "dc1", T0 + 3_600_000)
    assert len(make({"dc1": (PUE_HIGH,)}, book, path).evaluate(T0, DeviceObservations())) == 1
    feed(book, "dc1", T0 + 2 * 3_600_000)
    restarted = make({"dc1": (PUE_HIGH,)}, book, path)
    assert restarted.active() == [("pue-high", "dc1", "")]
    assert restarted.evaluate(T0, DeviceObservations()) == []
    assert json.loads(path.read_text())["evaluated_through"] == {"dc1": T0 + 8 * BIN_MS}


def test_event_as_an_influx_point_and_an_mqtt_message():
    book = EnergyBook(INDEX)
    feed(book, "dc1", T0 + 3_600_000)
    rule = PUE_HIGH.model_copy(update={"hold_s": 0})
    event = make({"dc1": (rule,)}, book).evaluate(T0, DeviceObservations())[0]
    measurement, tags, fields, ts_ms = parse(alert_line(event))
    assert (measurement, tags, ts_ms) == ("alert", {"site": "dc1", "rule": "pue-high", "severity": "critical"},
                                          T0 + BIN_MS)
    assert fields["state"] == "firing" and fields["active"] is True
    assert (fields["value"], fields["threshold"], fields["period"]) == (pytest.approx(1.5), 1.25, "15m")
    topic, payload = alert_message(event, "dcem")
    assert topic == "dcem/v1/alerts/dc1/pue-high"
    body = json.loads(payload)
    assert (body["state"], body["threshold"], body["comparison"], body["site"]) == ("firing", 1.25, ">", "dc1")


def test_an_event_as_log_fields_names_the_rule_the_value_and_the_source():
    book = EnergyBook(INDEX)
    feed(book, "dc1", T0 + 3_600_000)
    rule = PUE_HIGH.model_copy(update={"hold_s": 0, "source": Source(document="Plan", year=2024, seed="001.txt",
                                                                       clause="2(6)15")})
    event = make({"dc1": (rule,)}, book).evaluate(T0, DeviceObservations())[0]
    fields = log_fields(event)
    assert {k: fields[k] for k in ("rule", "site", "subject", "severity", "period", "comparison", "threshold")} == {
        "rule": "pue-high", "site": "dc1", "subject": None, "severity": "critical", "period": "15m",
        "comparison": ">", "threshold": 1.25}
    assert fields["value"] == 1.5 and fields["source"] == "Plan (2024); seeds/001.txt 2(6)15"
