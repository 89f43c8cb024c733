"""Policy and operational rules as data: the rule file format (rules/*.yaml) and its loader.

One file per policy source, each a *profile* a site selects by name in its site configuration
(`sites[].rules`). A rule names the metric it watches, the period the metric is taken over, the comparison
and threshold that make it fire, how long that must hold, the hysteresis that resolves it, its severity and
labels, and where the threshold comes from. Format and the shipped profiles: rules/README.md. Evaluation:
collector/alerts.py.

An invalid file stops the collector at start; the error names the file, the rule and the field.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from collector.site import describe_errors, find_duplicates, read_yaml
from rules import FOLDER as SHIPPED_RULES

RULE_ID = r"^[a-z0-9][a-z0-9\-]{0,62}$"


class RuleError(ValueError):
    """A rule file or profile choice that cannot be used; one line per problem: file, rule, field, why."""


class Period(StrEnum):
    """The periods of site metrics (docs/influx-schema.md, site_metrics `period` tag)."""

    BIN = "15m"
    HOUR = "1h"
    DAY = "1d"
    MONTH_TO_DATE = "mtd"
    TRAILING_12_MONTHS = "12m"


class Comparison(StrEnum):
    """When a rule's condition holds: value <op> threshold, or (missing) the value is absent."""

    ABOVE = ">"
    AT_OR_ABOVE = ">="
    BELOW = "<"
    AT_OR_BELOW = "<="
    MISSING = "missing"


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


SITE_METRICS = {
    # site_metrics field: (unit shown in Grafana, short description)
    "pue": ("none", "PUE"),
    "green_ratio": ("percentunit", "green-power ratio (metered + certificates and trading)"),
    "green_ratio_metered": ("percentunit", "green-power ratio, metered sources only"),
    "green_ratio_onsite": ("percentunit", "green-power ratio, on-site generation only"),
    "cue_location": ("none", "CUE, location-based (kgCO2/kWh)"),
    "cue_market": ("none", "CUE, market-based (kgCO2/kWh)"),
    "coverage": ("percentunit", "complete bins / bins in the period"),
    "facility_coverage": ("percentunit", "facility-complete bins / bins in the period"),
    "host_coverage": ("percentunit", "expected hosts reporting"),
    "cpu_util": ("percentunit", "CPU utilisation"),
    "gpu_util": ("percentunit", "GPU utilisation"),
    "ppue_cooling": ("none", "partial PUE of cooling"),
}
DEVICE_METRICS = {
    # metric: (unit, subject, description)
    "agent_offline": ("bool", "device", "1 while the device's last status is offline (MQTT last will), else 0"),
    "meter_lag_s": ("s", "meter", "how far a meter's last sample lags the site's data clock"),
    "gpu_power_limit_ratio": ("percentunit", "gpu", "GPU power / its enforced power limit"),
}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Source(_Section):
    """Where a threshold comes from. `confirmed: false` says the figure could not be checked in the text."""

    document: str = Field(min_length=1, description="title of the policy document or standard")
    issuer: str | None = None
    year: int | None = Field(default=None, ge=1990, le=2100)
    seed: str | None = Field(default=None, description="the seeds/ file holding the text, when there is one")
    clause: str | None = None
    quote: str | None = Field(default=None, description="the sentence the threshold is taken from, verbatim")
    confirmed: bool = True
    note: str | None = None

    def cite(self) -> str:
        """One line for an alert: document (year), seed clause."""
        parts = [self.document + (f" ({self.year})" if self.year else "")]
        if self.seed:
            parts.append(f"seeds/{self.seed}" + (f" {self.clause}" if self.clause else ""))
        elif self.clause:
            parts.append(self.clause)
        if not self.confirmed:
            parts.append("figure not confirmed from the text")
        return "; ".join(parts)


class Rule(_Section):
    """One condition on one metric series (a site metric over a period, or a device metric)."""

    id: str = Field(pattern=RULE_ID)
    title: str = Field(min_length=1, max_length=200)
    metric: str
    period: Period | None = Field(default=None, description="site metrics only")
    comparison: Comparison
    threshold: float | None = None
    hold_s: float = Field(default=0.0, ge=0, le=400 * 86400, description="the condition must hold this long")
    hysteresis: float = Field(default=0.0, ge=0, description="how far back past the threshold resolves it")
    severity: Severity
    labels: dict[str, str] = {}
    source: Source | None = Field(default=None, description="the profile's source when absent")

    @model_validator(mode="after")
    def _consistent(self) -> Rule:
        if self.metric not in SITE_METRICS and self.metric not in DEVICE_METRICS:
            known = ", ".join([*SITE_METRICS, *DEVICE_METRICS])
            raise ValueError(f"metric {self.metric!r} is not one the collector evaluates ({known})")
        if self.metric in SITE_METRICS and self.period is None:
            raise ValueError(f"metric {self.metric!r} is a site metric: give its period "
                             f"({', '.join(p.value for p in Period)})")
        if self.metric in DEVICE_METRICS and self.period is not None:
            raise ValueError(f"metric {self.metric!r} is a device metric and has no period")
        if (self.comparison == Comparison.MISSING) != (self.threshold is None):
            raise ValueError("threshold is required with a comparison, and not allowed with 'missing'")
        for key in self.labels:
            if not re.fullmatch(r"[a-z_][a-z0-9_]{0,31}", key):
                raise ValueError(f"label name {key!r}: lower-case letters, digits and _ (Grafana and InfluxDB tags)")
        return self

    @property
    def period_label(self) -> str | None:
        """The period's tag value ('12m'), None for a device metric."""
        return self.period.value if self.period else None

    @property
    def citation(self) -> str:
        """Where the threshold comes from, in one line ('' until the profile's source is filled in)."""
        return self.source.cite() if self.source else ""

    @property
    def subject(self) -> str:
        """What one alert of this rule is about: 'site', 'device', 'meter' or 'gpu'."""
        return DEVICE_METRICS[self.metric][1] if self.metric in DEVICE_METRICS else "site"


class RuleFile(_Section):
    """A profile: the rules taken from one policy source (or the operational rules)."""

    profile: str = Field(pattern=RULE_ID)
    title: str = Field(min_length=1)
    applies_to: str = Field(min_length=1, description="which sites the source means the rules for")
    source: Source
    rules: tuple[Rule, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_ids(self) -> RuleFile:
        problems = list(find_duplicates(((f"rules[{i}]", r.id) for i, r in enumerate(self.rules)), "rule id"))
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def resolved(self) -> tuple[Rule, ...]:
        """The rules with the profile's source filled in where a rule gives none."""
        return tuple(r if r.source else r.model_copy(update={"source": self.source}) for r in self.rules)


def load_rule_file(path: Path) -> RuleFile:
    data = read_yaml(path, RuleError)
    try:
        return RuleFile.model_validate(data)
    except ValidationError as exc:
        raise RuleError(_name_rules(describe_errors(exc, path), data)) from None


def load_profiles(folder: Path = SHIPPED_RULES) -> dict[str, RuleFile]:
    """Every *.yaml in folder, by profile name. A profile or rule id used twice is an error naming both files."""
    folder = Path(folder)
    paths = sorted(folder.glob("*.yaml"))
    if not paths:
        raise RuleError(f"{folder}: no rule files (*.yaml)")
    files = {path: load_rule_file(path) for path in paths}
    problems = list(find_duplicates(((str(p), f.profile) for p, f in files.items()), "profile"))
    problems += find_duplicates(((f"{p}: {r.id}", r.id) for p, f in files.items() for r in f.rules), "rule id")
    if problems:
        raise RuleError("\n".join(problems))
    return {f.profile: f for f in files.values()}


def rules_for_sites(profiles: Mapping[str, RuleFile], chosen: Mapping[str, Iterable[str]],
                    where: str) -> dict[str, tuple[Rule, ...]]:
    """Each site's rules from the profiles its configuration names; an unknown profile is an error."""
    result, problems = {}, []
    for site, names in chosen.items():
        rules: list[Rule] = []
        for name in names:
            if name not in profiles:
                problems.append(f"{where}: site {site!r} names rule profile {name!r}; known: {', '.join(sorted(profiles))}")
                continue
            rules += profiles[name].resolved()
        result[site] = tuple(rules)
    if problems:
        raise RuleError("\n".join(problems))
    return result


def _name_rules(text: str, data: object) -> str:
    """'rules[2].threshold' -> 'rules[2] (pue-12m).threshold', so the operator finds the rule by its id."""
    rules = data.get("rules") if isinstance(data, dict) else None

    def named(match: re.Match) -> str:
        index = int(match.group(1))
        rule = rules[index] if isinstance(rules, list) and index < len(rules) else None
        rule_id = rule.get("id") if isinstance(rule, dict) else None
        return f"rules[{index}] ({rule_id})" if rule_id else match.group(0)

    return re.sub(r"rules\[(\d+)\]", named, text)
