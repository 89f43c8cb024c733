"""Reading the generated Grafana files in tests: their dashboards, panels, variables and alert rules, and
expanding Grafana's InfluxQL macros the way Grafana does before it sends a query.

Expansion (Grafana's InfluxDB datasource, InfluxQL):
- `$timeFilter` -> `time >= <from>ms and time <= <to>ms`; `${__from}`, `${__to}` -> <from>, <to> (epoch ms)
- `$__interval` and `$interval` -> the interval (e.g. `15m`), `$__interval_ms` -> it in milliseconds
- a template variable (`$name`, `${name}`, `[[name]]`) -> one value regex-escaped, or several as `(a|b)`, each
  regex-escaped (multi-value and All)
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

import yaml

import grafana

FOLDER = Path(grafana.__file__).parent
_REGEX_SPECIAL = re.compile(r"[\\^$*+?.()|\[\]{}/]")
_DURATION = re.compile(r"(\d+)(ms|s|m|h|d)")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
VARIABLE = re.compile(r"\$\{(\w+)\}|\[\[(\w+)\]\]|\$(\w+)")


def dashboards(folder: Path = FOLDER) -> dict[str, dict]:
    return {p.name: json.loads(p.read_text(encoding="utf-8")) for p in sorted((folder / "dashboards").glob("*.json"))}


def alert_rules(folder: Path = FOLDER) -> list[dict]:
    """Every rule of every group of every alert rule file, with its group's name under `group`."""
    found = []
    for path in sorted((folder / "provisioning" / "alerting").glob("*.yaml")):
        for group in yaml.safe_load(path.read_text(encoding="utf-8")).get("groups", []):
            found += [{**rule, "group": group["name"]} for rule in group["rules"]]
    return found


def panel_targets(board: dict) -> Iterator[tuple[dict, dict]]:
    """(panel, target) for every query of every panel."""
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            yield panel, target


def variables(board: dict) -> dict[str, dict]:
    return {v["name"]: v for v in board["templating"]["list"]}


def referenced(query: str) -> set[str]:
    """The variables and macros a query names."""
    return {next(g for g in match.groups() if g) for match in VARIABLE.finditer(query)}


def regex_escape(value: str) -> str:
    return _REGEX_SPECIAL.sub(lambda m: "\\" + m.group(0), value)


def interval_ms(interval: str) -> int:
    number, unit = _DURATION.fullmatch(interval).groups()
    return int(number) * _UNIT_MS[unit]


def expand(query: str, start_ms: int, end_ms: int, interval: str, values: Mapping[str, str | list[str]]) -> str:
    """The query as Grafana sends it; a variable or macro left without a value is an error."""
    def replace(match: re.Match) -> str:
        name = next(g for g in match.groups() if g)
        if name == "timeFilter":
            return f"time >= {start_ms}ms and time <= {end_ms}ms"
        if name in ("__from", "__to"):
            return str(start_ms if name == "__from" else end_ms)
        if name == "__interval_ms":
            return str(interval_ms(interval))
        if name in ("__interval", "interval"):
            return interval
        if name not in values:
            raise KeyError(f"no value for ${name} in {query}")
        value = values[name]
        if isinstance(value, str):
            return regex_escape(value) if f"/^${name}$/" in query else value
        return "(" + "|".join(map(regex_escape, value)) + ")"

    return VARIABLE.sub(replace, query)
