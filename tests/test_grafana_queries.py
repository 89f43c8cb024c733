"""Every query of every generated dashboard panel, template variable and alert rule, run against InfluxDB after a
simulated day through the real pipeline (mosquitto, collector, influxd; every shipped rule profile and a test
profile that fires and resolves), with Grafana's macros expanded as Grafana does (tests/grafana_model.py):
`$timeFilter` and `${__from}`/`${__to}` over the simulated day, `$__interval` 15m, template variables with a
concrete value, and multi-value ones as `(a|b)` with the values their own (chained) variable queries return.

Each panel's result is compared with an independent reading of the stored data (raw points aggregated here) or
with the simulator's ground truth. The simulated agents report no CPU package power, GPU power limit or GPU
temperature, so the module adds those fields to one host's and one GPU's stored points (same series and
timestamps: InfluxDB merges them) before the queries run.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from collector.lineproto import line
from collector.rules import SHIPPED_RULES, load_profiles
from collector.writers import InfluxV1Writer
from grafana.generate import files, write
from simulator.site_config import site_config
from tests import grafana_model as model
from tests.collector_harness import rows
from tests.conftest import local_servers
from tests.simulated_day import AFTERNOON, run_day, simulated_day

pytestmark = pytest.mark.servers

REL = 1e-9
INTERVAL, BUCKET_MS = "15m", 900_000
HOST, GPU, LIMIT_W = "hall-a-r01-h01", "gpu0", 350.0
FACILITY_SOURCES = {"grid": "e_grid_kwh", "green-traded": "e_green_traded_kwh", "pv": "e_pv_kwh",
                    "diesel": "e_diesel_kwh"}

Series = dict[tuple, list[dict]]  # tags (sorted (key, value) pairs) -> rows (column -> value)


@dataclass
class Day:
    db: InfluxV1Writer
    start: int
    end: int
    truth: dict
    site: dict  # the site configuration the simulator wrote
    folder: Path  # Grafana files generated from the day's rules folder

    def query(self, text: str, values: dict | None = None) -> Series:
        expanded = model.expand(text, self.start, self.end, INTERVAL, values or {})
        result = self.db.query(expanded)["results"][0]
        return {tuple(sorted(s.get("tags", {}).items())): [dict(zip(s["columns"], v)) for v in s["values"]]
                for s in result.get("series", [])}

    def raw(self, measurement: str, where: str = "") -> list[dict]:
        return rows(self.db, f'SELECT * FROM "{measurement}" WHERE time >= {self.start}ms AND time <= {self.end}ms'
                             + (f" AND {where}" if where else ""))

    def period_rows(self, period: str) -> list[dict]:
        return self.raw("site_metrics", f"\"period\" = '{period}'")

    def latest(self, period: str) -> dict:
        return rows(self.db, f"SELECT * FROM site_metrics WHERE \"period\" = '{period}' ORDER BY time DESC LIMIT 1")[0]


@pytest.fixture(scope="module")
def day(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("grafana-day")
    with local_servers(tmp) as (broker, influx, db):
        shipped = sorted(p.name for p in SHIPPED_RULES.glob("*.yaml"))
        sim = simulated_day(tmp, broker, influx, shipped, {"afternoon.yaml": AFTERNOON},
                            [*sorted(load_profiles(SHIPPED_RULES)), "test-afternoon"])
        count = f"SELECT count(pue) FROM site_metrics WHERE \"period\" = '15m' AND time >= {sim.begin}ms"
        bins = len(sim.truth["bins"])
        assert run_day(sim, broker.port, lambda: rows(db, count) and rows(db, count)[0]["count"] == bins)
        enrich(db, sim.begin)
        write(tmp / "grafana", files(sim.rules_folder))
        yield Day(db, sim.begin, sim.truth["end_ms"], sim.truth, site_config(sim.scenario)["sites"][0], tmp / "grafana")


def enrich(db: InfluxV1Writer, start: int) -> None:
    """CPU package power on HOST's points, power limit and temperature on its GPU's (what the simulator lacks)."""
    lines = []
    for i, row in enumerate(rows(db, f"SELECT * FROM host WHERE host = '{HOST}' AND time >= {start}ms")):
        lines.append(line("host", tags(row, "site", "room", "rack", "host"), {"cpu_w": 90.0 + i % 7}, row["time"]))
    gpu_points = rows(db, f"SELECT * FROM gpu WHERE host = '{HOST}' AND gpu = '{GPU}' AND time >= {start}ms")
    for i, row in enumerate(gpu_points):
        lines.append(line("gpu", tags(row, "site", "room", "rack", "host", "gpu"),
                          {"power_limit_w": LIMIT_W, "temp_c": 50.0 + i % 11}, row["time"]))
    assert len(lines) > 100
    db.write(lines)


def tags(row: dict, *names: str) -> dict[str, str]:
    return {name: row[name] for name in names}


def key(**tag_values: str) -> tuple:
    return tuple(sorted(tag_values.items()))


def bucketed(points: list[dict], tag_names: list[str], fields: list[str],
             combine: Callable[[list[float]], float] = statistics.fmean) -> Series:
    """What `SELECT combine(f) ... GROUP BY time(15m), tags fill(none)` returns, computed from raw points."""
    groups: dict[tuple, dict[int, dict[str, list]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for point in points:
        for field in fields:
            if point.get(field) is not None:
                bucket = point["time"] - point["time"] % BUCKET_MS
                groups[key(**{t: point[t] or "" for t in tag_names})][bucket][field].append(point[field])
    return {k: [{"time": b, **{f: combine(values[f]) if values[f] else None for f in fields}}
                for b, values in sorted(buckets.items())] for k, buckets in groups.items()}


def total(points: list[dict], field: str, tag_names: list[str], start: int) -> Series:
    """What `SELECT sum(f) ... WHERE $timeFilter GROUP BY tags` returns (the row at the range's start)."""
    return {k: [{"time": start, field: sum(r[field] for r in rs)}]
            for k, rs in bucketed(points, tag_names, [field], sum).items()}


def only(points: list[dict], fields: list[str]) -> Series:
    """Raw points of one series (no GROUP BY), with `fields`."""
    return {(): [{"time": p["time"], **{f: p[f] for f in fields}} for p in points]}


def assert_same(got: Series, expected: Series, label: str) -> None:
    assert got.keys() == expected.keys(), label
    for k, expected_rows in expected.items():
        got_rows = got[k]
        assert [r["time"] for r in got_rows] == [r["time"] for r in expected_rows], (label, k)
        for g, e in zip(got_rows, expected_rows):
            for field, value in e.items():
                if isinstance(value, float):
                    assert g[field] == pytest.approx(value, rel=REL, abs=1e-12), (label, k, field, g["time"])
                else:
                    assert g[field] == value, (label, k, field, g["time"])


def one_value(got: Series, field: str):
    [points] = got.values()
    [point] = points
    return point[field]


def figure(twelve: dict, field: str, expected) -> Callable[[dict[str, Series]], None]:
    """A stat of a 12-month figure: one value, that of the stored point and the expected one."""
    def check(results):
        value = one_value(results["A"], field)
        assert value == twelve[field]
        assert value == (pytest.approx(expected, rel=REL) if isinstance(expected, float) else expected)
    return check


def firing(day: Day) -> dict[tuple[str, str, str], dict]:
    """(rule, site, subject) -> the latest alert event, of those whose latest event is firing."""
    latest = {}
    for event in rows(day.db, "SELECT * FROM alert"):  # every event, whenever
        latest[(event["rule"], event["site"], event.get("subject") or "")] = event
    return {k: e for k, e in latest.items() if e["active"]}


def resolve_variables(day: Day, board: dict, picks: dict[str, str | list[str]]) -> tuple[dict, dict]:
    """Each variable's value, in order: a pick, else every value its query returns (All) or its default; and the
    values each query variable offered."""
    values, offered = {}, {}
    for variable in board["templating"]["list"]:
        name = variable["name"]
        if variable["type"] == "query":
            [(_, points)] = day.query(variable["query"], values).items()
            offered[name] = [p["value"] for p in points]
            assert offered[name], (board["uid"], name)
            pick = picks.get(name, offered[name] if variable["multi"] else offered[name][0])
            assert set([pick] if isinstance(pick, str) else pick) <= set(offered[name]), (name, pick)
        else:
            pick = picks.get(name, variable["current"]["value"])
        values[name] = pick
    return values, offered


def run_panels(day: Day, board: dict, values: dict, checks: dict[str, Callable[[dict[str, Series]], None]]) -> None:
    titles = [p["title"] for p in board["panels"]]
    assert sorted(titles) == sorted(checks), "a panel without an expectation, or an expectation without a panel"
    for panel in board["panels"]:
        results = {t["refId"]: day.query(t["query"], values) for t in panel["targets"]}
        checks[panel["title"]](results)


def test_template_variables_list_the_site_rooms_racks_and_hosts(day):
    rooms = {room["id"]: {rack["id"]: rack["hosts"] for rack in room["racks"]} for room in day.site["rooms"]}
    boards = model.dashboards()
    for name in ("dcem-fleet.json", "dcem-site.json"):
        _, offered = resolve_variables(day, boards[name], {})
        assert offered == {"site": [day.site["id"]]}
    board = boards["dcem-drilldown.json"]
    _, offered = resolve_variables(day, board, {})
    assert offered["room"] == sorted(rooms)
    assert offered["rack"] == sorted({rack for racks in rooms.values() for rack in racks})
    assert offered["host"] == sorted(h for racks in rooms.values() for hosts in racks.values() for h in hosts)
    _, offered = resolve_variables(day, board, {"room": "hall-a"})
    assert offered["rack"] == sorted(rooms["hall-a"])
    _, offered = resolve_variables(day, board, {"room": ["hall-a"], "rack": ["r01", "r02"]})
    assert offered["host"] == sorted(rooms["hall-a"]["r01"] + rooms["hall-a"]["r02"])


def test_fleet_overview(day):
    board = model.dashboards()["dcem-fleet.json"]
    values, _ = resolve_variables(day, board, {})
    assert values == {"site": [day.site["id"]]}  # All, as a regex alternation
    run = day.truth["run"]
    twelve = day.latest("12m")
    assert twelve["end_ms"] == day.end and twelve["pue_category"] == "PUE1"
    site = key(site=day.site["id"])
    firing_now = firing(day)

    def daily(field: str):
        return lambda results: assert_same(results["A"], {site: only(day.period_rows("1d"), [field])[()]}, field)

    def table(results):
        assert results["A"].keys() == {site}
        [row] = results["A"][site]
        assert {f: row[f] for f in ("pue", "pue_category", "coverage", "green_ratio", "end_ms")} == {
            f: twelve[f] for f in ("pue", "pue_category", "coverage", "green_ratio", "end_ms")}

    def alerts(results):
        assert set(results["A"]) == {key(site=s, rule=r, subject=subject, severity=e["severity"])
                                     for (r, s, subject), e in firing_now.items()}
        for tag_key, [row] in results["A"].items():
            tag = dict(tag_key)
            assert row["title"] == firing_now[(tag["rule"], tag["site"], tag["subject"])]["title"]

    run_panels(day, board, values, {
        "PUE, trailing 12 months": figure(twelve, "pue", run["pue1"]),
        "Green-power ratio, trailing 12 months": figure(twelve, "green_ratio", run["green_ratio"]),
        "CUE, location-based, trailing 12 months": figure(twelve, "cue_location", run["cue_location"]),
        "CUE, market-based, trailing 12 months": figure(twelve, "cue_market", run["cue_market"]),
        "Sites: latest 12-month figures": table,
        "PUE per day": daily("pue"),
        "Green-power ratio per day": daily("green_ratio"),
        "Firing alerts": alerts,
    })


def test_site_dashboard(day):
    board = model.dashboards()["dcem-site.json"]
    run, twelve, firing_now = day.truth["run"], day.latest("12m"), firing(day)
    periods = [option["value"] for option in next(v for v in board["templating"]["list"]
                                                  if v["name"] == "period")["options"]]
    assert periods == ["15m", "1h", "1d"]
    bins = {b["start_ms"]: b for b in day.truth["bins"]}

    def by_period(results):
        assert {dict(k)["period"] for k in results["A"]} == {"15m", "1h", "1d", "mtd", "12m"}
        for tag_key, [row] in results["A"].items():
            stored = day.latest(dict(tag_key)["period"])
            assert row == {c: stored[c] for c in row}
            assert row["end_ms"] <= day.end and row["pue_category"] == "PUE1"
        last_bin = results["A"][key(period="15m")][0]
        assert last_bin["pue"] == pytest.approx(bins[last_bin["time"]]["pue1"], rel=REL)

    def alerts(results):
        assert set(results["A"]) == {key(rule=r, subject=subject, severity=e["severity"])
                                     for (r, _, subject), e in firing_now.items()}

    def period_series(fields: list[str]):
        def check(results):
            assert_same(results["A"], only(day.period_rows(period), fields), f"{fields} {period}")
            if period == "15m" and "pue" in fields:
                for row in results["A"][()]:
                    assert row["pue"] == pytest.approx(bins[row["time"]]["pue1"], rel=REL)
        return check

    def energy(results):
        assert_same(results["A"], only(day.period_rows("15m"), ["e_facility_kwh", "e_it_kwh"]), "energy")
        assert sum(r["e_facility_kwh"] for r in results["A"][()]) == pytest.approx(run["e_facility_kwh"], rel=REL)
        assert sum(r["e_it_kwh"] for r in results["A"][()]) == pytest.approx(run["e_ups_output_kwh"], rel=REL)

    def power(results):
        assert_same(results["A"], bucketed(day.raw("meter"), ["role"], ["power_w"]), "meter power by role")
        assert {dict(k)["role"] for k in results["A"]} == {"facility-input", "onsite-generation", "ups-output",
                                                            "cooling"}
        per_host = bucketed(day.raw("host"), ["host"], ["server_input_w"])
        summed = defaultdict(float)
        for points in per_host.values():
            for p in points:
                summed[p["time"]] += p["server_input_w"]
        assert_same(results["B"], {(): [{"time": t, "server_input_w": v} for t, v in sorted(summed.items())]},
                    "hosts' power")

    def sources(results):
        facility = [m for m in day.raw("meter_energy") if m["role"] in ("facility-input", "onsite-generation")]
        assert_same(results["A"], bucketed(facility, ["source"], ["energy_kwh"], sum), "energy by source")
        assert {dict(k)["source"] for k in results["A"]} == set(FACILITY_SOURCES)
        for tag_key, points in results["A"].items():
            kind = FACILITY_SOURCES[dict(tag_key)["source"]]
            assert sum(p["energy_kwh"] for p in points) == pytest.approx(run[kind], rel=REL, abs=1e-9)

    def events(results):
        expected = defaultdict(list)
        for event in day.raw("alert"):
            expected[key(rule=event["rule"], subject=event.get("subject") or "", severity=event["severity"])].append(
                {"time": event["time"], "state": event["state"], "value": event["value"], "title": event["title"]})
        assert_same(results["A"], expected, "alert events")
        assert {"firing", "resolved"} == {row["state"] for rs in results["A"].values() for row in rs}

    for period in periods:
        values, _ = resolve_variables(day, board, {"period": period})
        assert values == {"site": day.site["id"], "period": period}
        run_panels(day, board, values, {
            "PUE (12 months)": figure(twelve, "pue", run["pue1"]),
            "PUE category (12 months)": figure(twelve, "pue_category", "PUE1"),
            "Coverage (12 months)": figure(twelve, "coverage", twelve["bins_complete"] / twelve["bins_total"]),
            "Green-power ratio (12 months)": figure(twelve, "green_ratio", run["green_ratio"]),
            "CUE location-based (12 months)": figure(twelve, "cue_location", run["cue_location"]),
            "CUE market-based (12 months)": figure(twelve, "cue_market", run["cue_market"]),
            "PUE by period": by_period,
            "Firing alerts": alerts,
            "PUE ($period)": period_series(["pue"]),
            "Coverage ($period)": period_series(["coverage", "facility_coverage", "host_coverage"]),
            "Facility and IT energy": energy,
            "Facility and IT power": power,
            "Facility energy by source": sources,
            "Green-power ratio ($period)": period_series(["green_ratio", "green_ratio_metered",
                                                          "green_ratio_onsite"]),
            "CUE ($period)": period_series(["cue_location", "cue_market"]),
            "Utilisation ($period)": period_series(["cpu_util", "gpu_util"]),
            "Alert events": events,
        })


@pytest.mark.parametrize("picks", [{}, {"room": ["hall-a"], "rack": ["r01", "r02"], "host": [HOST]}],
                         ids=["all", "one-host"])
def test_room_rack_host_and_gpu_drilldown(day, picks):
    board = model.dashboards()["dcem-drilldown.json"]
    values, _ = resolve_variables(day, board, picks)

    def chosen(points: list[dict], with_host: bool = True) -> list[dict]:
        names = ("room", "rack", "host") if with_host else ("room", "rack")
        return [p for p in points if p["site"] == values["site"] and all(p[n] in values[n] for n in names)]

    racks, hosts, gpus = chosen(day.raw("rack_energy"), False), chosen(day.raw("host")), chosen(day.raw("gpu"))
    rooms = [p for p in day.raw("room_energy") if p["site"] == values["site"] and p["room"] in values["room"]]
    rack_tags, gpu_tags = ["room", "rack"], ["gpu", "host"]
    racks_of_room: dict[tuple, float] = {}
    for rack in day.raw("rack_energy"):
        key = (rack["room"], rack["time"])
        racks_of_room[key] = racks_of_room.get(key, 0.0) + rack["energy_kwh"]
    assert rooms and all(room["energy_kwh"] == pytest.approx(racks_of_room[(room["room"], room["time"])], rel=REL)
                         for room in rooms)  # a room's bin: the sum of its racks' bins
    limited = {g["gpu"] for g in gpus if g.get("power_limit_w") is not None}
    assert limited == {GPU}

    def same(expected: Series, label: str):
        return lambda results: assert_same(results["A"], expected, label)

    def rack_energy(results):
        assert_same(results["A"], bucketed(racks, rack_tags, ["energy_kwh"], sum), "rack energy")
        assert {dict(k)["rack"] for k in results["A"]} == set(values["rack"])
        if not picks:  # every rack: the hosts' energy of the whole site
            summed = sum(p["energy_kwh"] for points in results["A"].values() for p in points)
            assert summed == pytest.approx(day.truth["run"]["e_it_kwh"], rel=REL)

    def ratio(results):
        means = bucketed(gpus, gpu_tags, ["power_w", "power_limit_w"])
        expected = {k: [{"time": p["time"], "gpu_power_limit_ratio": p["power_w"] / p["power_limit_w"]
                         if p["power_limit_w"] else None} for p in points] for k, points in means.items()}
        assert_same(results["A"], expected, "power / limit")
        assert any(p["gpu_power_limit_ratio"] for points in results["A"].values() for p in points)

    def room_energy(results):
        assert_same(results["A"], bucketed(rooms, ["room"], ["energy_kwh"], sum), "room energy")
        if not picks:
            summed = sum(p["energy_kwh"] for points in results["A"].values() for p in points)
            assert summed == pytest.approx(day.truth["run"]["e_it_kwh"], rel=REL)

    run_panels(day, board, values, {
        "Room energy": room_energy,
        "Room host coverage and utilisation": same(bucketed(rooms, ["room"], ["host_coverage", "cpu_util",
                                                                             "gpu_util"]), "room coverage"),
        "Rack energy": rack_energy,
        "Rack energy over the time range": same(total(racks, "energy_kwh", rack_tags, day.start), "rack totals"),
        "Rack host coverage": same(bucketed(racks, rack_tags, ["host_coverage"]), "host coverage"),
        "Rack utilisation": same(bucketed(racks, rack_tags, ["cpu_util", "gpu_util"]), "rack utilisation"),
        "Host server input power (estimated)": same(bucketed(hosts, ["host"], ["server_input_w"]), "server input"),
        "Host CPU power": same(bucketed(hosts, ["host"], ["cpu_w"]), "cpu power"),
        "Host GPU power": same(bucketed(hosts, ["host"], ["gpu_w"]), "gpu power"),
        "GPU power and power limit": same(bucketed(gpus, gpu_tags, ["power_w", "power_limit_w"]), "gpu power"),
        "GPU power / power limit": ratio,
        "GPU utilisation": same(bucketed(gpus, gpu_tags, ["util"]), "gpu util"),
        "GPU temperature": same(bucketed(gpus, gpu_tags, ["temp_c"]), "gpu temperature"),
        "Host CPU utilisation": same(bucketed(hosts, ["host"], ["cpu_util"]), "host cpu util"),
    })


def test_alert_rules_fire_exactly_for_the_alerts_the_collector_has_firing(day):
    rules = model.alert_rules(day.folder)
    firing_now = firing(day)
    fired = set()
    for rule in rules:
        rule_id = rule["labels"]["rule"]
        [query] = [d["model"]["query"] for d in rule["data"] if d["refId"] == "A"]
        result = day.query(query)
        # B: reduce(last), C: threshold B > 0, per series (site, subject)
        alerting = {(dict(k)["site"], dict(k)["subject"]) for k, points in result.items() if points[-1]["active"] > 0}
        assert alerting == {(s, subject) for (r, s, subject) in firing_now if r == rule_id}, rule_id
        fired |= {rule_id} if alerting else set()
    assert fired == {r for r, _, _ in firing_now}
    resolved = {e["rule"] for e in rows(day.db, "SELECT * FROM alert") if e["state"] == "resolved"} - fired
    assert fired and resolved  # some fire now, some fired and have resolved (their query returns nothing)
    committed = {r["uid"]: r for r in model.alert_rules()}
    assert committed and all(committed[r["uid"]]["data"] == r["data"] for r in rules if r["uid"] in committed)
    assert set(committed) <= {r["uid"] for r in rules}
