"""Turns the energy book into InfluxDB lines: energy per rack, room and meter per bin, and site metrics per period.

Pure: the evaluation instant is a parameter. Site metrics are written for every period that new data
touched (its 15-minute bin once ended, its hour, its local day, its local month) and for the standard
periods at the evaluation instant (so a silent site still gets its 'no data' status), plus the trailing
12 months up to the end of the last bin. Every point's timestamp is its period's start, so recomputing a
period overwrites its earlier value (idempotent writes).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timezone

import pandas as pd

from collector.accounting import BIN_MS
from collector.book import J_PER_KWH, Accumulator, AccumulatorKey, EnergyBook
from collector.factors import FactorTable, diesel_factor, grid_factor, residual_factor
from collector.ledger import Ledger, green_instruments_kwh
from collector import lineproto
from collector.lineproto import line
from collector.metrics import HOUR_MS, SiteBin, SiteFactors, SiteMetrics, metrics_for_period, standard_periods
from collector.site import Site, SiteIndex

Period = tuple[str, int, int]
_LINE_SCOPES = ("rack", "meter")  # accumulators with a line of their own (rack_energy, meter_energy)
_HOST_ROLLUPS = ("rack", "room")  # lines of the hosts' energy, coverage and utilisation (rack_energy, room_energy)


def site_factors(site: Site, table: FactorTable | None = None) -> SiteFactors:
    """The factors a site's configuration selects: its region's grid factor for the chosen (or latest) year,
    the national residual factor of the same year where published (else the latest), and diesel."""
    grid = grid_factor(site.grid_region, site.grid_factor_year, table)
    try:
        residual = residual_factor(grid.year, table)
    except ValueError:
        residual = residual_factor(None, table)
    return SiteFactors(grid=grid, residual=residual, diesel=diesel_factor(site.diesel_factor_kg_per_kwh, table),
                       min_it_coverage=site.min_it_coverage)


class Reporter:
    def __init__(self, index: SiteIndex, book: EnergyBook, ledgers: Mapping[str, Ledger],
                 factors: Mapping[str, SiteFactors], sites: Iterable[str] | None = None):
        """sites: the sites this collector reports (its partition); every configured site when None."""
        self.index = index
        self.sites = [site for site in index.sites if sites is None or site.id in set(sites)]
        self.book = book
        self.ledgers = ledgers
        self.factors = factors
        self._bins: dict[tuple[str, int], SiteBin] = {}
        self._touched: dict[str, set[int]] = {}
        self._lines_at = float("-inf")
        self._series: dict[tuple, tuple[str, int]] = {}
        self._racks: dict[tuple[str, str], list[str]] = {}  # by (site, room): the room's racks

    def accumulator_lines(self, changed: Mapping[AccumulatorKey, Accumulator], now_s: float = 0.0,
                          hold_s: float = 0.0) -> list[str]:
        """Lines for the rack and meter accumulators changed since their last line, with their current values,
        and for the rooms of those racks (each the sum of its racks in that bin); remembers which site bins changed.

        hold_s > 0 (the caller has more messages waiting): the lines are held back while the last ones were
        written less than hold_s before now_s (seconds, any monotonic clock). Held accumulators wait in
        `book.unwritten` (the state saves them as such) and the next call that does not hold writes them."""
        for key in changed:
            if key[0] in ("hosts", "meter"):
                self._touched.setdefault(key[1], set()).add(key[-1])
                self._bins.pop((key[1], key[-1]), None)
        held = self.book.unwritten
        held.update(key for key in changed if key[0] in _LINE_SCOPES)
        if hold_s > 0 and now_s - self._lines_at < hold_s:
            return []
        self._lines_at = now_s
        accumulators = self.book.accumulators
        lines = [text for key in held
                 if (acc := accumulators.get(key)) is not None and (text := self._accumulator_line(key, acc))]
        lines += self._room_lines({(key[1], key[2], key[-1]) for key in held if key[0] == "rack"})
        held.clear()
        return lines

    def _room_lines(self, room_bins: Iterable[tuple[str, str, int]]) -> list[str]:
        """room_energy lines of these (site, room, bin start): the sum of the room's rack accumulators in the bin,
        summed when a rack line of the room is written (not per message, which would cost every message)."""
        accumulators, lines = self.book.accumulators, []
        for site, room, start in room_bins:
            total = Accumulator()
            for rack in self._racks_of(site, room):
                acc = accumulators.get(("rack", site, room, rack, start))
                if acc is not None:
                    total.add(acc)
            if text := self._accumulator_line(("room", site, room, start), total):
                lines.append(text)
        return lines

    def _racks_of(self, site: str, room: str) -> list[str]:
        found = self._racks.get((site, room))
        if found is None:
            found = self._racks[(site, room)] = sorted({host.rack for host in self.index.expected_hosts(site, room)})
        return found

    @property
    def holding(self) -> bool:
        """Whether some rack or meter lines are held back (see accumulator_lines)."""
        return bool(self.book.unwritten)

    def touch(self, site_id: str, bin_starts: Iterable[int]) -> None:
        """Have the next site_lines recompute the periods of these bins (after a restart, for instance)."""
        self._touched.setdefault(site_id, set()).update(bin_starts)

    def site_lines(self, now_ms: int) -> list[str]:
        """Site metrics for the standard periods at now_ms and every period the changed bins belong to."""
        lines = []
        end_of_data = now_ms - now_ms % BIN_MS
        for site in self.sites:
            periods = set(standard_periods(now_ms, site.timezone))
            touched = self._touched.get(site.id, set())
            for start in touched:
                periods |= set(periods_of_bin(start, now_ms, site.timezone))
            lines += [metrics_line(site.id, m) for m in self.metrics(site.id, sorted(periods))]
            self._touched[site.id] = {start for start in touched if start + BIN_MS > end_of_data}  # still running
        return lines

    def forget_before(self, start_ms: int) -> None:
        """Drop cached site bins older than start_ms (the book forgot them)."""
        for key in [key for key in self._bins if key[1] < start_ms]:
            del self._bins[key]

    def metrics(self, site_id: str, periods: Iterable[Period]) -> list[SiteMetrics]:
        results = []
        for label, start, end in periods:
            bins = [self._site_bin(site_id, b) for b in self.book.site_bin_starts(site_id, start, end)]
            gec_kwh, traded_kwh = self._instruments(site_id, start, end)
            results.append(metrics_for_period(bins, start, end, self.factors[site_id], gec_kwh, traded_kwh, label))
        return results

    def _site_bin(self, site_id: str, start: int) -> SiteBin:
        cached = self._bins.get((site_id, start))
        if cached is None:
            cached = self._bins[(site_id, start)] = self.book.site_bin(site_id, start)
        return cached

    def _instruments(self, site_id: str, start: int, end: int) -> tuple[float, float]:
        ledger = self.ledgers.get(site_id)
        if ledger is None:
            return 0.0, 0.0
        return tuple(green_instruments_kwh(ledger, _utc(start), _utc(end)))

    def _accumulator_line(self, key: AccumulatorKey, acc: Accumulator) -> str | None:
        if key[0] in _HOST_ROLLUPS:
            series, hosts = self._series_of(key)
            return lineproto.point(series, {
                "energy_kwh": max(0.0, acc.energy_j) / J_PER_KWH,
                "host_coverage": min(1.0, max(0.0, acc.covered_ms) / (BIN_MS * hosts)),
                "cpu_util": _ratio(acc.cpu_util_weighted, acc.cpu_util_weight),
                "gpu_util": _ratio(acc.gpu_util_weighted, acc.gpu_util_weight),
            }, key[-1])
        if key[0] == "meter":
            series, _ = self._series_of(key)
            return lineproto.point(series, {
                "energy_kwh": max(0.0, acc.energy_j) / J_PER_KWH,
                "coverage": min(1.0, max(0.0, acc.covered_ms) / BIN_MS),
            }, key[-1])
        return None

    def _series_of(self, key: AccumulatorKey) -> tuple[str, int]:
        """The escaped series of a rack, room or meter accumulator (and a rack's or room's expected hosts, at
        least 1), made once per rack, room or meter."""
        found = self._series.get(key[:-1])
        if found is None:
            if key[0] == "rack":
                _, site, room, rack, _start = key
                hosts = len(self.index.expected_hosts(site, room, rack)) or 1
                found = (lineproto.series("rack_energy", {"site": site, "room": room, "rack": rack}), hosts)
            elif key[0] == "room":
                _, site, room, _start = key
                hosts = len(self.index.expected_hosts(site, room)) or 1
                found = (lineproto.series("room_energy", {"site": site, "room": room}), hosts)
            else:
                _, site, meter_id, _start = key
                meter = next(m for m in self.index.expected_meters(site) if m.device == meter_id)
                found = (lineproto.series("meter_energy", {"site": site, "meter": meter_id, "role": meter.role,
                                                           "source": meter.source or ""}), 1)
            self._series[key[:-1]] = found
        return found


def periods_of_bin(start: int, now_ms: int, zone: str) -> list[Period]:
    """The periods a bin belongs to: the bin itself, its hour, its local day and its local month.

    A period still running ends at the end of the last whole bin (an hour, day or month 'so far'); the
    bin in progress belongs to none until it ends.
    """
    end_of_data = now_ms - now_ms % BIN_MS
    if start + BIN_MS > end_of_data:
        return []
    day = pd.Timestamp(start, unit="ms", tz="UTC").tz_convert(zone).normalize()
    hour = start - start % HOUR_MS
    candidates = [
        ("15m", start, start + BIN_MS),
        ("1h", hour, hour + HOUR_MS),
        ("1d", _ms(day), _ms(day + pd.DateOffset(days=1))),
        ("mtd", _ms(day.replace(day=1)), _ms(day.replace(day=1) + pd.DateOffset(months=1))),
    ]
    return [(label, begin, min(end, end_of_data)) for label, begin, end in candidates]


def metrics_line(site_id: str, m: SiteMetrics) -> str:
    factors = m.factors
    fields = {
        "pue": m.pue, "pue_status": m.pue_status, "pue_category": str(m.pue_category) if m.pue_category else None,
        "e_facility_kwh": m.e_facility_kwh, "e_it_kwh": m.e_it_kwh, "green_kwh": m.green_kwh,
        "green_ratio": m.green_ratio, "green_ratio_metered": m.green_ratio_metered,
        "green_ratio_onsite": m.green_ratio_onsite, "green_status": m.green_status,
        "green_unclaimed_kwh": m.green_unclaimed_kwh, "carbon_location_kg": m.carbon_location_kg,
        "carbon_market_kg": m.carbon_market_kg, "cue_location": m.cue_location, "cue_market": m.cue_market,
        "coverage": m.coverage, "facility_coverage": m.facility_coverage, "bins_total": m.bins_total,
        "bins_complete": m.bins_complete,
        "bins_facility_complete": m.bins_facility_complete, "ppue_bins": m.ppue_bins, "host_coverage": m.host_coverage, "cpu_util": m.cpu_util,
        "gpu_util": m.gpu_util, "ppue_cooling": m.ppue_cooling, "end_ms": m.end_ms,
        "grid_factor": factors.grid.value_kg_per_kwh, "grid_factor_year": factors.grid.year,
        "grid_region": str(factors.grid.region), "residual_factor": factors.residual.value_kg_per_kwh,
    }
    return line("site_metrics", {"site": site_id, "period": m.period}, fields, m.start_ms)


def _ms(ts: pd.Timestamp) -> int:
    return int(ts.tz_convert("UTC").value // 1_000_000)


def _utc(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator > 0 else None
