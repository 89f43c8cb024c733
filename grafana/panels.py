"""The pieces of Grafana's dashboard JSON model (schemaVersion 39) the generated dashboards are built from.

Every panel queries the provisioned InfluxDB datasource with raw InfluxQL (`rawQuery`), and is placed on the
24-column grid by `Board`, left to right and then down, so positions never overlap.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from grafana import DATASOURCE

SCHEMA_VERSION = 39
TAG = "dc-energy-monitor"
GRID_WIDTH = 24

KWH, WATT, RATIO, CELSIUS, DATE = "kwatth", "watt", "percentunit", "celsius", "dateTimeAsIso"
CUE = "suffix:kgCO2/kWh"
COLOUR_BACKGROUND = {"type": "color-background"}


def target(query: str, ref: str = "A", alias: str | None = None, table: bool = False) -> dict:
    """A raw InfluxQL query; `alias` names its series (`$tag_<tag>`, `$col` are Grafana's alias patterns)."""
    result = {"datasource": DATASOURCE, "query": query, "rawQuery": True, "refId": ref,
              "resultFormat": "table" if table else "time_series"}
    if alias:
        result["alias"] = alias
    return result


def column(name: str, *, unit: str | None = None, thresholds: dict | None = None, label: str | None = None,
           colour: str | None = None) -> dict:
    """A field override by name: its unit, thresholds (table cells coloured by them), label or fixed colour."""
    properties = []
    if label:
        properties.append({"id": "displayName", "value": label})
    if unit:
        properties.append({"id": "unit", "value": unit})
    if thresholds:
        properties += [{"id": "thresholds", "value": thresholds},
                       {"id": "custom.cellOptions", "value": COLOUR_BACKGROUND}]
    if colour:
        properties.append({"id": "color", "value": {"fixedColor": colour, "mode": "fixed"}})
    return {"matcher": {"id": "byName", "options": name}, "properties": properties}


def _panel(kind: str, title: str, targets: Sequence[dict], unit: str, thresholds: dict | None, colour: dict,
           custom: dict, options: dict, overrides: Iterable[dict], description: str, interval: str | None) -> dict:
    defaults = {"color": colour, "custom": custom, "mappings": [], "unit": unit}
    if thresholds:
        defaults["thresholds"] = thresholds
    result = {"datasource": DATASOURCE, "description": description, "fieldConfig": {
        "defaults": defaults, "overrides": list(overrides)}, "options": options, "targets": list(targets),
        "title": title, "type": kind}
    if interval:
        result["interval"] = interval  # the least $__interval, e.g. 15m for energy per 15-minute bin
    return result


def timeseries(title: str, targets: Sequence[dict], unit: str, thresholds: dict | None = None, *,
               bars: bool = False, stacked: bool = False, description: str = "", overrides: Iterable[dict] = (),
               interval: str | None = None) -> dict:
    """Lines (or bars), with a threshold line at every step of `thresholds`."""
    custom = {"drawStyle": "bars" if bars else "line", "fillOpacity": 80 if bars else 0, "lineWidth": 1,
              "showPoints": "never", "spanNulls": False,
              "stacking": {"group": "A", "mode": "normal" if stacked else "none"},
              "thresholdsStyle": {"mode": "line" if thresholds else "off"}}
    options = {"legend": {"calcs": [], "displayMode": "list", "placement": "bottom", "showLegend": True},
               "tooltip": {"mode": "multi", "sort": "none"}}
    return _panel("timeseries", title, targets, unit, thresholds, {"mode": "palette-classic"}, custom, options,
                  overrides, description, interval)


def stat(title: str, targets: Sequence[dict], unit: str, thresholds: dict | None = None, *,
         text: bool = False, description: str = "", decimals: int | None = None) -> dict:
    """The latest value of each series, its background coloured by the thresholds; `text` shows strings too."""
    options = {"colorMode": "background", "graphMode": "none", "justifyMode": "auto", "orientation": "auto",
               "reduceOptions": {"calcs": ["lastNotNull"], "fields": "/.*/" if text else "", "values": False},
               "textMode": "auto"}
    result = _panel("stat", title, targets, unit, thresholds, {"mode": "thresholds"}, {}, options, (),
                    description, None)
    if decimals is not None:
        result["fieldConfig"]["defaults"]["decimals"] = decimals
    return result


def table(title: str, targets: Sequence[dict], *, overrides: Iterable[dict] = (), description: str = "") -> dict:
    """Rows as the query returns them (`resultFormat: table`: tags become columns)."""
    custom = {"align": "auto", "cellOptions": {"type": "auto"}, "inspect": False}
    options = {"cellHeight": "sm", "footer": {"countRows": False, "fields": "", "reducer": ["sum"], "show": False},
               "showHeader": True}
    return _panel("table", title, targets, "none", None, {"mode": "thresholds"}, custom, options, overrides,
                  description, None)


def bars(title: str, targets: Sequence[dict], unit: str, *, description: str = "") -> dict:
    """One horizontal bar per series: the series' value over the time range."""
    options = {"displayMode": "gradient", "orientation": "horizontal", "showUnfilled": True, "valueMode": "color",
               "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}}
    return _panel("bargauge", title, targets, unit, None, {"mode": "continuous-GrYlRd"}, {}, options, (),
                  description, None)


def query_variable(name: str, label: str, query: str, *, multi: bool = False) -> dict:
    """A template variable from `SHOW TAG VALUES`; multi-value ones offer All (every value, as a regex) and start
    with it."""
    current = {"selected": True, "text": ["All"], "value": ["$__all"]} if multi else {}
    return {"current": current, "datasource": DATASOURCE, "definition": query, "hide": 0, "includeAll": multi,
            "label": label, "multi": multi, "name": name, "options": [], "query": query, "refresh": 1,
            "regex": "", "skipUrlSync": False, "sort": 1, "type": "query"}


def custom_variable(name: str, label: str, values: Sequence[str], default: str) -> dict:
    return {"current": {"selected": True, "text": default, "value": default}, "hide": 0, "includeAll": False,
            "label": label, "multi": False, "name": name,
            "options": [{"selected": v == default, "text": v, "value": v} for v in values],
            "query": ",".join(values), "skipUrlSync": False, "type": "custom"}


class Board:
    """Panels placed on the grid in the order added: a panel that does not fit the row starts the next one."""

    def __init__(self) -> None:
        self.panels: list[dict] = []
        self._x = self._y = self._row_height = 0

    def add(self, panel: dict, width: int, height: int) -> None:
        if self._x + width > GRID_WIDTH:
            self._x, self._y, self._row_height = 0, self._y + self._row_height, 0
        panel["gridPos"] = {"h": height, "w": width, "x": self._x, "y": self._y}
        panel["id"] = len(self.panels) + 1
        self.panels.append(panel)
        self._x += width
        self._row_height = max(self._row_height, height)

    def dashboard(self, uid: str, title: str, description: str, variables: Sequence[dict],
                  since: str) -> dict:
        return {
            "annotations": {"list": []}, "description": description, "editable": True,
            "fiscalYearStartMonth": 0, "graphTooltip": 1, "id": None,
            "links": [{"asDropdown": False, "icon": "external link", "includeVars": True, "keepTime": True,
                       "tags": [TAG], "targetBlank": False, "title": "dc-energy-monitor", "type": "dashboards"}],
            "panels": self.panels, "refresh": "1m", "schemaVersion": SCHEMA_VERSION, "tags": [TAG],
            "templating": {"list": list(variables)}, "time": {"from": since, "to": "now"}, "timepicker": {},
            "timezone": "browser", "title": title, "uid": uid, "version": 1, "weekStart": "",
        }
