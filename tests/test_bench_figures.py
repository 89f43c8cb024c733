"""The throughput benchmark's figures (bench/collector_throughput.py), against hand-computed series."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import collector_throughput as ct  # noqa: E402


def test_behind_schedule_is_the_age_of_the_newest_message_handled():
    # 10 messages/s from t=100: message n (1-based) is scheduled at 100 + (n - 1) / 10
    series = [(100.5, 6), (101.0, 8), (102.0, 11), (103.0, 30)]
    # at 100.5 message 6 (scheduled 100.5) is in: 0 s; at 101.0 message 8 (100.7): 0.3 s;
    # at 102.0 message 11 (101.0): 1.0 s; at 103.0 message 30 (102.9): 0.1 s
    assert ct.behind_schedule_max(series, 100.0, 10.0, 100) == pytest.approx(1.0)


def test_behind_schedule_leaves_out_the_start_and_the_end():
    # nothing counted yet (the consumer starting) and everything counted (after the last publish) say nothing
    series = [(150.0, 0), (101.0, 11), (400.0, 100)]
    assert ct.behind_schedule_max(series, 100.0, 10.0, 100) == 0.0


def test_ahead_of_schedule_counts_as_zero():
    assert ct.behind_schedule_max([(100.0, 50)], 100.0, 10.0, 100) == 0.0


def test_busy_rate_leaves_out_warm_up_and_tail():
    series = [(0.0, 0), (1.0, 10), (2.0, 110), (3.0, 210), (4.0, 300)]
    rate, start, end = ct.busy_rate(series, start=1.0, total=300)
    assert (rate, start, end) == (100.0, 1.0, 3.0)


def test_percentile_interpolates():
    assert ct.percentile([4.0, 1.0, 3.0, 2.0], 0.5) == 2.5
    assert ct.percentile([1.0, 2.0, 3.0, 4.0, 5.0], 0.99) == pytest.approx(4.96)
