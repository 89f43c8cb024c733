"""Feeds each site's rules with their metric series and turns alert events into InfluxDB lines and MQTT messages.

Site-metric rules are evaluated at the end of every 15-minute bin, in data time: at bin end e, a rule on
period P sees the value of P from `standard_periods(e)` when that period ends at e (every bin for 15m, mtd
and 12m; each hour for 1h; each local midnight for 1d). A bin is evaluated once the site's data has passed
it: every reporting device's latest sample is at or after e, or the site's data clock (the median of its
devices' latest samples) is GRACE_MS past e (a dead device does not hold the site back for ever). An
accelerated replay of past data therefore fires the same alerts at the same instants as live operation.

Device rules are evaluated at every call: `agent_offline` from the devices' last status (the broker's last
will sets it), `meter_lag_s` against the site's data clock, `gpu_power_limit_ratio` from each GPU's latest
stored raw reading.

States, the last evaluated bin and the first data clock per site are kept in a JSON file beside the
collector's state, so a restart neither fires twice nor forgets a firing alert. Events carry data-time
timestamps for site rules, so re-evaluating a bin after a crash rewrites the same points.
"""

from __future__ import annotations

import json
import os
import statistics
from collections.abc import Mapping
from pathlib import Path

from collector.accounting import BIN_MS
from collector.alerts import OK, AlertEvent, AlertState, evaluate, restore
from collector.book import EnergyBook
from collector.ingest import DeviceObservations
from collector.lineproto import line
from collector.metrics import standard_periods
from collector.report import Reporter
from collector.rules import SITE_METRICS, Rule
from collector.site import STREAM_SEPARATOR, SiteIndex
from common.contract import Alert, alert_topic, encode

GRACE_MS = 10 * 60_000
MAX_CATCH_UP_MS = 86_400_000  # bins further back than this are not evaluated after a lost state file


class Alerting:
    def __init__(self, rules: Mapping[str, tuple[Rule, ...]], index: SiteIndex, book: EnergyBook,
                 reporter: Reporter, state_path: Path | None = None):
        """rules: per site, the rules its profiles give. state_path: where states survive restarts."""
        self.rules = {site: tuple(site_rules) for site, site_rules in rules.items() if site_rules}
        self.index = index
        self.book = book
        self.reporter = reporter
        self.state_path = state_path
        self.states: dict[tuple[str, str, str], AlertState] = {}
        self.evaluated_through: dict[str, int] = {}
        self.first_clock: dict[str, int] = {}
        self._gpu_seen: dict[tuple, int] = {}
        self._saved_text: str | None = None
        self._load()

    def evaluate(self, now_ms: int, devices: DeviceObservations) -> list[AlertEvent]:
        """Every event since the last call, oldest first per rule."""
        events: list[AlertEvent] = []
        latest_by_site = self._latest_by_site()
        for site, rules in self.rules.items():
            latest = latest_by_site.get(site)
            if not latest:
                continue
            clock = int(statistics.median_low(latest.values()))
            self.first_clock.setdefault(site, clock)
            events += self._site_metric_events(site, rules, latest, clock)
            events += self._device_events(site, rules, now_ms, clock, latest, devices)
        self._save_if_changed()
        return events

    def active(self) -> list[tuple[str, str, str]]:
        """(rule, site, subject) of every firing alert."""
        return [key for key, state in self.states.items() if state.state == "firing"]

    def _site_metric_events(self, site: str, rules: tuple[Rule, ...], latest: Mapping[str, int],
                            clock: int) -> list[AlertEvent]:
        metric_rules = [r for r in rules if r.metric in SITE_METRICS]
        if not metric_rules:
            return []
        watermark = max(min(latest.values()), clock - GRACE_MS)
        last_end = watermark - watermark % BIN_MS
        start = self.evaluated_through.get(site)
        if start is None:  # the first evaluation of the site: from its first bin, at most a day back
            first_bins = self.book.site_bin_starts(site, last_end - MAX_CATCH_UP_MS, last_end)
            if not first_bins:
                return []
            start = first_bins[0]
        timezone = self.index.site(site).timezone
        events = []
        for end in range(start + BIN_MS, last_end + 1, BIN_MS):
            periods = {label: (label, begin, stop) for label, begin, stop in standard_periods(end, timezone)
                       if stop == end}
            wanted = sorted({r.period.value for r in metric_rules} & periods.keys())
            values = dict(zip(wanted, self.reporter.metrics(site, [periods[label] for label in wanted])))
            for rule in metric_rules:
                if rule.period.value in values:
                    events += self._observe(rule, site, "", end, getattr(values[rule.period.value], rule.metric))
            self.evaluated_through[site] = end
        return events

    def _device_events(self, site: str, rules: tuple[Rule, ...], now_ms: int, clock: int,
                       latest: Mapping[str, int], devices: DeviceObservations) -> list[AlertEvent]:
        events = []
        for rule in rules:
            if rule.metric == "agent_offline":
                for key, online in devices.online.items():
                    if key[0] == site:
                        events += self._observe(rule, site, key[3], now_ms, 0.0 if online else 1.0)
            elif rule.metric == "meter_lag_s":
                for meter in self.index.expected_meters(site):
                    seen = latest.get(meter.stream, self.first_clock[site])
                    events += self._observe(rule, site, meter.device, clock, max(0, clock - seen) / 1000)
            elif rule.metric == "gpu_power_limit_ratio":
                for key, (ts_ms, ratio) in devices.gpu_limit_ratio.items():
                    if key[0] == site and self._gpu_seen.get(key) != ts_ms:
                        events += self._observe(rule, site, f"{key[3]}:{key[4]}", ts_ms, ratio)
        if any(r.metric == "gpu_power_limit_ratio" for r in rules):
            self._gpu_seen.update({k: v[0] for k, v in devices.gpu_limit_ratio.items() if k[0] == site})
        return events

    def _observe(self, rule: Rule, site: str, subject: str, t_ms: int, value: float | None) -> list[AlertEvent]:
        key = (rule.id, site, subject)
        state, event = evaluate(rule, site, subject, self.states.get(key, OK), t_ms, value)
        if state.state == "ok":
            self.states.pop(key, None)
        else:
            self.states[key] = state
        return [event] if event else []

    def _latest_by_site(self) -> dict[str, dict[str, int]]:
        """Per site with rules, the latest sample time of every stream that has reported, by its book key
        (HostInfo.stream, MeterInfo.stream)."""
        latest: dict[str, dict[str, int]] = {}
        for stream, state in self.book.streams.items():
            site = stream.split(STREAM_SEPARATOR, 2)[1]
            if site in self.rules:
                times = [kept[-1].ts_ms for kept in state.sessions.values() if kept]
                if times:
                    latest.setdefault(site, {})[stream] = max(times)
        return latest

    def _load(self) -> None:
        if self.state_path is None or not self.state_path.exists():
            return
        self._saved_text = self.state_path.read_text(encoding="utf-8")
        saved = json.loads(self._saved_text)
        self.states = {(r, s, subj): restore(state, since) for r, s, subj, state, since in saved["states"]}
        self.evaluated_through = {k: int(v) for k, v in saved["evaluated_through"].items()}
        self.first_clock = {k: int(v) for k, v in saved["first_clock"].items()}

    def _save_if_changed(self) -> None:
        """Write the states file when something in it changed (at most one write per evaluation round)."""
        if self.state_path is None:
            return
        saved = {"states": [[*key, s.state, s.since_ms] for key, s in self.states.items()],
                 "evaluated_through": self.evaluated_through, "first_clock": self.first_clock}
        text = json.dumps(saved)
        if text == self._saved_text:
            return
        temporary = self.state_path.with_suffix(".tmp")
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, self.state_path)
        self._saved_text = text

def alert_line(event: AlertEvent) -> str:
    """The `alert` point of an event (docs/influx-schema.md)."""
    rule = event.rule
    tags = {"site": event.site, "rule": rule.id, "severity": rule.severity.value, "subject": event.subject}
    fields = {
        "state": event.state, "active": event.active, "value": event.value, "threshold": rule.threshold,
        "comparison": rule.comparison.value, "metric": rule.metric,
        "period": rule.period_label, "title": rule.title, "source": rule.citation or None,
        "since_ms": event.since_ms,
    }
    return line("alert", tags, fields, event.t_ms)


def alert_message(event: AlertEvent, root: str) -> tuple[str, bytes]:
    """(topic, payload) of an event for MQTT, in the wire contract (common/contract.py Alert)."""
    rule = event.rule
    message = Alert(rule=rule.id, title=rule.title, site=event.site, subject=event.subject, state=event.state,
                    ts_ms=event.t_ms, since_ms=event.since_ms, metric=rule.metric,
                    period=rule.period_label, comparison=rule.comparison.value,
                    threshold=rule.threshold, value=event.value, severity=rule.severity.value,
                    labels=dict(rule.labels), source=rule.citation)
    return alert_topic(event.site, rule.id, event.subject, root), encode(message)



def log_fields(event: AlertEvent) -> dict[str, object]:
    """The event as log fields (logfmt or JSON): what fired, for whom, on which value, and from which document;
    None where the rule or event has no such value."""
    rule = event.rule
    return {"rule": rule.id, "site": event.site, "subject": event.subject or None, "severity": rule.severity.value,
            "metric": rule.metric, "period": rule.period_label,
            "value": None if event.value is None else round(event.value, 6), "comparison": rule.comparison.value,
            "threshold": rule.threshold, "title": rule.title, "source": rule.citation or None}
