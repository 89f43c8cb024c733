"""Dashboard thresholds taken from the rules: a step (and a threshold line) at every policy value.

Each region between two consecutive values gets the colour of the worst severity among the rules whose
condition holds there (green where none does). The rules of every profile count, whichever a given site has
chosen: the lines show the policy values, and the collector's alerts (the firing-alerts panels) say which rules
a site actually breaks.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable

from collector.rules import Comparison, Period, Rule, Severity

OK = "green"
COLOURS = {Severity.INFO: "blue", Severity.WARNING: "orange", Severity.CRITICAL: "red"}
_RANK = [Severity.INFO, Severity.WARNING, Severity.CRITICAL]
_HOLDS = {Comparison.ABOVE: operator.gt, Comparison.AT_OR_ABOVE: operator.ge,
          Comparison.BELOW: operator.lt, Comparison.AT_OR_BELOW: operator.le}


def policy_rules(rules: Iterable[Rule], metric: str, period: Period | None = None) -> list[Rule]:
    """The rules with a threshold on `metric` (over `period` when given)."""
    return [r for r in rules if r.metric == metric and r.threshold is not None
            and (period is None or r.period == period)]


def steps(rules: Iterable[Rule]) -> dict:
    """Grafana `thresholds` (absolute steps) with a step at every threshold of `rules`."""
    rules = list(rules)
    levels = sorted({r.threshold for r in rules})
    if not levels:
        return {"mode": "absolute", "steps": [{"color": OK, "value": None}]}
    inside = [(a + b) / 2 for a, b in zip(levels, levels[1:])]  # one value inside each region
    samples = [levels[0] - 1, *inside, levels[-1] + 1]
    colours = [_colour(rules, value) for value in samples]
    return {"mode": "absolute",
            "steps": [{"color": colours[0], "value": None},
                      *({"color": c, "value": v} for c, v in zip(colours[1:], levels))]}


def _colour(rules: list[Rule], value: float) -> str:
    broken = [r.severity for r in rules if _HOLDS[r.comparison](value, r.threshold)]
    return COLOURS[max(broken, key=_RANK.index)] if broken else OK
