"""Rule evaluation: pure functions from a rule, its previous state and one observation to the next state.

An observation is (t_ms, value) of one series: a site metric over a period, taken at the end of each
15-minute bin, or a device metric taken at each evaluation. `value` None means no data.

States: `ok`, `pending` (the condition holds, not yet for `hold_s`), `firing`.
- ok -> pending when the condition holds; pending -> firing once it has held for hold_s (at once with 0).
- pending -> ok when the condition stops holding or there is no data: the hold must be unbroken.
- firing -> ok (a `resolved` event) only when the condition would not hold even with the threshold moved
  back by `hysteresis` ('>': value <= threshold - hysteresis, '>=': value < threshold - hysteresis,
  '<': value >= threshold + hysteresis, '<=': value > threshold + hysteresis; 'missing': a value is present).
  With hysteresis 0 that is simply "the condition no longer holds". A PUE hovering around 1.25 with a
  hysteresis of 0.01 therefore fires once and stays firing until it is at 1.24 or below.
- no data keeps a firing alert firing: the problem is not known to be gone.
"""

from __future__ import annotations

from dataclasses import dataclass

from collector.rules import Comparison, Rule


@dataclass(frozen=True, slots=True)
class AlertState:
    state: str = "ok"
    since_ms: int | None = None  # pending: when the condition started holding; firing: when it fired


@dataclass(frozen=True, slots=True)
class AlertEvent:
    """An alert firing or resolving, for one rule, site and subject ('' for a site rule)."""

    rule: Rule
    site: str
    subject: str
    state: str  # "firing" or "resolved"
    t_ms: int
    value: float | None
    since_ms: int | None

    @property
    def active(self) -> bool:
        return self.state == "firing"


OK = AlertState()


def holds(rule: Rule, value: float | None) -> bool:
    """Whether the rule's condition holds for this value."""
    if rule.comparison == Comparison.MISSING:
        return value is None
    if value is None:
        return False
    threshold = rule.threshold
    match rule.comparison:
        case Comparison.ABOVE:
            return value > threshold
        case Comparison.AT_OR_ABOVE:
            return value >= threshold
        case Comparison.BELOW:
            return value < threshold
        case _:
            return value <= threshold


def cleared(rule: Rule, value: float | None) -> bool:
    """Whether a firing alert may resolve: the value is back past the threshold by the hysteresis."""
    if rule.comparison == Comparison.MISSING:
        return value is not None
    if value is None:
        return False
    match rule.comparison:
        case Comparison.ABOVE:
            return value <= rule.threshold - rule.hysteresis
        case Comparison.AT_OR_ABOVE:
            return value < rule.threshold - rule.hysteresis
        case Comparison.BELOW:
            return value >= rule.threshold + rule.hysteresis
        case _:
            return value > rule.threshold + rule.hysteresis


def step(rule: Rule, state: AlertState, t_ms: int, value: float | None) -> tuple[AlertState, str | None]:
    """The next state after observing value at t_ms, and 'firing' or 'resolved' when that is an event."""
    if state.state == "firing":
        return (OK, "resolved") if cleared(rule, value) else (state, None)
    if not holds(rule, value):
        return OK, None
    since = state.since_ms if state.state == "pending" else t_ms
    if t_ms - since >= rule.hold_s * 1000:
        return AlertState("firing", t_ms), "firing"
    return AlertState("pending", since), None


def evaluate(rule: Rule, site: str, subject: str, state: AlertState, t_ms: int,
             value: float | None) -> tuple[AlertState, AlertEvent | None]:
    """step(), with the event spelled out for storage and publication."""
    new, change = step(rule, state, t_ms, value)
    if change is None:
        return new, None
    since = new.since_ms if change == "firing" else state.since_ms
    return new, AlertEvent(rule, site, subject, change, t_ms, value, since)


def run_series(rule: Rule, series: list[tuple[int, float | None]], site: str = "site",
               subject: str = "") -> list[AlertEvent]:
    """Evaluate a whole series from the ok state; the events in order (for tests and replays)."""
    state, events = OK, []
    for t_ms, value in series:
        state, alert = evaluate(rule, site, subject, state, t_ms, value)
        if alert:
            events.append(alert)
    return events


def restore(state: str, since_ms: int | None) -> AlertState:
    """A saved state back (the collector keeps states across restarts so that nothing fires twice)."""
    if state not in ("ok", "pending", "firing"):
        raise ValueError(f"unknown alert state {state!r}")
    return AlertState(state, since_ms) if state != "ok" else OK
