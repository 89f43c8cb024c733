"""The committed Grafana files: exactly what `dcem-grafana` generates from rules/, and well formed for Grafana
(unique uids and panel ids, conditions naming a query, known datasources, a non-overlapping grid, defined
template variables, thresholds at the rules' values, names from docs/influx-schema.md)."""

from __future__ import annotations

import re
from itertools import combinations
from pathlib import Path

import pytest
import yaml

from collector.rules import DEVICE_METRICS, SITE_METRICS, load_profiles
from grafana import DATASOURCE_UID, EXPRESSION_UID
from grafana.generate import files, main
from tests import grafana_model as model

SCHEMA = Path(__file__).parents[1] / "docs" / "influx-schema.md"
GENERATED_FOLDERS = ("dashboards", "provisioning", "examples")
GLOBALS = {"timeFilter", "__interval", "__interval_ms", "interval", "__from", "__to"}
RULES = [rule for profile in load_profiles().values() for rule in profile.resolved()]


def committed() -> set[str]:
    return {str(p.relative_to(model.FOLDER)) for folder in GENERATED_FOLDERS
            for p in (model.FOLDER / folder).rglob("*") if p.is_file()}


def test_the_committed_files_are_what_dcem_grafana_generates(tmp_path):
    fresh = files()
    outdated = [p for p, text in fresh.items()
                if not (model.FOLDER / p).is_file() or (model.FOLDER / p).read_bytes() != text.encode()]
    assert not outdated, f"grafana/ is out of date ({', '.join(outdated)}): run dcem-grafana"
    assert committed() == set(fresh), "files in grafana/ that dcem-grafana does not write: remove them"
    assert main(["--out", str(tmp_path)]) == 0
    assert {p: (tmp_path / p).read_bytes() for p in fresh} == {p: t.encode() for p, t in fresh.items()}
    assert main(["--out", str(tmp_path), "--check"]) == 0
    (tmp_path / "dashboards" / "dcem-site.json").write_text("{}")
    assert main(["--out", str(tmp_path), "--check"]) == 1


def test_generation_is_deterministic():
    assert files() == files()


def test_dashboard_uids_and_panel_ids_are_unique():
    boards = model.dashboards()
    assert len({b["uid"] for b in boards.values()}) == len(boards) == 3
    for name, board in boards.items():
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids)), name
        assert board["schemaVersion"] >= 39 and board["id"] is None


def test_panels_fit_the_grid_without_overlapping():
    for name, board in model.dashboards().items():
        boxes = [(p["title"], p["gridPos"]) for p in board["panels"]]
        for title, pos in boxes:
            assert pos["x"] >= 0 and pos["w"] > 0 and pos["x"] + pos["w"] <= 24, (name, title)
            assert pos["y"] >= 0 and pos["h"] > 0, (name, title)
        for (a, p), (b, r) in combinations(boxes, 2):
            apart = (p["x"] + p["w"] <= r["x"] or r["x"] + r["w"] <= p["x"]
                     or p["y"] + p["h"] <= r["y"] or r["y"] + r["h"] <= p["y"])
            assert apart, (name, a, b)


def test_every_template_variable_a_query_uses_is_defined_before():
    for name, board in model.dashboards().items():
        defined = []
        for variable in board["templating"]["list"]:
            if variable["type"] == "query":
                assert model.referenced(variable["query"]) - GLOBALS <= set(defined), (name, variable["name"])
            defined.append(variable["name"])
        for panel, target in model.panel_targets(board):
            missing = model.referenced(target["query"]) - GLOBALS - set(defined)
            assert not missing, (name, panel["title"], missing)
            assert target["rawQuery"] and target["refId"]


def datasource_uids(node) -> list[str]:
    """Every datasourceUid and datasource.uid anywhere in a file."""
    found = []
    if isinstance(node, dict):
        if "datasourceUid" in node:
            found.append(node["datasourceUid"])
        if isinstance(node.get("datasource"), dict):
            found.append(node["datasource"]["uid"])
        for value in node.values():
            found += datasource_uids(value)
    elif isinstance(node, list):
        for value in node:
            found += datasource_uids(value)
    return found


def test_every_datasource_used_is_the_provisioned_one_or_expressions():
    provisioned = yaml.safe_load((model.FOLDER / "provisioning/datasources/dc-energy-monitor.yaml").read_text())
    source = provisioned["datasources"][0]
    assert source["uid"] == DATASOURCE_UID and source["type"] == "influxdb"
    assert source["jsonData"]["version"] == "InfluxQL" and source["jsonData"]["dbName"] == "$INFLUX_DB"
    used = []
    for board in model.dashboards().values():
        used += datasource_uids(board)
    used += datasource_uids(model.alert_rules())
    assert used and set(used) <= {DATASOURCE_UID, EXPRESSION_UID}


def test_one_alert_rule_per_rule_whose_condition_names_one_of_its_queries():
    rules = model.alert_rules()
    assert sorted(r["labels"]["rule"] for r in rules) == sorted(r.id for r in RULES)
    assert len({r["uid"] for r in rules}) == len(rules) and all(len(r["uid"]) <= 40 for r in rules)
    assert len({r["title"] for r in rules}) == len(rules)
    by_id = {r.id: r for r in RULES}
    for rule in rules:
        ref_ids = [d["refId"] for d in rule["data"]]
        assert rule["condition"] in ref_ids and len(set(ref_ids)) == len(ref_ids), rule["uid"]
        for data in rule["data"]:
            assert data["model"]["refId"] == data["refId"]
            if data["datasourceUid"] == EXPRESSION_UID:
                assert data["model"]["expression"] in ref_ids
            else:  # Grafana refuses a data query whose range does not start before it ends
                assert data["relativeTimeRange"]["from"] > data["relativeTimeRange"]["to"]
        source = by_id[rule["labels"]["rule"]]
        assert (rule["for"], rule["noDataState"]) == ("0s", "OK")
        assert rule["labels"] == {**source.labels, "severity": source.severity.value, "rule": source.id,
                                  "profile": rule["group"]}
        assert rule["annotations"]["summary"] == source.title
        assert source.source.cite() in rule["annotations"]["description"]
        assert f"'{source.id}'" in rule["data"][0]["model"]["query"]
        assert ("confirmed from the source: NO" in rule["annotations"]["description"]) == (not source.source.confirmed)


def schema_names() -> set[str]:
    """Every `name` docs/influx-schema.md mentions: measurements, tags and fields."""
    return set(re.findall(r"`([a-z_][a-z0-9_]*)`", SCHEMA.read_text(encoding="utf-8")))


def test_queries_name_only_measurements_tags_and_fields_of_the_schema():
    known = schema_names() | SITE_METRICS.keys() | DEVICE_METRICS.keys()
    queries = [t["query"] for b in model.dashboards().values() for _, t in model.panel_targets(b)]
    queries += [v["query"] for b in model.dashboards().values() for v in b["templating"]["list"]
                if v["type"] == "query"]
    queries += [d["model"]["query"] for r in model.alert_rules() for d in r["data"] if "query" in d["model"]]
    for query in queries:
        unknown = set(re.findall(r'"([^"]+)"', query)) - known
        assert not unknown, (unknown, query)


def thresholds_of(board: dict, title: str) -> list[float]:
    panel = next(p for p in board["panels"] if p["title"] == title)
    return [s["value"] for s in panel["fieldConfig"]["defaults"]["thresholds"]["steps"][1:]]


@pytest.mark.parametrize("title, metric", [("PUE ($period)", "pue"), ("Green-power ratio ($period)", "green_ratio"),
                                           ("Utilisation ($period)", "cpu_util"),
                                           ("Coverage ($period)", "host_coverage")])
def test_threshold_lines_are_the_values_of_the_rules(title, metric):
    site = model.dashboards()["dcem-site.json"]
    expected = sorted({r.threshold for r in RULES if r.metric == metric and r.threshold is not None})
    assert expected and thresholds_of(site, title) == expected
    panel = next(p for p in site["panels"] if p["title"] == title)
    assert panel["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]["mode"] == "line"


def test_policy_values_and_units():
    site = model.dashboards()["dcem-site.json"]
    assert {1.2, 1.25, 1.3, 1.5} <= set(thresholds_of(site, "PUE ($period)"))  # GB 40879 grades, Wuhan
    assert {0.8, 1.0} <= set(thresholds_of(site, "Green-power ratio ($period)"))  # hub, Beijing
    units = {p["title"]: p["fieldConfig"]["defaults"]["unit"] for b in model.dashboards().values()
             for p in b["panels"]}
    assert units["Facility and IT energy"] == units["Rack energy"] == "kwatth"
    assert units["Host GPU power"] == units["GPU power and power limit"] == "watt"
    assert units["Green-power ratio ($period)"] == units["GPU power / power limit"] == "percentunit"
    assert units["CUE ($period)"] == "suffix:kgCO2/kWh"
