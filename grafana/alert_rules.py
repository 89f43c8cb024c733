"""Grafana unified-alerting rules mirroring rules/, plus an example contact point and notification policy.

The collector is the one evaluator of the rules (hold time, hysteresis, no data, data time). It writes every
firing and resolved event to the `alert` measurement; each Grafana rule here only reads that state back:
query A returns 1 for every (site, subject) whose latest event of the rule is firing, B reduces it (last), and
C fires when B > 0. `for` is 0s because the hold time was already applied by the collector, and no data means
nothing fires (noDataState OK).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from collector.rules import Comparison, Rule, RuleFile
from grafana import DATASOURCE, DATASOURCE_UID, EXPRESSION_UID
from grafana import influxql as q

FOLDER = "dc-energy-monitor alerts"
INTERVAL = "1m"
UID_MAX = 40  # Grafana's limit for an alert rule uid
TITLE_MAX = 190
CONTACT_POINT = "dcem-webhook"
EXPRESSION = {"type": EXPRESSION_UID, "uid": EXPRESSION_UID}
SEVERITY_REPEAT = {"critical": "1h", "warning": "4h", "info": "24h"}


def rule_uid(rule_id: str) -> str:
    """dcem-<rule id>; an id too long for Grafana keeps its start and gets a hash of the whole id."""
    uid = f"dcem-{rule_id}"
    if len(uid) <= UID_MAX:
        return uid
    digest = hashlib.sha1(rule_id.encode()).hexdigest()[:8]
    return f"{uid[:UID_MAX - 9]}-{digest}"


def alert_query(rule_id: str) -> str:
    return q.firing([q.equals("rule", rule_id)], ("site", "subject"))


def rule_groups(profiles: Mapping[str, RuleFile]) -> dict:
    """The alert rule provisioning file: one group per profile, one Grafana rule per rule."""
    groups = [{"orgId": 1, "name": name, "folder": FOLDER, "interval": INTERVAL,
               "rules": [grafana_rule(rule, name) for rule in profile.resolved()]}
              for name, profile in sorted(profiles.items())]
    return {"apiVersion": 1, "groups": groups}


def grafana_rule(rule: Rule, profile: str) -> dict:
    query = {"datasource": DATASOURCE, "intervalMs": 1000, "maxDataPoints": 43200, "query": alert_query(rule.id),
             "rawQuery": True, "refId": "A", "resultFormat": "time_series"}
    reduce = {"datasource": EXPRESSION, "expression": "A", "reducer": "last", "refId": "B", "type": "reduce"}
    threshold = {"conditions": [{"evaluator": {"params": [0], "type": "gt"}}], "datasource": EXPRESSION,
                 "expression": "B", "refId": "C", "type": "threshold"}
    return {
        "uid": rule_uid(rule.id),
        "title": f"{rule.id}: {rule.title}"[:TITLE_MAX],
        "condition": "C",
        "data": [
            {"refId": "A", "relativeTimeRange": {"from": 600, "to": 0}, "datasourceUid": DATASOURCE_UID,
             "model": query},
            {"refId": "B", "relativeTimeRange": {"from": 0, "to": 0}, "datasourceUid": EXPRESSION_UID,
             "model": reduce},
            {"refId": "C", "relativeTimeRange": {"from": 0, "to": 0}, "datasourceUid": EXPRESSION_UID,
             "model": threshold},
        ],
        "for": "0s",
        "noDataState": "OK",
        "execErrState": "Error",
        "isPaused": False,
        "labels": {**rule.labels, "severity": rule.severity.value, "rule": rule.id, "profile": profile},
        "annotations": annotations(rule),
    }


def annotations(rule: Rule) -> dict[str, str]:
    source = rule.source
    confirmed = source is None or source.confirmed
    condition = ("no value" if rule.comparison == Comparison.MISSING
                 else f"{rule.comparison.value} {rule.threshold:g}")
    period = f" over {rule.period.value}" if rule.period else ""
    return {
        "summary": rule.title,
        "description": (
            f"Site {{{{ $labels.site }}}}{{{{ if $labels.subject }}}}, {{{{ $labels.subject }}}}{{{{ end }}}}: "
            f"{rule.metric}{period} {condition} (hold {rule.hold_s:g} s, hysteresis {rule.hysteresis:g}), as "
            f"evaluated by the dc-energy-monitor collector (measurement alert, rule {rule.id}). "
            f"Source: {rule.citation or 'none'}. "
            f"Figure confirmed from the source: {'yes' if confirmed else 'NO'}."),
        "source": rule.citation,
        "confirmed": "yes" if confirmed else "no",
    }


def contact_points() -> dict:
    """An example webhook contact point; its URL comes from the environment."""
    return {"apiVersion": 1, "contactPoints": [{
        "orgId": 1, "name": CONTACT_POINT,
        "receivers": [{"uid": CONTACT_POINT, "type": "webhook", "disableResolveMessage": False,
                       "settings": {"url": "$DCEM_ALERT_WEBHOOK_URL", "httpMethod": "POST"}}]}]}


def notification_policies() -> dict:
    """An example policy tree routing by the severity label (it replaces the organisation's whole tree)."""
    routes = [{"receiver": CONTACT_POINT, "object_matchers": [["severity", "=", severity]],
               "group_wait": "30s", "group_interval": "5m", "repeat_interval": repeat}
              for severity, repeat in SEVERITY_REPEAT.items()]
    return {"apiVersion": 1, "policies": [{
        "orgId": 1, "receiver": CONTACT_POINT, "group_by": ["grafana_folder", "alertname", "site"],
        "routes": routes}]}
