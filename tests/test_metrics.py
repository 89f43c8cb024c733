"""Site metrics (collector/metrics.py) against hand-computed tables; the arithmetic is written out beside each.

Factors in the small tables are round numbers chosen for easy arithmetic (grid 0.5, residual 0.6, diesel
0.8 kgCO2/kWh); the month uses the East China 2023 grid factor 0.5500, the national 2023 residual 0.6096 and
the product's diesel default 0.762.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import NamedTuple

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from collector.factors import Factor
from collector.metrics import (
    BIN_MS,
    KWH_PER_GEC,
    MeterCoverage,
    PueCategory,
    SiteBin,
    SiteFactors,
    metrics_for_period,
    rollup,
    standard_periods,
)
from common.contract import EnergySource, MeterRole

FI, OG = MeterRole.FACILITY_INPUT, MeterRole.ONSITE_GENERATION
IT, PDU, UPS, COOL = MeterRole.IT_INPUT, MeterRole.PDU_OUTPUT, MeterRole.UPS_OUTPUT, MeterRole.COOLING
GRID, GREEN, PV, DIESEL = EnergySource.GRID, EnergySource.GREEN_TRADED, EnergySource.PV, EnergySource.DIESEL

T0 = 1_793_462_400_000  # 2026-10-31T16:00Z = 2026-11-01 00:00 in Asia/Shanghai

ROUND = SiteFactors(
    grid=Factor(0.5, "test", 2023, "location", "round test figure"),
    residual=Factor(0.6, "national", 2023, "residual", "round test figure"),
    diesel=Factor(0.8, "on-site", None, "assumption", "round test figure"),
    min_it_coverage=0.98,
)
EAST_2023 = SiteFactors(
    grid=Factor(0.5500, "east", 2023, "location", "MEE/NBS 2023 announcement"),
    residual=Factor(0.6096, "national", 2023, "residual", "MEE/NBS 2023 announcement"),
    diesel=Factor(0.762, "on-site", None, "assumption", "IPCC 2006 diesel 74.1 t/TJ at 35 %"),
    min_it_coverage=0.98,
)


class M(NamedTuple):
    """One expected meter in a test bin: kwh None means it reported nothing."""

    id: str
    role: MeterRole
    source: EnergySource | None
    kwh: float | None
    fraction: float = 1.0


def site_bin(start_ms: int = T0, meters: tuple[M, ...] = (), **hosts) -> SiteBin:
    energy: dict = {}
    for m in meters:
        if m.kwh is not None:
            energy[(m.role, m.source)] = energy.get((m.role, m.source), 0.0) + m.kwh
    coverage = {m.id: MeterCoverage(m.role, m.fraction) for m in meters}
    return SiteBin(start_ms=start_ms, energy_kwh=energy, meter_coverage=coverage, **hosts)


def one_bin(meters: tuple[M, ...], factors: SiteFactors = ROUND, gec: float = 0.0, traded: float = 0.0, **hosts):
    return metrics_for_period([site_bin(T0, meters, **hosts)], T0, T0 + BIN_MS, factors, gec, traded, "15m")


# (1) one bin, grid-only site, IT metered at the equipment input
def test_grid_only_site_pue3():
    m = one_bin((M("incomer", FI, GRID, 45.0), M("rack-pdus", IT, None, 36.0)))
    assert m.pue_category == PueCategory.PUE3
    assert m.pue_status == "ok"
    assert m.e_facility_kwh == pytest.approx(45.0)
    assert m.e_it_kwh == pytest.approx(36.0)
    assert m.pue == pytest.approx(1.25)  # 45 / 36
    assert m.carbon_location_kg == pytest.approx(22.5)  # 45 x 0.5
    assert m.carbon_market_kg == pytest.approx(27.0)  # 45 x 0.6: no green instrument
    assert m.cue_location == pytest.approx(0.625)  # 22.5 / 36
    assert m.cue_market == pytest.approx(0.75)  # 27 / 36
    assert (m.green_kwh, m.green_ratio, m.green_status) == (0.0, 0.0, "ok")
    assert (m.bins_total, m.bins_facility_complete, m.bins_complete, m.coverage) == (1, 1, 1, 1.0)
    assert m.ppue_cooling is None  # no cooling meter


# (2) PV behind the utility meter: it lowers the grid reading, not the facility energy
def test_pv_behind_the_meter_counts_in_facility_energy():
    m = one_bin((M("incomer", FI, GRID, 30.0), M("pv", OG, PV, 10.0), M("it", IT, None, 32.0)))
    assert m.e_facility_kwh == pytest.approx(40.0)  # 30 grid + 10 pv
    assert m.pue == pytest.approx(1.25)  # 40 / 32; the grid meter alone would give 30 / 32 = 0.9375
    assert m.green_kwh == pytest.approx(10.0)
    assert m.green_ratio == pytest.approx(0.25)  # 10 / 40
    assert m.green_ratio_metered == pytest.approx(0.25)
    assert m.green_ratio_onsite == pytest.approx(0.25)
    assert m.carbon_location_kg == pytest.approx(15.0)  # 30 x 0.5; pv 0
    assert m.cue_location == pytest.approx(0.46875)  # 15 / 32


# (3) a diesel test run: facility energy yes, green no, carbon at the diesel factor
def test_diesel_run_counts_in_facility_and_carbon_not_green():
    m = one_bin((M("incomer", FI, GRID, 20.0), M("genset", OG, DIESEL, 25.0), M("it", IT, None, 36.0)), gec=100.0)
    assert m.e_facility_kwh == pytest.approx(45.0)  # 20 grid + 25 diesel
    assert m.pue == pytest.approx(1.25)  # 45 / 36
    assert m.carbon_location_kg == pytest.approx(30.0)  # 20 x 0.5 + 25 x 0.8 = 10 + 20
    # certificates cover grid kWh only: 100 kWh of GEC against 20 grid kWh claims 20, 80 unclaimed
    assert m.green_kwh == pytest.approx(20.0)
    assert m.green_unclaimed_kwh == pytest.approx(80.0)
    assert m.green_ratio == pytest.approx(20.0 / 45.0)  # the diesel 25 kWh is never green
    assert m.green_ratio_metered == 0.0
    assert m.carbon_market_kg == pytest.approx(20.0)  # (20 - 20) x 0.6 + 25 x 0.8
    assert m.cue_location == pytest.approx(30.0 / 36.0)
    assert m.cue_market == pytest.approx(20.0 / 36.0)


# (4) certificates exceeding consumption: ratio exactly 1, the excess reported, not counted
@pytest.mark.parametrize(
    ("meters", "gec", "traded", "green", "unclaimed", "ratio", "metered"),
    [
        # grid 40 + pv 10 = 50; 100 kWh GEC can claim the 40 grid kWh: green 10 + 40 = 50, 60 unclaimed
        ((M("in", FI, GRID, 40.0), M("pv", OG, PV, 10.0)), 100.0, 0.0, 50.0, 60.0, 1.0, 0.2),
        # 2 certificates (2,000 kWh) + a 500 kWh contract against 40 grid kWh: 2,460 unclaimed
        ((M("in", FI, GRID, 40.0), M("pv", OG, PV, 10.0)), 2 * KWH_PER_GEC, 500.0, 50.0, 2460.0, 1.0, 0.2),
        # a green-traded feeder 20 + grid 20: contracts can claim only the 20 grid kWh, 10 of 30 unclaimed
        ((M("green", FI, GREEN, 20.0), M("in", FI, GRID, 20.0)), 0.0, 30.0, 40.0, 10.0, 1.0, 0.5),
    ],
)
def test_certificates_are_capped_and_the_excess_reported(meters, gec, traded, green, unclaimed, ratio, metered):
    m = one_bin(meters + (M("it", IT, None, 30.0),), gec=gec, traded=traded)
    assert m.green_kwh == pytest.approx(green)
    assert m.green_unclaimed_kwh == pytest.approx(unclaimed)
    assert m.green_ratio == ratio
    assert m.green_ratio_metered == pytest.approx(metered)
    assert m.carbon_market_kg == 0.0  # every grid kWh is covered


# (5) a facility meter missing in one bin: that bin is left out of every facility figure and of the PUE
def four_bins(missing_in: set[int]) -> list[SiteBin]:
    bins = []
    for i in range(4):
        b_meter = M("incomer-b", FI, GRID, 10.0, 0.5) if i in missing_in else M("incomer-b", FI, GRID, 20.0)
        bins.append(site_bin(T0 + i * BIN_MS, (M("incomer-a", FI, GRID, 20.0), b_meter, M("it", IT, None, 32.0))))
    return bins


def test_bin_with_a_missing_facility_meter_is_excluded():
    m = metrics_for_period(four_bins({2}), T0, T0 + 4 * BIN_MS, ROUND, gec_kwh=40.0, period_label="1h")
    assert (m.bins_total, m.bins_facility_complete, m.bins_complete) == (4, 3, 3)
    assert m.coverage == 0.75 and m.facility_coverage == 0.75
    assert m.e_facility_kwh == pytest.approx(120.0)  # 3 bins x (20 + 20)
    assert m.e_it_kwh == pytest.approx(96.0)  # 3 bins x 32
    assert m.pue == pytest.approx(1.25)  # 120 / 96; with the half-metered bin: 150 / 128 = 1.17, flattering
    assert m.facility.ledger_gec_kwh == pytest.approx(30.0)  # 40 kWh prorated to 3 of 4 bins
    assert m.green_ratio == pytest.approx(0.25)  # 30 / 120


def test_all_bins_missing_a_facility_meter_gives_no_pue():
    m = metrics_for_period(four_bins({0, 1, 2, 3}), T0, T0 + 4 * BIN_MS, ROUND, gec_kwh=40.0)
    assert (m.pue, m.pue_status, m.bins_complete, m.coverage) == (None, "no-facility-data", 0, 0.0)
    assert (m.e_facility_kwh, m.green_ratio, m.green_status) == (None, None, "no-facility-data")
    assert (m.cue_location, m.cue_market, m.carbon_location_kg, m.pue_category) == (None, None, None, None)


def test_absent_bins_count_as_incomplete():
    m = metrics_for_period(four_bins(set())[:3], T0, T0 + 4 * BIN_MS, ROUND)
    assert (m.bins_total, m.bins_complete, m.coverage) == (4, 3, 0.75)
    assert m.pue == pytest.approx(1.25)


@pytest.mark.parametrize(
    ("meters", "status"),
    [
        ((M("it", IT, None, 30.0),), "no-facility-data"),  # no facility meter expected at all
        ((M("pv", OG, PV, 40.0), M("it", IT, None, 30.0)), "no-facility-data"),  # generation without an incomer
        ((M("in", FI, GRID, 40.0), M("pv", OG, PV, None, 0.0), M("it", IT, None, 30.0)), "no-facility-data"),
        ((M("in", FI, GRID, 40.0, 0.998), M("it", IT, None, 30.0)), "no-facility-data"),  # below 99.9 %
        ((M("in", FI, GRID, 40.0),), "no-it-data"),
        ((M("in", FI, GRID, 40.0), M("it", IT, None, 30.0, 0.5)), "meter-coverage-low it-input"),
        ((M("in", FI, GRID, 40.0), M("it", IT, None, 0.0)), "no-it-energy"),
        ((M("in", FI, GRID, 40.0), M("it", IT, None, 50.0)), "pue-below-1 0.800"),  # 40 / 50: impossible
    ],
)
def test_reasons_for_no_pue(meters, status):
    m = one_bin(meters)
    assert (m.pue, m.pue_status, m.cue_location, m.cue_market) == (None, status, None, None)


def test_a_meter_at_99_9_percent_counts_as_complete():
    m = one_bin((M("in", FI, GRID, 45.0, 0.999), M("it", IT, None, 36.0, 0.999)))
    assert (m.pue_status, m.pue) == ("ok", pytest.approx(1.25))


# (6) estimated category: host coverage below the minimum gives no PUE, and says why
@pytest.mark.parametrize(
    ("covered", "status"),
    [(5.0, "it-coverage-low 0.50 < 0.98"), (9.79, "it-coverage-low 0.97 < 0.98"), (9.8, "ok")],
)
def test_estimated_category_needs_host_coverage(covered, status):
    m = one_bin((M("in", FI, GRID, 40.0),), hosts_expected=10, host_coverage_sum=covered, host_server_input_kwh=32.0)
    assert m.pue_category == PueCategory.ESTIMATED
    assert m.pue_status == status
    assert m.pue == (pytest.approx(1.25) if status == "ok" else None)  # 40 / 32
    assert m.green_status == "ok" and m.e_facility_kwh == pytest.approx(40.0)  # facility figures stand


# (7) category preference: PUE3 over PUE2 over PUE1 over estimated
ALL_IT = (M("it", IT, None, 30.0), M("pdu", PDU, None, 32.0), M("ups", UPS, None, 34.0))
HOSTS = {"hosts_expected": 4, "host_coverage_sum": 4.0, "host_server_input_kwh": 28.0}


@pytest.mark.parametrize(
    ("it_meters", "category", "e_it"),
    [(ALL_IT, "PUE3", 30.0), (ALL_IT[1:], "PUE2", 32.0), (ALL_IT[2:], "PUE1", 34.0), ((), "estimated", 28.0)],
)
def test_category_preference(it_meters, category, e_it):
    m = one_bin((M("in", FI, GRID, 42.0),) + it_meters, **HOSTS)
    assert (m.pue_category, m.e_it_kwh, m.pue) == (category, pytest.approx(e_it), pytest.approx(42.0 / e_it))


def test_silent_best_category_is_missing_data_not_a_silent_fallback():
    m = one_bin((M("in", FI, GRID, 42.0), M("it", IT, None, None, 0.0)) + ALL_IT[1:], **HOSTS)
    assert (m.pue_category, m.pue, m.pue_status) == ("PUE3", None, "meter-coverage-low it-input")


def test_one_category_per_period_the_best_configured_in_every_bin():
    first = site_bin(T0, (M("in", FI, GRID, 42.0),) + ALL_IT)
    second = site_bin(T0 + BIN_MS, (M("in", FI, GRID, 42.0),) + ALL_IT[1:])  # it-input meters not yet installed
    m = metrics_for_period([first, second], T0, T0 + 2 * BIN_MS, ROUND)
    assert (m.pue_category, m.bins_complete) == ("PUE2", 2)
    assert m.pue == pytest.approx(84.0 / 64.0)  # (42 + 42) / (32 + 32)


def test_ppue_of_cooling():
    m = one_bin((M("in", FI, GRID, 45.0), M("it", IT, None, 36.0), M("chiller", COOL, None, 6.0)))
    assert m.ppue_cooling == pytest.approx(42.0 / 36.0)  # (36 + 6) / 36
    assert m.ppue_bins == 1


# (8) a full month for a small site, checked against arithmetic done by hand
#
# November 2026 in Asia/Shanghai: 30 days x 96 bins = 2,880 bins from T0. Bin k of a day starts at k x 15 min
# local time. Per bin: IT 100 kW = 25 kWh (40 hosts, agents' estimates: category "estimated"); cooling 40 kW
# = 10 kWh by day (08:00-20:00, k 32..79) and 24 kW = 6 kWh by night; 10 kW = 2.5 kWh of unmetered losses.
# Facility energy per bin: 25 + 10 + 2.5 = 37.5 by day, 25 + 6 + 2.5 = 33.5 by night.
# PV behind the incomer: 2.5 kWh per bin 08:00-10:00 (k 32..39) and 14:00-16:00 (k 56..63), 5 kWh 10:00-14:00
# (k 40..55): 8 x 2.5 + 16 x 5 + 8 x 2.5 = 120 kWh a day. The incomer reads facility - pv - diesel.
# Diesel test run on 10 November 02:00-04:00 (k 8..15): 8 bins x 20 kWh = 160 kWh.
# One rack (4 of 40 hosts) silent on 15 November 20:00-23:00 (k 80..91): 12 night bins, host coverage 0.9,
# agents' sum 22.5 kWh. The incomer silent on 20 November 12:00-13:00 (k 48..51): 4 day bins.
# Ledger for the month: 50 GEC (50,000 kWh; 500 GEC would exceed the site's ~102 MWh and pin the ratio at 1,
# which test 4 covers) and 10,000 kWh of green-trading contracts.
# CPU utilisation 0.6 by day, 0.4 by night, weighted by covered host-seconds.
def month_bins() -> list[SiteBin]:
    bins = []
    for i in range(30 * 96):
        day, k = i // 96 + 1, i % 96
        daytime = 32 <= k < 80
        cooling = 10.0 if daytime else 6.0
        pv = 5.0 if 40 <= k < 56 else 2.5 if 32 <= k < 64 else 0.0
        diesel = 20.0 if day == 10 and 8 <= k < 16 else 0.0
        grid = 25.0 + cooling + 2.5 - pv - diesel
        hosts_up = 36 if day == 15 and 80 <= k < 92 else 40
        incomer = M("incomer", FI, GRID, None, 0.0) if day == 20 and 48 <= k < 52 else M("incomer", FI, GRID, grid)
        meters = (incomer, M("pv", OG, PV, pv), M("genset", OG, DIESEL, diesel), M("chiller", COOL, None, cooling))
        bins.append(
            site_bin(
                T0 + i * BIN_MS,
                meters,
                hosts_expected=40,
                host_coverage_sum=float(hosts_up),
                host_server_input_kwh=25.0 * hosts_up / 40,
                cpu_util_weighted_sum=(0.6 if daytime else 0.4) * hosts_up * 900,
                cpu_util_weight=hosts_up * 900.0,
            )
        )
    return bins


def test_full_month_small_site():
    gec_kwh, traded_kwh = 50 * KWH_PER_GEC, 10_000.0
    m = metrics_for_period(month_bins(), T0, T0 + 2880 * BIN_MS, EAST_2023, gec_kwh, traded_kwh, "mtd")

    # facility-complete bins: all but the 4 with the incomer silent
    assert (m.bins_total, m.bins_facility_complete) == (2880, 2876)
    facility_all = 30 * (48 * 37.5 + 48 * 33.5)  # 30 x (1,800 + 1,608) = 102,240
    e_facility = facility_all - 4 * 37.5  # 102,090
    pv = 30 * 120 - 4 * 5.0  # 3,600 - 20 = 3,580
    diesel = 8 * 20.0  # 160
    grid = e_facility - pv - diesel  # 98,350
    assert m.e_facility_kwh == pytest.approx(e_facility)
    assert (m.facility.e_pv_kwh, m.facility.e_diesel_kwh) == (pytest.approx(pv), pytest.approx(diesel))
    assert m.facility.e_grid_delivered_kwh == pytest.approx(grid)

    # ledger prorated to 2,876 of 2,880 bins: 60,000 x 2,876 / 2,880 = 59,916.67, all claimable against grid
    instruments = (gec_kwh + traded_kwh) * 2876 / 2880
    green = pv + instruments  # 63,496.67
    assert m.green_kwh == pytest.approx(green)
    assert m.green_unclaimed_kwh == pytest.approx(0.0)
    assert m.green_ratio == pytest.approx(green / e_facility)  # 0.6220
    assert m.green_ratio_metered == pytest.approx(pv / e_facility)  # 0.0351
    assert m.carbon_location_kg == pytest.approx(grid * 0.55 + diesel * 0.762)  # 54,092.5 + 121.92 = 54,214.42
    assert m.carbon_market_kg == pytest.approx((grid - instruments) * 0.6096 + diesel * 0.762)  # 23,550.88

    # complete bins: also leave out the 12 night bins with the rack silent (host coverage 0.9 < 0.98)
    assert (m.pue_category, m.pue_status, m.bins_complete) == ("estimated", "ok", 2864)
    assert m.coverage == pytest.approx(2864 / 2880)
    e_facility_pue = e_facility - 12 * 33.5  # 102,090 - 402 = 101,688
    e_it = 2864 * 25.0  # 71,600
    grid_pue = grid - 12 * 33.5  # 97,948 (no pv, no diesel in those night bins)
    instruments_pue = (gec_kwh + traded_kwh) * 2864 / 2880  # 59,666.67
    assert m.e_it_kwh == pytest.approx(e_it)
    assert m.pue == pytest.approx(e_facility_pue / e_it)  # 1.4202
    assert m.cue_location == pytest.approx((grid_pue * 0.55 + diesel * 0.762) / e_it)  # 53,993.32 / 71,600
    assert m.cue_market == pytest.approx(((grid_pue - instruments_pue) * 0.6096 + diesel * 0.762) / e_it)

    cooling = 30 * (48 * 10.0 + 48 * 6.0) - 4 * 10.0 - 12 * 6.0  # 23,040 - 40 - 72 = 22,928
    assert (m.ppue_cooling, m.ppue_bins) == (pytest.approx((e_it + cooling) / e_it), 2864)  # 1.3202

    # utilisation and host coverage over every bin received
    cpu_sum = 1440 * 40 * 900 * 0.6 + 1440 * 40 * 900 * 0.4 - 12 * 4 * 900 * 0.4  # 51,822,720
    cpu_weight = 2880 * 40 * 900 - 12 * 4 * 900  # 103,636,800
    assert m.cpu_util == pytest.approx(cpu_sum / cpu_weight)  # 0.50004
    assert m.gpu_util is None
    assert m.host_coverage == pytest.approx((2880 * 40 - 12 * 4) / (2880 * 40))


def test_rollup_picks_each_periods_bins():
    bins = month_bins()
    now = T0 + 2880 * BIN_MS  # 2026-12-01 00:00 local: the last bin is 30 November 23:45
    results = {m.period: m for m in rollup(bins, standard_periods(now), EAST_2023, {"mtd": (50_000.0, 10_000.0)})}
    assert results["mtd"].bins_total == 2880 and results["mtd"].bins_complete == 2864
    assert results["mtd"].green_kwh == pytest.approx(3580 + 60_000 * 2876 / 2880)
    assert results["1d"].bins_complete == 96 and results["1d"].green_ratio == pytest.approx(120 / 3408)
    assert results["1h"].pue == pytest.approx(33.5 / 25.0)  # 23:00-24:00 local, night
    assert results["12m"].bins_total == 365 * 96 and results["12m"].bins_complete == 2864  # no older data


# (9) standard periods
def utc_ms(text: str) -> int:
    return int(dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC).timestamp() * 1000)


@pytest.mark.parametrize(
    ("now", "tz", "expected"),
    [
        (  # 2026-11-01 00:00 local: October just ended
            "2026-10-31T16:00",
            "Asia/Shanghai",
            {
                "15m": ("2026-10-31T15:45", "2026-10-31T16:00"),
                "1h": ("2026-10-31T15:00", "2026-10-31T16:00"),
                "1d": ("2026-10-30T16:00", "2026-10-31T16:00"),  # 31 October local
                "mtd": ("2026-09-30T16:00", "2026-10-31T16:00"),  # the whole of October local
                "12m": ("2025-10-31T16:00", "2026-10-31T16:00"),  # from 2025-11-01 00:00 local
            },
        ),
        (  # halfway through the first bin of November: nothing new has ended
            "2026-10-31T16:07:30",
            "Asia/Shanghai",
            {
                "15m": ("2026-10-31T15:45", "2026-10-31T16:00"),
                "1h": ("2026-10-31T15:00", "2026-10-31T16:00"),
                "1d": ("2026-10-30T16:00", "2026-10-31T16:00"),
                "mtd": ("2026-09-30T16:00", "2026-10-31T16:00"),
                "12m": ("2025-10-31T16:00", "2026-10-31T16:00"),
            },
        ),
        (  # 2026-11-01 00:15 local: the first bin of November has ended
            "2026-10-31T16:15",
            "Asia/Shanghai",
            {
                "15m": ("2026-10-31T16:00", "2026-10-31T16:15"),
                "1h": ("2026-10-31T15:00", "2026-10-31T16:00"),
                "1d": ("2026-10-30T16:00", "2026-10-31T16:00"),
                "mtd": ("2026-10-31T16:00", "2026-10-31T16:15"),
                "12m": ("2025-10-31T16:15", "2026-10-31T16:15"),
            },
        ),
        (  # 2028-03-01 00:00 local after a leap day
            "2028-02-29T16:00",
            "Asia/Shanghai",
            {
                "15m": ("2028-02-29T15:45", "2028-02-29T16:00"),
                "1h": ("2028-02-29T15:00", "2028-02-29T16:00"),
                "1d": ("2028-02-28T16:00", "2028-02-29T16:00"),
                "mtd": ("2028-01-31T16:00", "2028-02-29T16:00"),
                "12m": ("2027-02-28T16:00", "2028-02-29T16:00"),  # from 2027-03-01 00:00 local
            },
        ),
        (  # Kathmandu, UTC+05:45: 2026-07-01 00:00 local; days on 15-minute bins, hours on UTC hours
            "2026-06-30T18:15",
            "Asia/Kathmandu",
            {
                "15m": ("2026-06-30T18:00", "2026-06-30T18:15"),
                "1h": ("2026-06-30T17:00", "2026-06-30T18:00"),
                "1d": ("2026-06-29T18:15", "2026-06-30T18:15"),
                "mtd": ("2026-05-31T18:15", "2026-06-30T18:15"),
                "12m": ("2025-06-30T18:15", "2026-06-30T18:15"),
            },
        ),
        (  # Berlin, 2026-03-30 00:00 CEST: 29 March had 23 hours (DST began at 02:00)
            "2026-03-29T22:00",
            "Europe/Berlin",
            {
                "15m": ("2026-03-29T21:45", "2026-03-29T22:00"),
                "1h": ("2026-03-29T21:00", "2026-03-29T22:00"),
                "1d": ("2026-03-28T23:00", "2026-03-29T22:00"),
                "mtd": ("2026-02-28T23:00", "2026-03-29T22:00"),
                "12m": ("2025-03-29T23:00", "2026-03-29T22:00"),  # 2025-03-30 00:00 CET
            },
        ),
    ],
)
def test_standard_periods(now, tz, expected):
    periods = standard_periods(utc_ms(now), tz)
    assert [label for label, _, _ in periods] == ["15m", "1h", "1d", "mtd", "12m"]
    assert {label: (start, end) for label, start, end in periods} == {
        label: (utc_ms(start), utc_ms(end)) for label, (start, end) in expected.items()
    }


def test_standard_periods_default_to_shanghai():
    assert standard_periods(T0) == standard_periods(T0, "Asia/Shanghai")


# input checks: a wrong figure is worse than an error
@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: site_bin(T0, (M("in", FI, PV, 1.0),)), "facility-input meter must have source"),
        (lambda: site_bin(T0, (M("gen", OG, GRID, 1.0),)), "onsite-generation meter must have source"),
        (lambda: SiteBin(T0, {(FI, GRID): 1.0}, {}), "no meter of that role is expected"),
        (lambda: site_bin(T0, (M("in", FI, GRID, -1.0),)), "finite number >= 0"),
        (lambda: site_bin(T0, (M("in", FI, GRID, math.nan),)), "finite number >= 0"),
        (lambda: site_bin(T0 + 1, ()), "not a multiple"),
        (lambda: MeterCoverage(FI, 1.5), "not within 0..1"),
        (lambda: site_bin(T0, (), hosts_expected=2, host_coverage_sum=3.0), "host coverage sum"),
        (lambda: site_bin(T0, (), cpu_util_weighted_sum=2.0, cpu_util_weight=1.0), "above 1"),
        (lambda: SiteFactors(ROUND.residual, ROUND.residual, ROUND.diesel), "location-based"),
        (lambda: metrics_for_period([site_bin(T0 + BIN_MS)], T0, T0 + BIN_MS, ROUND), "bins outside"),
        (lambda: metrics_for_period([site_bin(T0)] * 2, T0, T0 + 2 * BIN_MS, ROUND), "counted twice"),
        (lambda: metrics_for_period([], T0, T0, ROUND), "empty or not aligned"),
        (lambda: metrics_for_period([], T0, T0 + BIN_MS, ROUND, gec_kwh=-1.0), "gec_kwh"),
    ],
)
def test_bad_input_is_refused(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_string_roles_and_sources_are_taken_as_the_enums():
    energy = {("facility-input", "grid"): 45.0, ("it-input", None): 36.0}
    coverage = {"in": MeterCoverage("facility-input", 1.0), "it": MeterCoverage("it-input", 1.0)}
    b = SiteBin(T0, energy, coverage)
    assert metrics_for_period([b], T0, T0 + BIN_MS, ROUND).pue == pytest.approx(1.25)


# (10) properties
FRACTIONS = st.sampled_from([1.0, 1.0, 1.0, 0.9995, 0.5, 0.0])
KWH = st.floats(0.0, 1000.0, allow_nan=False)


@st.composite
def site_periods(draw):
    """A site with a fixed set of meters, and 1 to 12 consecutive bins of random energy and coverage."""
    optional = [
        M("green", FI, GREEN, 0.0),
        M("pv", OG, PV, 0.0),
        M("genset", OG, DIESEL, 0.0),
        M("it", IT, None, 0.0),
        M("pdu", PDU, None, 0.0),
        M("chiller", COOL, None, 0.0),
    ]
    layout = [M("in", FI, GRID, 0.0)] + [m for m in optional if draw(st.booleans())]
    hosts = draw(st.integers(0, 4))
    bins = []
    for i in range(draw(st.integers(1, 12))):
        meters = tuple(m._replace(kwh=draw(KWH), fraction=draw(FRACTIONS)) for m in layout)
        host_fields = {
            "hosts_expected": hosts,
            "host_coverage_sum": hosts * draw(FRACTIONS),
            "host_server_input_kwh": draw(KWH) if hosts else 0.0,
        }
        bins.append(site_bin(T0 + i * BIN_MS, meters, **host_fields))
    return bins, draw(KWH) * 10, draw(KWH) * 10


@settings(max_examples=300, deadline=None)
@given(site_periods())
def test_ratios_stay_in_range(case):
    bins, gec, traded = case
    m = metrics_for_period(bins, T0, T0 + len(bins) * BIN_MS, ROUND, gec, traded)
    for ratio in (m.green_ratio, m.green_ratio_metered, m.green_ratio_onsite):
        assert ratio is None or 0.0 <= ratio <= 1.0
    assert (m.green_ratio is None) == (m.green_status != "ok")
    assert (m.pue is None) == (m.pue_status != "ok")
    assert m.pue is None or m.pue >= 1.0
    assert (m.cue_location is None) == (m.pue is None) == (m.cue_market is None)
    if m.facility is not None:
        assert m.green_kwh <= m.e_facility_kwh * (1 + 1e-12)
        assert m.green_unclaimed_kwh >= 0.0
    assert 0 <= m.bins_complete <= m.bins_facility_complete <= m.bins_total


def _total(metrics, name: str) -> float:
    """A facility total, 0 for a period without a facility-complete bin."""
    return getattr(metrics.facility, name) if metrics.facility else 0.0


@settings(max_examples=300, deadline=None)
@given(site_periods(), st.data())
def test_period_is_the_sum_of_its_sub_periods(case, data):
    """Split a period in two (each with its share of the ledger): the whole adds up from the parts' bins."""
    bins, gec, traded = case
    n = len(bins)
    assume(n >= 2)
    split = data.draw(st.integers(1, n - 1))
    middle = T0 + split * BIN_MS

    def run(part, start, end, share):
        return metrics_for_period(part, start, end, ROUND, gec * share, traded * share)

    whole = run(list(reversed(bins)), T0, T0 + n * BIN_MS, 1.0)
    parts = [run(bins[:split], T0, middle, split / n), run(bins[split:], middle, T0 + n * BIN_MS, (n - split) / n)]

    assert whole.bins_facility_complete == sum(p.bins_facility_complete for p in parts)
    assert whole.bins_complete == sum(p.bins_complete for p in parts)
    additive = ("e_facility_kwh", "e_grid_delivered_kwh", "green_metered_kwh", "ledger_gec_kwh", "carbon_location_kg")
    for name in additive:
        assert _total(whole, name) == pytest.approx(sum(_total(p, name) for p in parts), rel=1e-9, abs=1e-9)
    # the cap moves instruments between green and unclaimed, never creates or loses any
    claimed_or_not = [(_total(x, "green_kwh") + _total(x, "green_unclaimed_kwh")) for x in parts]
    assert _total(whole, "green_kwh") + _total(whole, "green_unclaimed_kwh") == pytest.approx(sum(claimed_or_not))
    if whole.pue_basis is not None:  # PUE of the whole = sum of the parts' PUE numerators / sum of their E_IT
        used = [p for p in parts if p.pue_basis is not None]
        assert {p.pue_category for p in used} == {whole.pue_category}
        e_facility = sum(p.pue_basis.e_facility_kwh for p in used)
        e_it = sum(p.e_it_kwh for p in used)
        assert whole.pue_basis.e_facility_kwh == pytest.approx(e_facility, rel=1e-9, abs=1e-9)
        assert whole.e_it_kwh == pytest.approx(e_it, rel=1e-9, abs=1e-9)
        if whole.pue is not None:
            assert whole.pue == pytest.approx(e_facility / e_it)


def test_worked_example_of_docs_metrics_md():
    # docs/metrics.md, "Worked example": one hour, PDU-B silent for most of the third bin, 20 kWh of GEC
    bins = [
        site_bin(
            T0 + i * BIN_MS,
            (
                M("incomer", FI, GRID, 30.0),
                M("pv", OG, PV, 10.0),
                M("pdu-a", PDU, None, 16.0),
                M("pdu-b", PDU, None, 6.4, 0.4) if i == 2 else M("pdu-b", PDU, None, 16.0),
                M("chiller", COOL, None, 6.0),
            ),
        )
        for i in range(4)
    ]
    m = metrics_for_period(bins, T0, T0 + 4 * BIN_MS, EAST_2023, gec_kwh=20.0, period_label="1h")
    assert (m.bins_facility_complete, m.bins_complete, m.coverage, m.pue_category) == (4, 3, 0.75, "PUE2")
    assert (m.e_facility_kwh, m.green_kwh, m.green_ratio) == (160.0, 60.0, 0.375)
    assert m.green_ratio_metered == 0.25
    assert (m.carbon_location_kg, m.carbon_market_kg) == (pytest.approx(66.0), pytest.approx(60.96))
    assert (m.pue_basis.e_facility_kwh, m.e_it_kwh, m.pue) == (120.0, 96.0, 1.25)
    assert (m.cue_location, m.cue_market) == (pytest.approx(0.515625), pytest.approx(0.47625))
    assert m.ppue_cooling == pytest.approx(1.1875)
