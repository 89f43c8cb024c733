"""The pure parts of the poller: lifetime-register accounting (advance, noise, rollover, reset) and backoff."""

from __future__ import annotations

import pytest

from agent.gateway.poller import Backoff, CounterEvent, EnergyCounter, is_rollover, new_session_id
from agent.gateway.registers import RegisterSpec

KWH = 3_600_000.0
UINT32 = RegisterSpec(address=0, data_type="uint32", scale=0.01)  # 0.01 kWh per unit
FLOAT32 = RegisterSpec(address=0, data_type="float32", scale=1.0)  # kWh
INT32 = RegisterSpec(address=0, data_type="int32", scale=0.01)
TOP = 2**32 - 1


def run(counter: EnergyCounter, readings: list) -> list[tuple[CounterEvent, float]]:
    return [(step.event, step.energy_j) for step in map(counter.update, readings)]


@pytest.mark.parametrize("register, readings, expected", [
    (UINT32, [100, 100, 250], [("first", 0), ("advance", 0), ("advance", 1.5 * KWH)]),
    (UINT32, [100, 99, 150], [("first", 0), ("hold", 0), ("advance", 0.5 * KWH)]),  # 0.01 kWh drop is noise
    (UINT32, [TOP - 5, 4], [("first", 0), ("rollover", 0.10 * KWH)]),  # 5 units to the top, 1 to 0, 4 more
    (UINT32, [TOP - 5, TOP, 0, 10], [("first", 0), ("advance", 0.05 * KWH), ("rollover", 0.06 * KWH),
                                     ("advance", 0.16 * KWH)]),
    (UINT32, [5_000_000, 3], [("first", 0), ("reset", 0)]),  # a drop from mid-range: replaced
    (UINT32, [TOP - 5, TOP // 2], [("first", 0), ("reset", 0)]),  # from the top, but not to near 0
    (FLOAT32, [1000.0, 1000.5, 2.0, 3.0], [("first", 0), ("advance", 0.5 * KWH), ("reset", 0),
                                          ("advance", 1.0 * KWH)]),
    (FLOAT32, [1000.0, 999.995, 1001.0], [("first", 0), ("hold", 0), ("advance", 1.0 * KWH)]),
    (INT32, [2**31 - 2, 1], [("first", 0), ("reset", 0)]),  # signed registers never roll over
])
def test_counter_table(register, readings, expected):
    steps = run(EnergyCounter(register, tolerance_kwh=0.01), readings)
    assert [event for event, _ in steps] == [CounterEvent(event) for event, _ in expected]
    assert [energy for _, energy in steps] == pytest.approx([energy for _, energy in expected])


def test_ratio_scales_energy():
    counter = EnergyCounter(UINT32, ratio=80.0)  # PT 1 x CT 400/5
    counter.update(0)
    assert counter.update(100).energy_j == pytest.approx(80 * KWH)


def test_energy_after_a_reset_counts_from_the_new_reference():
    counter = EnergyCounter(UINT32)
    run(counter, [9_000_000, 9_000_100, 20])
    assert counter.update(120).energy_j == pytest.approx(1.0 * KWH)


@pytest.mark.parametrize("previous, current, expected", [
    (TOP, 0, True), (int(TOP * 0.95), int(TOP * 0.05), True), (int(TOP * 0.85), 0, False),
    (TOP, int(TOP * 0.2), False), (10, 20, False),
])
def test_rollover_needs_top_before_and_bottom_after(previous, current, expected):
    assert is_rollover(previous, current, UINT32) is expected
    assert is_rollover(float(previous), float(current), FLOAT32) is False


def test_backoff_doubles_from_one_second_to_sixty():
    backoff = Backoff()
    delays = [backoff.failed(now_s=0.0) for _ in range(9)]
    assert delays == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    assert backoff.stale


def test_backoff_due_and_reset():
    backoff = Backoff()
    assert backoff.due(0.0)
    backoff.failed(now_s=10.0)
    backoff.failed(now_s=11.0)
    assert not backoff.due(12.9) and backoff.due(13.0)
    backoff.succeeded()
    assert backoff.due(0.0) and not backoff.stale
    assert backoff.failed(now_s=20.0) == 1


@pytest.mark.parametrize("meter_id", ["utility-1", "ups.out.2", "a" * 64])
def test_session_ids_fit_the_contract(meter_id):
    first, second = new_session_id(meter_id), new_session_id(meter_id)
    assert first != second
    assert 8 <= len(first) <= 64 and all(c.isalnum() or c in "_-" for c in first)
