"""Turning the book into InfluxDB lines (collector/report.py): the periods a bin belongs to, the site_metrics line,
the factors a site selects, and the rack and meter energy lines, against hand-computed figures.

Times are written as UTC wall clock ("2026-10-31T15:45"); Asia/Shanghai is UTC+8 all year, Asia/Kolkata UTC+5:30,
Europe/Berlin UTC+1 in winter and UTC+2 in summer (2026: summer time from 03-29 to 10-25).
"""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
import yaml

from collector.accounting import BIN_MS, Point
from collector.book import EnergyBook, Utilisation
from collector.factors import Factor, FactorTable, GridRegion
from collector.metrics import metrics_for_period, standard_periods
from collector.report import Reporter, metrics_line, periods_of_bin, site_factors
from collector.site import Site, SiteConfig, SiteIndex
from tests.lineparse import parse
from tests.site_stream import SITE_YAML

MIN = 60_000
HOUR = 60 * MIN


def utc(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp() * 1000)


T = utc("2026-03-02T00:00")  # 08:00 in Shanghai
CONFIG = SiteConfig.model_validate(yaml.safe_load(SITE_YAML))
INDEX = SiteIndex(CONFIG)
DC1 = CONFIG.sites[0]
H01 = INDEX.host("dc1", "hall-a", "r01", "h01")
H02 = INDEX.host("dc1", "hall-a", "r01", "h02")
UTILITY = INDEX.meter("dc1", "facility", "main", "utility-1")
PV = INDEX.meter("dc1", "facility", "main", "pv-1")


def full_bin_book(start: int = T) -> EnergyBook:
    """The site_stream site over one whole bin: h01 500 W, h02 300 W, utility 900 W, pv 300 W; cpu 0.5."""
    book = EnergyBook(INDEX)
    for host, watts in ((H01, 500.0), (H02, 300.0)):
        book.add_host_point(host, Point(f"s-{host.device}", 0, start, 0.0), None)
        book.add_host_point(host, Point(f"s-{host.device}", 1, start + BIN_MS, watts * 900),
                            Utilisation(cpu=0.5, gpu=None, seconds=900.0))
    for meter, watts in ((UTILITY, 900.0), (PV, 300.0)):
        book.add_meter_point(meter, Point(f"s-{meter.device}", 0, start, 0.0))
        book.add_meter_point(meter, Point(f"s-{meter.device}", 1, start + BIN_MS, watts * 900))
    return book


# ---------------------------------------------------------------------------------------------------------------
# periods_of_bin
# ---------------------------------------------------------------------------------------------------------------

PERIODS = {
    "bin in progress belongs to nothing": ("2026-03-02T00:00", "2026-03-02T00:05", "Asia/Shanghai", []),
    "bin 1 ms before its end is still in progress": ("2026-03-02T00:00", "2026-03-02T00:14:59.999", "Asia/Shanghai",
                                                     []),
    # 15:45Z is 23:45 on 31 October in Shanghai: the last bin of local day 31 Oct and of October
    "last bin of the local day and month (UTC+8)": ("2026-10-31T15:45", "2026-12-05T00:00", "Asia/Shanghai", [
        ("15m", "2026-10-31T15:45", "2026-10-31T16:00"),
        ("1h", "2026-10-31T15:00", "2026-10-31T16:00"),
        ("1d", "2026-10-30T16:00", "2026-10-31T16:00"),  # 31 Oct 00:00 to 1 Nov 00:00 local
        ("mtd", "2026-09-30T16:00", "2026-10-31T16:00"),  # 1 Oct to 1 Nov local
    ]),
    # 16:00Z on 31 October is 00:00 on 1 November in Shanghai: local day 1 Nov, month November
    "first bin of the local day and month (UTC+8)": ("2026-10-31T16:00", "2026-12-05T00:00", "Asia/Shanghai", [
        ("15m", "2026-10-31T16:00", "2026-10-31T16:15"),
        ("1h", "2026-10-31T16:00", "2026-10-31T17:00"),
        ("1d", "2026-10-31T16:00", "2026-11-01T16:00"),
        ("mtd", "2026-10-31T16:00", "2026-11-30T16:00"),
    ]),
    # now 02:20Z: data ends at 02:15Z, so the day and the month so far end there; the hour 01:00-02:00 is whole
    "running periods end at the end of data": ("2026-11-01T01:30", "2026-11-01T02:20", "Asia/Shanghai", [
        ("15m", "2026-11-01T01:30", "2026-11-01T01:45"),
        ("1h", "2026-11-01T01:00", "2026-11-01T02:00"),
        ("1d", "2026-10-31T16:00", "2026-11-01T02:15"),
        ("mtd", "2026-10-31T16:00", "2026-11-01T02:15"),
    ]),
    "the hour in progress ends at the end of data too": ("2026-11-01T02:00", "2026-11-01T02:20", "Asia/Shanghai", [
        ("15m", "2026-11-01T02:00", "2026-11-01T02:15"),
        ("1h", "2026-11-01T02:00", "2026-11-01T02:15"),
        ("1d", "2026-10-31T16:00", "2026-11-01T02:15"),
        ("mtd", "2026-10-31T16:00", "2026-11-01T02:15"),
    ]),
    # 18:15Z is 23:45 on 1 March in Kolkata; local days start at 18:30Z; the hour stays UTC-aligned
    "half-hour offset zone": ("2026-03-01T18:15", "2026-04-05T00:00", "Asia/Kolkata", [
        ("15m", "2026-03-01T18:15", "2026-03-01T18:30"),
        ("1h", "2026-03-01T18:00", "2026-03-01T19:00"),
        ("1d", "2026-02-28T18:30", "2026-03-01T18:30"),
        ("mtd", "2026-02-28T18:30", "2026-03-31T18:30"),  # 1 March to 1 April local
    ]),
}


@pytest.mark.parametrize(("start", "now", "zone", "expected"), PERIODS.values(), ids=PERIODS.keys())
def test_periods_of_bin(start, now, zone, expected):
    assert periods_of_bin(utc(start), utc(now), zone) == [(label, utc(a), utc(b)) for label, a, b in expected]


@pytest.mark.parametrize(("bin_start", "day_start", "day_end"), [
    ("2026-03-29T10:00", "2026-03-28T23:00", "2026-03-29T22:00"),  # spring forward: a 23-hour local day
    ("2026-10-25T10:00", "2026-10-24T22:00", "2026-10-25T23:00"),  # fall back: a 25-hour local day
], ids=["23-hour-day", "25-hour-day"])
def test_the_local_day_of_a_bin_follows_daylight_saving_time(bin_start, day_start, day_end):
    periods = dict((label, (a, b)) for label, a, b in periods_of_bin(utc(bin_start), utc("2026-12-01T00:00"),
                                                                     "Europe/Berlin"))
    standard = dict((label, (a, b)) for label, a, b in standard_periods(utc(day_end), "Europe/Berlin"))
    assert standard["1d"] == (utc(day_start), utc(day_end))  # the standard periods get it right
    assert periods["1d"] == (utc(day_start), utc(day_end))


# ---------------------------------------------------------------------------------------------------------------
# metrics_line
# ---------------------------------------------------------------------------------------------------------------

def test_metrics_line_of_a_complete_bin_carries_the_hand_computed_figures():
    # Per bin (0.25 h): E_IT = (0.5 + 0.3) kW x 0.25 h = 0.2 kWh; E_facility = (0.9 + 0.3) x 0.25 = 0.3 kWh;
    # PUE 1.5; green = pv 0.075 / 0.3 = 0.25; grid 0.225 kWh x 0.5271 (central 2023) = 0.1185975 kg,
    # CUE 0.1185975 / 0.2 = 0.5929875; market 0.225 x 0.6096 (national residual 2023) = 0.13716 kg, CUE 0.6858
    book = full_bin_book()
    m = metrics_for_period([book.site_bin("dc1", T)], T, T + BIN_MS, site_factors(DC1), period_label="15m")
    measurement, tags, fields, ts = parse(metrics_line("dc1", m))
    assert measurement == "site_metrics"
    assert tags == {"site": "dc1", "period": "15m"}
    assert ts == T  # the period's start, so a recomputed period overwrites its earlier value
    expected = {
        "pue": 1.5, "pue_status": "ok", "pue_category": "estimated", "e_facility_kwh": 0.3, "e_it_kwh": 0.2,
        "green_kwh": 0.075, "green_ratio": 0.25, "green_ratio_metered": 0.25, "green_ratio_onsite": 0.25,
        "green_status": "ok",
        "green_unclaimed_kwh": 0.0, "carbon_location_kg": 0.1185975, "carbon_market_kg": 0.13716,
        "cue_location": 0.5929875, "cue_market": 0.6858, "coverage": 1.0, "facility_coverage": 1.0,
        "bins_total": 1, "bins_complete": 1, "bins_facility_complete": 1, "ppue_bins": 0, "host_coverage": 1.0, "cpu_util": 0.5, "end_ms": T + BIN_MS,
        "grid_factor": 0.5271, "grid_factor_year": 2023, "grid_region": "central", "residual_factor": 0.6096,
    }
    assert set(fields) == set(expected)  # gpu_util and ppue_cooling are None: left out
    for key, value in expected.items():
        if isinstance(value, float):
            assert fields[key] == pytest.approx(value, rel=1e-12), key
        else:
            assert fields[key] == value, key
    assert isinstance(fields["bins_total"], int) and isinstance(fields["grid_factor_year"], int)


def test_metrics_line_of_a_period_without_data_says_why_and_leaves_figures_out():
    m = metrics_for_period([], T, T + HOUR, site_factors(DC1), period_label="1h")
    measurement, tags, fields, ts = parse(metrics_line("dc1", m))
    assert (measurement, tags, ts) == ("site_metrics", {"site": "dc1", "period": "1h"}, T)
    assert fields["pue_status"] == "no-facility-data" and fields["green_status"] == "no-facility-data"
    assert (fields["bins_total"], fields["bins_complete"], fields["coverage"]) == (4, 0, 0.0)
    assert fields["end_ms"] == T + HOUR
    for absent in ("pue", "e_facility_kwh", "e_it_kwh", "green_ratio", "cue_location", "host_coverage"):
        assert absent not in fields


def test_metrics_line_carries_a_status_with_spaces_as_one_string_field():
    book = EnergyBook(INDEX)  # meters complete, only h01 reports: host coverage 0.5 < 0.98
    for meter, watts in ((UTILITY, 900.0), (PV, 300.0)):
        book.add_meter_point(meter, Point(f"s-{meter.device}", 0, T, 0.0))
        book.add_meter_point(meter, Point(f"s-{meter.device}", 1, T + BIN_MS, watts * 900))
    book.add_host_point(H01, Point("s-h01", 0, T, 0.0), None)
    book.add_host_point(H01, Point("s-h01", 1, T + BIN_MS, 450_000.0), None)
    m = metrics_for_period([book.site_bin("dc1", T)], T, T + BIN_MS, site_factors(DC1), period_label="15m")
    _, _, fields, _ = parse(metrics_line("dc1", m))
    assert fields["pue_status"] == "it-coverage-low 0.50 < 0.98"
    assert fields["host_coverage"] == 0.5 and "pue" not in fields
    assert fields["e_facility_kwh"] == pytest.approx(0.3)


# ---------------------------------------------------------------------------------------------------------------
# site_factors
# ---------------------------------------------------------------------------------------------------------------

def factor(value: float, region: str, year: int | None, kind: str) -> Factor:
    return Factor(value, region, year, kind, "test figure")


TABLE = FactorTable(
    location={(GridRegion.CENTRAL, 2022): factor(0.50, "central", 2022, "location"),
              (GridRegion.CENTRAL, 2023): factor(0.52, "central", 2023, "location"),
              (GridRegion.CENTRAL, 2024): factor(0.54, "central", 2024, "location")},
    residual={2022: factor(0.60, "national", 2022, "residual"), 2023: factor(0.61, "national", 2023, "residual")},
    diesel=factor(0.762, "on-site", None, "assumption"),
)


def site(**fields) -> Site:
    return Site.model_validate({"id": "dc1", "name": "Test", "grid_region": "central", **fields})


@pytest.mark.parametrize(("year", "grid", "residual"), [
    (2023, (0.52, 2023), (0.61, 2023)),  # the residual of the grid factor's year
    (2022, (0.50, 2022), (0.60, 2022)),  # an older year: its own residual, not the latest
    (2024, (0.54, 2024), (0.61, 2023)),  # no residual published for 2024 yet: the latest (2023)
    (None, (0.54, 2024), (0.61, 2023)),  # no year chosen: the latest grid year, and the latest residual
])
def test_site_factors_pick_the_grid_year_and_the_residual_of_the_same_year_else_the_latest(year, grid, residual):
    f = site_factors(site(grid_factor_year=year), TABLE)
    assert (f.grid.value_kg_per_kwh, f.grid.year, f.grid.kind) == (*grid, "location")
    assert (f.residual.value_kg_per_kwh, f.residual.year, f.residual.kind) == (*residual, "residual")


@pytest.mark.parametrize(("region", "year", "grid", "residual"), [
    ("central", None, (0.5271, 2023), (0.6096, 2023)),  # latest year
    ("southwest", 2022, (0.2268, 2022), (0.5856, 2022)),
    ("national", 2021, (0.5568, 2021), (0.5942, 2021)),
])
def test_site_factors_from_the_shipped_table(region, year, grid, residual):
    f = site_factors(site(grid_region=region, grid_factor_year=year))
    assert (f.grid.value_kg_per_kwh, f.grid.year) == grid
    assert (f.residual.value_kg_per_kwh, f.residual.year) == residual


def test_site_factors_take_the_site_s_diesel_figure_and_coverage_threshold():
    default = site_factors(site(), TABLE)
    assert default.diesel.value_kg_per_kwh == 0.762 and default.min_it_coverage == 0.98
    own = site_factors(site(diesel_factor_kg_per_kwh=0.9, min_it_coverage=0.9), TABLE)
    assert (own.diesel.value_kg_per_kwh, own.diesel.kind) == (0.9, "assumption")
    assert own.min_it_coverage == 0.9


# ---------------------------------------------------------------------------------------------------------------
# Reporter: rack, room and meter energy lines, site lines
# ---------------------------------------------------------------------------------------------------------------

def reporter(book: EnergyBook) -> Reporter:
    return Reporter(INDEX, book, {}, {"dc1": site_factors(DC1)})


def test_accumulator_lines_for_a_rack_its_room_and_a_meter():
    book = EnergyBook(INDEX)
    # h01: 0-10 min at 500 W = 300 000 J; cpu 0.5 x 600 s. h02 silent.
    book.add_host_point(H01, Point("s-h01", 0, T, 0.0), None)
    book.add_host_point(H01, Point("s-h01", 1, T + 10 * MIN, 300_000.0), Utilisation(cpu=0.5, gpu=0.8, seconds=600.0))
    # utility-1: 0-6 min at 900 W = 324 000 J
    book.add_meter_point(UTILITY, Point("s-utility", 0, T, 0.0))
    book.add_meter_point(UTILITY, Point("s-utility", 1, T + 6 * MIN, 324_000.0))
    lines = sorted(parse(text) for text in reporter(book).accumulator_lines(book.take_dirty()))
    assert [(m, ts) for m, _, _, ts in lines] == [("meter_energy", T), ("rack_energy", T), ("room_energy", T)]
    (_, meter_tags, meter_fields, _), (_, rack_tags, rack_fields, _), (_, room_tags, room_fields, _) = lines
    assert rack_tags == {"site": "dc1", "room": "hall-a", "rack": "r01"}
    assert rack_fields == {
        "energy_kwh": pytest.approx(300_000 / 3.6e6),  # 0.08333 kWh
        "host_coverage": pytest.approx(1 / 3),  # 600 000 ms / (900 000 ms x 2 hosts)
        "cpu_util": 0.5, "gpu_util": 0.8,
    }
    assert room_tags == {"site": "dc1", "room": "hall-a"}
    assert room_fields == rack_fields  # hall-a's only rack is r01, with both its hosts
    assert meter_tags == {"site": "dc1", "meter": "utility-1", "role": "facility-input", "source": "grid"}
    assert meter_fields == {"energy_kwh": pytest.approx(0.09), "coverage": pytest.approx(0.4)}  # 324 000 J, 6/15


def test_a_room_line_sums_its_racks_in_the_bin_and_comes_with_any_of_their_lines():
    config = yaml.safe_load(SITE_YAML)
    config["sites"][0]["rooms"][0]["racks"].append({"id": "r02", "hosts": ["h03"]})
    index = SiteIndex(SiteConfig.model_validate(config))
    book = EnergyBook(index)
    reporter = Reporter(index, book, {}, {"dc1": site_factors(DC1)})
    h01, h03 = index.host("dc1", "hall-a", "r01", "h01"), index.host("dc1", "hall-a", "r02", "h03")
    # h01: 0-15 min at 500 W = 450 000 J, cpu 0.5 x 900 s; h03: 0-5 min at 300 W = 90 000 J, cpu 0.2 x 300 s
    book.add_host_point(h01, Point("s-h01", 0, T, 0.0), None)
    book.add_host_point(h01, Point("s-h01", 1, T + BIN_MS, 450_000.0), Utilisation(cpu=0.5, gpu=None, seconds=900.0))
    book.add_host_point(h03, Point("s-h03", 0, T, 0.0), None)
    book.add_host_point(h03, Point("s-h03", 1, T + 5 * MIN, 90_000.0), Utilisation(cpu=0.2, gpu=None, seconds=300.0))
    reporter.accumulator_lines(book.take_dirty())
    # a later line of r02 alone brings the room line again, with r01's part in it
    book.add_host_point(h03, Point("s-h03", 2, T + 10 * MIN, 180_000.0), Utilisation(cpu=0.2, gpu=None, seconds=300.0))
    lines = [parse(text) for text in reporter.accumulator_lines(book.take_dirty())]
    assert sorted((m, tags.get("rack")) for m, tags, _, _ in lines) == [("rack_energy", "r02"), ("room_energy", None)]
    (room,) = [(tags, fields, ts) for m, tags, fields, ts in lines if m == "room_energy"]
    assert room == ({"site": "dc1", "room": "hall-a"}, {
        "energy_kwh": pytest.approx((450_000 + 180_000) / 3.6e6),  # 0.175 kWh
        "host_coverage": pytest.approx((900_000 + 600_000) / (900_000 * 3)),  # 3 hosts expected in the room
        "cpu_util": pytest.approx((0.5 * 900 + 0.2 * 600) / 1500),  # 0.38
    }, T)


def test_rack_host_coverage_is_capped_at_one():
    book = EnergyBook(INDEX)
    for host, session in ((H01, "a"), (H01, "b"), (H02, "a")):  # h01 twice at once: 3 x 900 000 ms over 2 hosts
        book.add_host_point(host, Point(session, 0, T, 0.0), None)
        book.add_host_point(host, Point(session, 1, T + BIN_MS, 1.0), None)
    (text,) = [t for t in reporter(book).accumulator_lines(book.take_dirty()) if t.startswith("rack_energy")]
    assert parse(text)[2]["host_coverage"] == 1.0


def test_site_lines_cover_the_periods_of_changed_bins_and_the_standard_ones():
    book = full_bin_book()
    r = reporter(book)
    r.accumulator_lines(book.take_dirty())
    now = T + 20 * MIN  # the bin T ended 5 minutes ago
    parsed = [parse(text) for text in r.site_lines(now)]
    by_period = {(tags["period"], ts): fields for _, tags, fields, ts in parsed}
    # T is 08:00 on 2 March in Shanghai. Standard periods at now: 15m [T, T+15 min), 1h [T-1h, T), 1d 1 March
    # local (from 28 Feb 16:00Z), mtd from 1 March local, 12m from 08:15 local on 2 March 2025 (00:15Z); the bin
    # adds 1h [T, T+15 min) and 2 March local so far (from 1 March 16:00Z). mtd is the same period both ways.
    assert set(by_period) == {("15m", T), ("1h", T - HOUR), ("1h", T), ("1d", utc("2026-02-28T16:00")),
                              ("1d", utc("2026-03-01T16:00")), ("mtd", utc("2026-02-28T16:00")),
                              ("12m", utc("2025-03-02T00:15"))}
    assert by_period[("15m", T)]["pue"] == pytest.approx(1.5)
    assert by_period[("1h", T)]["pue"] == pytest.approx(1.5) and by_period[("1h", T)]["end_ms"] == T + BIN_MS
    assert "pue" not in by_period[("1h", T - HOUR)]  # no data in the hour before
    # the changed bins are forgotten once reported: the next call writes the standard periods only
    assert len(r.site_lines(now)) == 5


def test_accumulator_lines_held_back_while_behind_come_later_with_the_latest_values():
    book = EnergyBook(INDEX)
    r = reporter(book)
    book.add_host_point(H01, Point("s-h01", 0, T, 0.0), None)
    book.add_host_point(H01, Point("s-h01", 1, T + 5 * MIN, 150_000.0), None)
    assert len(r.accumulator_lines(book.take_dirty(), now_s=100.0, hold_s=10.0)) == 2  # rack and room: not held
    book.add_host_point(H01, Point("s-h01", 2, T + 10 * MIN, 300_000.0), None)
    assert r.accumulator_lines(book.take_dirty(), now_s=105.0, hold_s=10.0) == []  # 5 s after the last lines
    assert r.holding and book.unwritten == {("rack", "dc1", "hall-a", "r01", T)}  # its room comes with it
    book.add_meter_point(UTILITY, Point("s-utility", 0, T, 0.0))
    book.add_meter_point(UTILITY, Point("s-utility", 1, T + 6 * MIN, 324_000.0))
    assert r.accumulator_lines(book.take_dirty(), now_s=109.0, hold_s=10.0) == []
    # 10 s after the last lines: every held accumulator, once, with its current value
    lines = sorted(parse(text) for text in r.accumulator_lines({}, now_s=110.0, hold_s=10.0))
    assert [(m, ts) for m, _, _, ts in lines] == [("meter_energy", T), ("rack_energy", T), ("room_energy", T)]
    assert lines[1][2]["energy_kwh"] == lines[2][2]["energy_kwh"] == pytest.approx(300_000 / 3.6e6)
    assert not r.holding and book.unwritten == set()


def test_accumulator_lines_not_held_when_the_caller_is_not_behind():
    book = EnergyBook(INDEX)
    r = reporter(book)
    book.add_host_point(H01, Point("s-h01", 0, T, 0.0), None)
    book.add_host_point(H01, Point("s-h01", 1, T + 5 * MIN, 150_000.0), None)
    assert r.accumulator_lines(book.take_dirty(), now_s=100.0, hold_s=10.0)
    book.add_host_point(H01, Point("s-h01", 2, T + 10 * MIN, 300_000.0), None)
    assert r.accumulator_lines(book.take_dirty(), now_s=101.0, hold_s=10.0) == []
    written = r.accumulator_lines({}, now_s=101.5)  # hold_s 0: everything held is written now
    assert sorted(parse(text)[0] for text in written) == ["rack_energy", "room_energy"]
    assert all(parse(text)[2]["energy_kwh"] == pytest.approx(300_000 / 3.6e6) for text in written)


def test_held_lines_still_mark_their_site_bins_for_the_site_metrics():
    book = full_bin_book()
    r = reporter(book)
    assert r.accumulator_lines({}, now_s=0.0, hold_s=10.0) == []  # lines written (none) at 0 s
    assert r.accumulator_lines(book.take_dirty(), now_s=1.0, hold_s=10.0) == []  # held
    now = T + 3 * 86_400_000  # bin T is no standard period any more: only its change brings it back
    periods = {(tags["period"], ts) for _, tags, _, ts in map(parse, r.site_lines(now))}
    assert ("15m", T) in periods
