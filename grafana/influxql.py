"""InfluxQL for the dashboards and alert rules, over the measurements of docs/influx-schema.md.

Queries use Grafana's InfluxQL macros: `$timeFilter` (the dashboard or rule time range), `${__from}` and
`${__to}` (its ends in epoch ms), `$__interval` (the panel's GROUP BY interval) and template variables matched
as regular expressions (`"site" =~ /^$site$/`), which Grafana fills with one escaped value or, for several,
`(a|b)`.
"""

from __future__ import annotations

from collections.abc import Iterable

TIME_FILTER = "$timeFilter"
BY_INTERVAL = "time($__interval)"
# site_metrics points sit at their period's start: a 12m point a year before the data it covers ends, an mtd
# point at the month's start. "The figure at the end of the range" selects by the data's end (`end_ms`) instead;
# the time bounds only narrow the scan (12 calendar months are at most 366 days).
DATA_ENDS_IN_RANGE = ('"end_ms" >= ${__from} AND "end_ms" <= ${__to} AND time >= ${__from}ms - 366d '
                      'AND time <= ${__to}ms')


def quoted(name: str) -> str:
    return f'"{name}"'


def matches(tag: str, variable: str | None = None) -> str:
    """The tag matches the template variable of the same name (or the one named)."""
    return f'"{tag}" =~ /^${variable or tag}$/'


def equals(tag: str, value: str) -> str:
    return f"\"{tag}\" = '{value}'"


def either(*conditions: str) -> str:
    return "(" + " OR ".join(conditions) + ")"


def call(function: str, field: str, alias: str | None = None) -> str:
    """`function("field")`, named `alias` (the field's own name by default) so series keep a schema name."""
    return f'{function}("{field}") AS "{alias or field}"'


def select(fields: Iterable[str], source: str, where: Iterable[str], group_by: Iterable[str] = (),
           tail: str = "") -> str:
    """SELECT fields FROM source WHERE a AND b [GROUP BY ...] [tail]; source is a measurement or a subquery."""
    source = source if source.startswith("(") else quoted(source)
    text = f"SELECT {', '.join(fields)} FROM {source} WHERE {' AND '.join(where)}"
    group_by = list(group_by)
    if group_by:
        text += " GROUP BY " + ", ".join(group_by)
    return f"{text} {tail}" if tail else text


def per_interval(tags: Iterable[str] = ()) -> list[str]:
    """GROUP BY time($__interval) and the tags: one point per interval and series."""
    return [BY_INTERVAL, *map(quoted, tags)]


def latest_row(fields: Iterable[str], measurement: str, where: Iterable[str], tags: Iterable[str]) -> str:
    """The latest point of each series, all its fields from that one point."""
    return select(map(quoted, fields), measurement, where, map(quoted, tags), "ORDER BY time DESC LIMIT 1")


def firing(where: Iterable[str], tags: Iterable[str], fields: Iterable[str] = ()) -> str:
    """The alerts whose latest `alert` event is firing: one series per tag combination.

    `active` is a boolean field, and Grafana's server-side expressions take a boolean column for a label, not a
    value (a series of booleans is no data to them). So the latest event of each series is selected in a
    subquery (`last("active")`, with `fields` of the same event), the outer query keeps the series whose latest
    `active` is true, and, without `fields`, counts it: 1 for each firing alert, no series for the others.
    There is no time filter: an alert that fired months ago and still fires has no newer event.
    """
    tags, fields = [quoted(t) for t in tags], [quoted(f) for f in fields]
    inner = select(['last("active") AS "active"', *fields], "alert", where, tags)
    return select(fields or ['count("active") AS "active"'], f"({inner})", ['"active" = true'], tags)
