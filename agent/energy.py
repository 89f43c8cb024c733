"""Pure energy arithmetic for the agent's readers: counter deltas and power integration.

No files, clocks or sockets here: callers pass the values in, tests feed tables.
"""

from __future__ import annotations


class AmbiguousInterval(ValueError):
    """The counter may have wrapped more than once since the last read, so its delta is unknown."""


def wrap_safe_delta(previous: int, current: int, max_range: int) -> int:
    """Increase of a counter that wraps to 0 after reaching max_range (RAPL energy_uj, meter registers).

    A counter that reads lower than before has wrapped exactly once; the caller makes sure that at most
    one wrap can have happened (see safe_interval_s).
    """
    if max_range <= 0:
        raise ValueError(f"max_range must be positive, got {max_range}")
    if not (0 <= previous <= max_range and 0 <= current <= max_range):
        raise ValueError(f"counter values {previous}, {current} outside 0..{max_range}")
    if current >= previous:
        return current - previous
    return max_range - previous + current + 1


def safe_interval_s(max_range_uj: int, max_power_w: float) -> float:
    """Longest time between two reads in which the counter cannot wrap more than once.

    At max_power_w the counter covers its whole range in max_range_uj / (max_power_w * 1e6) seconds;
    any read interval shorter than that sees at most one wrap, so wrap_safe_delta is exact.
    """
    if max_power_w <= 0:
        raise ValueError(f"max_power_w must be positive, got {max_power_w}")
    return max_range_uj / (max_power_w * 1e6)


def checked_delta_uj(previous: int, current: int, max_range_uj: int, elapsed_s: float, max_power_w: float) -> int:
    """wrap_safe_delta, refusing an interval too long for the counter to be unambiguous."""
    limit = safe_interval_s(max_range_uj, max_power_w)
    if elapsed_s >= limit:
        raise AmbiguousInterval(
            f"{elapsed_s:.1f} s since the last read exceeds the {limit:.1f} s in which the counter "
            f"(range {max_range_uj} uJ) can wrap at most once at {max_power_w:.0f} W"
        )
    return wrap_safe_delta(previous, current, max_range_uj)


def integrate_power_j(power_w: float, elapsed_s: float) -> float:
    """Energy of a mean power held over an interval (rectangle rule: the reading is the interval's mean)."""
    if elapsed_s < 0:
        raise ValueError(f"elapsed_s must not be negative, got {elapsed_s}")
    return power_w * elapsed_s
