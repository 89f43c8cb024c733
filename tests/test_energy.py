"""Table and property tests of the pure energy arithmetic in agent/energy.py."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.energy import AmbiguousInterval, checked_delta_uj, integrate_power_j, safe_interval_s, wrap_safe_delta

INTEL_RANGE_UJ = 262_143_328_850
ZEN_RANGE_UJ = 65_532_610_987

max_ranges = st.integers(min_value=1, max_value=2**64)
powers_w = st.floats(min_value=0.001, max_value=1e5, allow_nan=False, allow_infinity=False)


@pytest.mark.parametrize(
    ("previous", "current", "max_range", "expected"),
    [
        (123_456_789, 123_456_789, INTEL_RANGE_UJ, 0),
        (123_456_789, 223_456_789, INTEL_RANGE_UJ, 100_000_000),
        (0, INTEL_RANGE_UJ, INTEL_RANGE_UJ, INTEL_RANGE_UJ),
        (INTEL_RANGE_UJ, 0, INTEL_RANGE_UJ, 1),
        (INTEL_RANGE_UJ - 328_850, 1_000_000, INTEL_RANGE_UJ, 328_850 + 1 + 1_000_000),
        (ZEN_RANGE_UJ - 5, 4, ZEN_RANGE_UJ, 10),
        (1, 0, 1, 1),
    ],
)
def test_wrap_safe_delta(previous: int, current: int, max_range: int, expected: int) -> None:
    assert wrap_safe_delta(previous, current, max_range) == expected


@pytest.mark.parametrize(
    ("previous", "current", "max_range"),
    [
        (0, 0, 0),
        (0, 0, -1),
        (-1, 0, 100),
        (0, -1, 100),
        (101, 0, 100),
        (0, 101, 100),
    ],
)
def test_wrap_safe_delta_rejects_values_outside_the_range(previous: int, current: int, max_range: int) -> None:
    with pytest.raises(ValueError):
        wrap_safe_delta(previous, current, max_range)


@given(data=st.data(), max_range=max_ranges)
def test_sum_of_deltas_over_wrapping_counter_is_the_true_increase(data: st.DataObject, max_range: int) -> None:
    # The counter takes the values 0..max_range and wraps to 0 after max_range, so it counts modulo
    # max_range + 1; any step up to max_range wraps at most once and must be recovered exactly.
    start = data.draw(st.integers(min_value=0, max_value=max_range), label="start")
    steps = data.draw(st.lists(st.integers(min_value=0, max_value=max_range), max_size=50), label="steps")
    values = [start]
    for step in steps:
        values.append((values[-1] + step) % (max_range + 1))
    deltas = [wrap_safe_delta(previous, current, max_range) for previous, current in zip(values, values[1:])]
    assert deltas == steps
    assert sum(deltas) == sum(steps)


@pytest.mark.parametrize(
    ("max_range_uj", "max_power_w", "expected_s"),
    [
        (INTEL_RANGE_UJ, 150.0, 1747.6221923),
        (INTEL_RANGE_UJ, 1000.0, 262.14332885),
        (ZEN_RANGE_UJ, 500.0, 131.065221974),
        (1_000_000, 1.0, 1.0),
    ],
)
def test_safe_interval_s(max_range_uj: int, max_power_w: float, expected_s: float) -> None:
    assert safe_interval_s(max_range_uj, max_power_w) == pytest.approx(expected_s)


@pytest.mark.parametrize("max_power_w", [0.0, -1.0])
def test_safe_interval_s_rejects_non_positive_power(max_power_w: float) -> None:
    with pytest.raises(ValueError, match="max_power_w"):
        safe_interval_s(INTEL_RANGE_UJ, max_power_w)


@given(max_range_uj=max_ranges, max_power_w=powers_w)
def test_counter_at_max_power_covers_its_range_in_the_safe_interval(max_range_uj: int, max_power_w: float) -> None:
    interval_s = safe_interval_s(max_range_uj, max_power_w)
    assert interval_s > 0
    assert max_power_w * 1e6 * interval_s == pytest.approx(max_range_uj)


@given(max_range_uj=max_ranges, lower_w=powers_w, higher_w=powers_w)
def test_more_power_means_a_shorter_safe_interval(max_range_uj: int, lower_w: float, higher_w: float) -> None:
    lower_w, higher_w = sorted((lower_w, higher_w))
    assert safe_interval_s(max_range_uj, higher_w) <= safe_interval_s(max_range_uj, lower_w)


@pytest.mark.parametrize(
    ("previous", "current", "elapsed_s", "expected"),
    [
        (123_456_789, 1_623_456_789, 10.0, 1_500_000_000),
        (INTEL_RANGE_UJ - 328_850, 1_000_000, 2.0, 1_328_851),
        (0, 0, 1747.6, 0),
    ],
)
def test_checked_delta_uj_within_the_safe_interval(
    previous: int, current: int, elapsed_s: float, expected: int
) -> None:
    assert checked_delta_uj(previous, current, INTEL_RANGE_UJ, elapsed_s, 150.0) == expected


@pytest.mark.parametrize("elapsed_s", [safe_interval_s(INTEL_RANGE_UJ, 150.0), 1748.0, 86_400.0])
def test_checked_delta_uj_refuses_an_ambiguous_interval(elapsed_s: float) -> None:
    with pytest.raises(AmbiguousInterval, match="wrap at most once"):
        checked_delta_uj(123_456_789, 123_456_790, INTEL_RANGE_UJ, elapsed_s, 150.0)


def test_ambiguous_interval_is_a_value_error() -> None:
    assert issubclass(AmbiguousInterval, ValueError)


@given(data=st.data(), max_range_uj=max_ranges, max_power_w=powers_w)
def test_checked_delta_uj_is_wrap_safe_delta_or_refuses(
    data: st.DataObject, max_range_uj: int, max_power_w: float
) -> None:
    previous = data.draw(st.integers(min_value=0, max_value=max_range_uj), label="previous")
    current = data.draw(st.integers(min_value=0, max_value=max_range_uj), label="current")
    elapsed_s = data.draw(st.floats(min_value=0, max_value=1e9, allow_nan=False), label="elapsed_s")
    if elapsed_s < safe_interval_s(max_range_uj, max_power_w):
        assert checked_delta_uj(previous, current, max_range_uj, elapsed_s, max_power_w) == wrap_safe_delta(
            previous, current, max_range_uj
        )
    else:
        with pytest.raises(AmbiguousInterval):
            checked_delta_uj(previous, current, max_range_uj, elapsed_s, max_power_w)


@pytest.mark.parametrize(
    ("power_w", "elapsed_s", "expected_j"),
    [(150.0, 10.0, 1500.0), (0.0, 10.0, 0.0), (150.0, 0.0, 0.0), (2.5, 0.5, 1.25)],
)
def test_integrate_power_j(power_w: float, elapsed_s: float, expected_j: float) -> None:
    assert integrate_power_j(power_w, elapsed_s) == pytest.approx(expected_j)


def test_integrate_power_j_rejects_negative_elapsed() -> None:
    with pytest.raises(ValueError, match="elapsed_s"):
        integrate_power_j(150.0, -1.0)
