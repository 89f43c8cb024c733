"""The dashboards: the fleet overview, one site, and the rack, host and GPU drill-down.

Measurements, tags and fields are those of docs/influx-schema.md; the threshold steps and lines come from the
rules (grafana/thresholds.py), the units of the rule metrics from collector.rules.SITE_METRICS.
"""

from __future__ import annotations

from collector.rules import SITE_METRICS, Period, Rule
from grafana import influxql as q
from grafana.panels import (CELSIUS, CUE, DATE, KWH, RATIO, WATT, Board, bars, column, custom_variable,
                            query_variable, stat, table, target, timeseries)
from grafana.thresholds import policy_rules, steps

SITE = q.matches("site")
TWELVE_MONTHS = Period.TRAILING_12_MONTHS
FACILITY_ROLES = ("facility-input", "onsite-generation")
SOURCE_COLOURS = {"grid": "#8f8f8f", "pv": "yellow", "wind": "light-green", "green-traded": "green",
                  "diesel": "#8a5a2b", "mixed": "purple"}
FIRING_FIELDS = ("title", "value", "threshold", "since_ms", "source")
FILL = "fill(none)"
# Periods a time series shows at their start; mtd and 12m points sit at the month's or the year's start, so they
# are shown as the figure at the end of the range instead (stats and tables)
CHARTED_PERIODS = [Period.BIN.value, Period.HOUR.value, Period.DAY.value]


def dashboards(rules: list[Rule]) -> dict[str, dict]:
    """File name (under dashboards/) -> dashboard."""
    return {"dcem-fleet.json": fleet(rules), "dcem-site.json": site(rules), "dcem-drilldown.json": drilldown(rules)}


def unit_of(metric: str) -> str:
    return CUE if metric.startswith("cue_") else SITE_METRICS[metric][0]


def policy(rules: list[Rule], metric: str, period: Period | None = None) -> dict | None:
    """Threshold steps at the policy values for the metric, or None when no rule sets one."""
    chosen = policy_rules(rules, metric, period)
    return steps(chosen) if chosen else None


def site_values(measurement: str) -> str:
    return f'SHOW TAG VALUES FROM "{measurement}" WITH KEY = "site"'


def site_variable(measurement: str) -> dict:
    return query_variable("site", "Site", site_values(measurement))


def firing_table(title: str, tags: tuple[str, ...]) -> dict:
    query = q.firing([SITE], tags, FIRING_FIELDS)
    return table(title, [target(query, table=True)], overrides=[column("since_ms", unit=DATE, label="since")],
                 description="Alerts whose latest event in the alert measurement is firing, as the collector "
                             "evaluated them (hold time and hysteresis included); no time filter.")


def fleet(rules: list[Rule]) -> dict:
    board = Board()
    twelve = [SITE, q.equals("period", TWELVE_MONTHS), q.DATA_ENDS_IN_RANGE]
    for metric, title in (("pue", "PUE"), ("green_ratio", "Green-power ratio"),
                          ("cue_location", "CUE, location-based"), ("cue_market", "CUE, market-based")):
        query = q.select([q.call("last", metric)], "site_metrics", twelve, [q.quoted("site")])
        board.add(stat(f"{title}, trailing 12 months", [target(query, alias="$tag_site")], unit_of(metric),
                       policy(rules, metric, TWELVE_MONTHS), decimals=3,
                       description=f"Each site's 12-month {SITE_METRICS[metric][1]} at the end of the time "
                                   "range."), 6, 5)
    fields = ("pue", "pue_category", "pue_status", "coverage", "green_ratio", "green_ratio_metered",
              "cue_location", "cue_market", "end_ms")
    board.add(table("Sites: latest 12-month figures",
                    [target(q.latest_row(fields, "site_metrics", twelve, ["site"]), table=True)],
                    overrides=[column("pue", thresholds=policy(rules, "pue", TWELVE_MONTHS)),
                               column("green_ratio", unit=RATIO,
                                      thresholds=policy(rules, "green_ratio", TWELVE_MONTHS)),
                               column("green_ratio_metered", unit=RATIO), column("coverage", unit=RATIO),
                               column("cue_location", unit=CUE), column("cue_market", unit=CUE),
                               column("end_ms", unit=DATE, label="data until")],
                    description="Each site's trailing-12-month figures at the end of the time range: PUE with "
                                "its category, status and the coverage it rests on, green ratio and CUE."), 24, 7)
    daily = [SITE, q.equals("period", Period.DAY), q.TIME_FILTER]
    for metric, title in (("pue", "PUE"), ("green_ratio", "Green-power ratio")):
        query = q.select([q.quoted(metric)], "site_metrics", daily, [q.quoted("site")])
        board.add(timeseries(f"{title} per day", [target(query, alias="$tag_site")], unit_of(metric),
                             policy(rules, metric),
                             description="Each local day's figure (an interim figure, not the 12-month one), "
                                         "plotted at the start of the day, against the policy values."), 12, 8)
    board.add(firing_table("Firing alerts", ("site", "rule", "subject", "severity")), 24, 7)
    return board.dashboard("dcem-fleet", "dc-energy-monitor: fleet overview",
                           "Every site's 12-month PUE, green-power ratio and CUE against the policy values of rules/.",
                           [query_variable("site", "Site", site_values("site_metrics"), multi=True)], "now-7d")


def site(rules: list[Rule]) -> dict:
    board = Board()
    twelve = [SITE, q.equals("period", TWELVE_MONTHS), q.DATA_ENDS_IN_RANGE]
    chosen = [SITE, q.equals("period", "$period"), q.TIME_FILTER]
    for metric, title in (("pue", "PUE (12 months)"), ("pue_category", "PUE category (12 months)"),
                          ("coverage", "Coverage (12 months)"), ("green_ratio", "Green-power ratio (12 months)"),
                          ("cue_location", "CUE location-based (12 months)"),
                          ("cue_market", "CUE market-based (12 months)")):
        query = q.select([q.call("last", metric)], "site_metrics", twelve)
        text = metric == "pue_category"
        board.add(stat(title, [target(query)], "none" if text else unit_of(metric),
                       None if text else policy(rules, metric, TWELVE_MONTHS), text=text,
                       decimals=None if text else 3), 4, 4)
    fields = ("pue", "pue_category", "pue_status", "coverage", "bins_complete", "bins_total", "end_ms")
    latest = q.latest_row(fields, "site_metrics", [SITE, q.DATA_ENDS_IN_RANGE], ["period"])
    board.add(table("PUE by period", [target(latest, table=True)],
                    overrides=[column("pue", thresholds=policy(rules, "pue")), column("coverage", unit=RATIO),
                               column("end_ms", unit=DATE, label="data until")],
                    description="Every period (15m, 1h, 1d, mtd, 12m) at the end of the time range: PUE, its "
                                "category (PUE1-3 or estimated), status and coverage."), 12, 8)
    board.add(firing_table("Firing alerts", ("rule", "subject", "severity")), 12, 8)

    def period_panel(title: str, metrics: tuple[str, ...], policy_metric: str, unit: str) -> None:
        query = q.select(map(q.quoted, metrics), "site_metrics", chosen)
        board.add(timeseries(title, [target(query)], unit, policy(rules, policy_metric)), 12, 8)

    period_panel("PUE ($period)", ("pue",), "pue", unit_of("pue"))
    period_panel("Coverage ($period)", ("coverage", "facility_coverage", "host_coverage"), "host_coverage", RATIO)
    energy = q.select([q.call("sum", "e_facility_kwh"), q.call("sum", "e_it_kwh")], "site_metrics",
                      [SITE, q.equals("period", Period.BIN), q.TIME_FILTER], q.per_interval(), FILL)
    board.add(timeseries("Facility and IT energy", [target(energy)], KWH, bars=True, interval="15m",
                         description="E_facility and E_IT of the 15-minute bins (site_metrics, period 15m), "
                                     "summed per interval."), 12, 8)
    hosts = q.select([q.call("mean", "server_input_w")], "host", [SITE, q.TIME_FILTER], q.per_interval(["host"]),
                     FILL)
    board.add(timeseries("Facility and IT power", [
        target(q.select([q.call("mean", "power_w")], "meter", [SITE, q.TIME_FILTER], q.per_interval(["role"]), FILL),
               alias="$tag_role"),
        target(q.select([q.call("sum", "server_input_w")], f"({hosts})", [q.TIME_FILTER], q.per_interval(), FILL),
               ref="B", alias="hosts (server input, estimated)")], WATT,
        description="Meter power by role (facility-input, onsite-generation, ups-output, cooling ...) and the "
                    "hosts' summed server input estimate."), 12, 8)
    sources = q.select([q.call("sum", "energy_kwh")], "meter_energy",
                       [SITE, q.either(*(q.equals("role", r) for r in FACILITY_ROLES)), q.TIME_FILTER],
                       q.per_interval(["source"]), FILL)
    board.add(timeseries("Facility energy by source", [target(sources, alias="$tag_source")], KWH, bars=True,
                         stacked=True, interval="15m",
                         overrides=[column(s, colour=c) for s, c in SOURCE_COLOURS.items()],
                         description="meter_energy of the facility-input and onsite-generation meters by source: "
                                     "green energy is pv, wind and green-traded."), 12, 8)
    period_panel("Green-power ratio ($period)", ("green_ratio", "green_ratio_metered", "green_ratio_onsite"),
                 "green_ratio", RATIO)
    period_panel("CUE ($period)", ("cue_location", "cue_market"), "cue_location", CUE)
    period_panel("Utilisation ($period)", ("cpu_util", "gpu_util"), "cpu_util", RATIO)
    events = q.select(map(q.quoted, ("state", "title", "value", "threshold", "comparison", "metric", "period",
                                     "since_ms")), "alert", [SITE, q.TIME_FILTER],
                      map(q.quoted, ("rule", "subject", "severity")))
    board.add(table("Alert events", [target(events, table=True)],
                    overrides=[column("since_ms", unit=DATE, label="since")],
                    description="Every firing and resolved event in the time range."), 24, 8)
    return board.dashboard(
        "dcem-site", "dc-energy-monitor: site",
        "One site: PUE by period with category and coverage, energy and power, green energy by source, CUE, "
        "utilisation and alerts.",
        [site_variable("site_metrics"),
         custom_variable("period", "Period", CHARTED_PERIODS, Period.HOUR.value)], "now-7d")


def drilldown(rules: list[Rule]) -> dict:
    board = Board()
    location = [SITE, q.matches("room"), q.matches("rack")]
    hosts = [*location, q.matches("host")]

    def per(measurement: str, fields: list[str], where: list[str], tags: list[str]) -> str:
        return q.select(fields, measurement, [*where, q.TIME_FILTER], q.per_interval(tags), FILL)

    rooms = [SITE, q.matches("room")]
    board.add(timeseries("Room energy", [target(per("room_energy", [q.call("sum", "energy_kwh")], rooms, ["room"]),
                                                alias="$tag_room")],
                         KWH, bars=True, stacked=True, interval="15m",
                         description="Server-input energy of each room's hosts per 15-minute bin (estimated)."),
              12, 8)
    board.add(timeseries("Room host coverage and utilisation", [
        target(per("room_energy", [q.call("mean", "host_coverage"), q.call("mean", "cpu_util"),
                                   q.call("mean", "gpu_util")], rooms, ["room"]), alias="$tag_room $col")],
        RATIO, interval="15m"), 12, 8)
    racks = ["room", "rack"]  # rack ids repeat across rooms
    board.add(timeseries("Rack energy", [target(per("rack_energy", [q.call("sum", "energy_kwh")], location, racks),
                                                alias="$tag_room $tag_rack")],
                         KWH, bars=True, stacked=True, interval="15m",
                         description="Server-input energy of each rack's hosts per 15-minute bin (estimated)."),
              12, 8)
    total = q.select([q.call("sum", "energy_kwh")], "rack_energy", [*location, q.TIME_FILTER], map(q.quoted, racks))
    board.add(bars("Rack energy over the time range", [target(total, alias="$tag_room $tag_rack")], KWH), 12, 8)
    board.add(timeseries("Rack host coverage", [
        target(per("rack_energy", [q.call("mean", "host_coverage")], location, racks),
               alias="$tag_room $tag_rack")],
        RATIO, policy(rules, "host_coverage"), interval="15m"), 12, 8)
    board.add(timeseries("Rack utilisation", [
        target(per("rack_energy", [q.call("mean", "cpu_util"), q.call("mean", "gpu_util")], location, racks),
               alias="$tag_room $tag_rack $col")], RATIO, policy(rules, "cpu_util"), interval="15m"), 12, 8)
    for field, title in (("server_input_w", "Host server input power (estimated)"), ("cpu_w", "Host CPU power"),
                         ("gpu_w", "Host GPU power")):
        board.add(timeseries(title, [target(per("host", [q.call("mean", field)], hosts, ["host"]),
                                            alias="$tag_host")], WATT), 8, 8)
    gpu_tags = ["host", "gpu"]
    board.add(timeseries("GPU power and power limit", [
        target(per("gpu", [q.call("mean", "power_w"), q.call("mean", "power_limit_w")], hosts, gpu_tags),
               alias="$tag_host $tag_gpu $col")], WATT), 12, 8)
    ratio = 'mean("power_w") / mean("power_limit_w") AS "gpu_power_limit_ratio"'
    board.add(timeseries("GPU power / power limit", [
        target(per("gpu", [ratio], hosts, gpu_tags), alias="$tag_host $tag_gpu")], RATIO,
        policy(rules, "gpu_power_limit_ratio")), 12, 8)
    for measurement, field, title, unit in (("gpu", "util", "GPU utilisation", RATIO),
                                            ("gpu", "temp_c", "GPU temperature", CELSIUS),
                                            ("host", "cpu_util", "Host CPU utilisation", RATIO)):
        tags = gpu_tags if measurement == "gpu" else ["host"]
        alias = "$tag_host $tag_gpu" if measurement == "gpu" else "$tag_host"
        board.add(timeseries(title, [target(per(measurement, [q.call("mean", field)], hosts, tags), alias=alias)],
                             unit), 8, 8)
    show = 'SHOW TAG VALUES FROM "rack_energy" WITH KEY'
    variables = [
        site_variable("rack_energy"),
        query_variable("room", "Room", f'{show} = "room" WHERE {SITE}', multi=True),
        query_variable("rack", "Rack", f'{show} = "rack" WHERE {SITE} AND {q.matches("room")}', multi=True),
        query_variable("host", "Host", f'SHOW TAG VALUES FROM "host" WITH KEY = "host" WHERE '
                                       f'{" AND ".join(location)}', multi=True),
    ]
    return board.dashboard("dcem-drilldown", "dc-energy-monitor: racks, hosts and GPUs",
                           "Room and rack energy, coverage and utilisation; host power; GPU power against its limit, "
                           "utilisation and temperature.", variables, "now-24h")
