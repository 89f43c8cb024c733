"""Site metrics from 15-minute energy bins: PUE, green-power ratio, CUE, pPUE, utilisation. Pure functions.

Definitions (docs/metrics.md has the formulas, every rule and a worked example):

- E_facility, the total data-centre energy of ISO/IEC 30134-2 = facility-input meters (grid, green-traded and
  mixed feeders) + on-site generation consumed (pv, wind, diesel). A PV array behind the utility meter lowers
  the grid reading, not the facility energy. Every other meter role is a sub-meter and is never added to it.
- PUE (ISO/IEC 30134-2) = E_facility / E_IT over the same bins. Its category says where E_IT was taken:
  PUE3 it-input meters, PUE2 pdu-output, PUE1 ups-output, "estimated" from the agents' server-input models.
- Green ratio (the REF of ISO/IEC 30134-3) = (pv + wind + metered green-traded feeders + the ledger's
  green-trading contracts and GEC) / E_facility. Ledger instruments can only be claimed against grid energy
  not already metered as green; what they exceed is reported as unclaimed, never counted.
  ASSUMPTION: the ledger holds only instruments for energy NOT metered as a green-traded feeder and not
  generated on site; an instrument that is both must be entered in one place only.
- CUE (ISO/IEC 30134-8) = kgCO2 / E_IT, location-based (grid factor on all grid kWh) and market-based
  (green-traded and certificate-covered kWh at zero, residual factor on the rest); diesel at its own factor.
- pPUE of cooling, the partial PUE of the cooling subsystem (The Green Grid; ISO/IEC 30134-2 describes partial
  PUE too: check the clause in the edition in force) = (E_IT + E_cooling) / E_IT.

Silence is not zero. A bin is "facility-complete" when at least one facility-input meter is expected and every
expected facility-input and on-site-generation meter covered >= 99.9 % of it; it is "complete" when, in
addition, the IT data of the period's category is complete. Energy, green and carbon figures sum the
facility-complete bins, PUE and CUE the complete bins, and every ratio is a ratio of such sums; the bin counts
are reported. A PUE below 1 is physically impossible and is withheld, as is any PUE without data behind it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_FLOOR, Decimal
from enum import StrEnum

import pandas as pd

from collector.accounting import BIN_MS
from collector.factors import Factor
from common.contract import EnergySource, MeterRole

HOUR_MS = 4 * BIN_MS
COMPLETE_COVERAGE = 0.999  # a meter that covered 99.9 % of a bin (all but 0.9 s) counts as complete
KWH_PER_GEC = 1_000.0  # one green electricity certificate (绿证) stands for 1 MWh
DEFAULT_TZ = "Asia/Shanghai"

GRID_SOURCES = frozenset({EnergySource.GRID, EnergySource.GREEN_TRADED, EnergySource.MIXED})
GENERATION_SOURCES = frozenset({EnergySource.PV, EnergySource.WIND, EnergySource.DIESEL})
FACILITY_ROLES = frozenset({MeterRole.FACILITY_INPUT, MeterRole.ONSITE_GENERATION})

EnergyKey = tuple[MeterRole, EnergySource | None]
Period = tuple[str, int, int]


class PueCategory(StrEnum):
    """Where IT energy was taken, best first (ISO/IEC 30134-2 measurement categories, and the agents' model)."""

    PUE3 = "PUE3"  # IT equipment input
    PUE2 = "PUE2"  # PDU output
    PUE1 = "PUE1"  # UPS output
    ESTIMATED = "estimated"  # sum of the agents' server-input estimates (method model)


IT_ROLE = {
    PueCategory.PUE3: MeterRole.IT_INPUT,
    PueCategory.PUE2: MeterRole.PDU_OUTPUT,
    PueCategory.PUE1: MeterRole.UPS_OUTPUT,
}


@dataclass(frozen=True)
class MeterCoverage:
    """An expected meter's role and the fraction (0..1) of the bin its readings covered (0 when silent)."""

    role: MeterRole
    fraction: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "role", MeterRole(self.role))
        if not (math.isfinite(self.fraction) and 0.0 <= self.fraction <= 1.0):
            raise ValueError(f"meter coverage {self.fraction!r} is not within 0..1")


@dataclass(frozen=True)
class SiteBin:
    """One site's accounted energy for one 15-minute bin, with what was expected and what reported.

    energy_kwh sums the meters that reported, by (role, source): facility-input needs a source of grid,
    green-traded or mixed, onsite-generation one of pv, wind or diesel; other roles may leave it None.
    meter_coverage lists every EXPECTED meter by id. Hosts: hosts_expected and the sum of their covered
    fractions. Utilisation comes as weighted sums and weights (e.g. host-seconds) so bins add exactly.
    """

    start_ms: int
    energy_kwh: Mapping[EnergyKey, float] = field(default_factory=dict)
    meter_coverage: Mapping[str, MeterCoverage] = field(default_factory=dict)
    host_server_input_kwh: float = 0.0
    hosts_expected: int = 0
    host_coverage_sum: float = 0.0
    cpu_util_weighted_sum: float = 0.0
    cpu_util_weight: float = 0.0
    gpu_util_weighted_sum: float = 0.0
    gpu_util_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.start_ms % BIN_MS:
            raise ValueError(f"bin start {self.start_ms} is not a multiple of {BIN_MS} ms")
        expected_roles = {coverage.role for coverage in self.meter_coverage.values()}
        energy = {_energy_key(key, expected_roles): kwh for key, kwh in self.energy_kwh.items()}
        object.__setattr__(self, "energy_kwh", energy)
        for (role, source), kwh in self.energy_kwh.items():
            _check_non_negative(f"energy of {role} {source}", kwh)
        _check_non_negative("host_server_input_kwh", self.host_server_input_kwh)
        if self.hosts_expected < 0 or not 0.0 <= self.host_coverage_sum <= self.hosts_expected:
            raise ValueError(f"host coverage sum {self.host_coverage_sum} outside 0..{self.hosts_expected} hosts")
        if self.host_server_input_kwh > 0 and self.hosts_expected == 0:
            raise ValueError("host energy reported for a bin that expects no hosts")
        _check_utilisation("cpu", self.cpu_util_weighted_sum, self.cpu_util_weight)
        _check_utilisation("gpu", self.gpu_util_weighted_sum, self.gpu_util_weight)

    @property
    def host_coverage(self) -> float | None:
        """Mean covered fraction over the expected hosts; None when no host is expected."""
        return self.host_coverage_sum / self.hosts_expected if self.hosts_expected else None

    @property
    def cpu_util_avg(self) -> float | None:
        return _ratio(self.cpu_util_weighted_sum, self.cpu_util_weight)

    @property
    def gpu_util_avg(self) -> float | None:
        return _ratio(self.gpu_util_weighted_sum, self.gpu_util_weight)


@dataclass(frozen=True)
class SiteFactors:
    """A site's emission factors (each with region, year and source) and its minimum host coverage."""

    grid: Factor
    residual: Factor
    diesel: Factor
    min_it_coverage: float = 0.98

    def __post_init__(self) -> None:
        if self.grid.kind != "location":
            raise ValueError(f"the grid factor must be a location-based factor, not {self.grid.kind}")
        if self.residual.kind != "residual":
            raise ValueError(f"the residual factor must be a residual factor, not {self.residual.kind}")
        for name, factor in (("grid", self.grid), ("residual", self.residual), ("diesel", self.diesel)):
            _check_non_negative(f"{name} factor", factor.value_kg_per_kwh)
        if not 0.0 < self.min_it_coverage <= 1.0:
            raise ValueError(f"min_it_coverage {self.min_it_coverage} is not within (0, 1]")


@dataclass(frozen=True)
class Totals:
    """Sums over one set of bins, with the ledger's share for those bins: the audit trail of the ratios."""

    bins: int
    e_facility_kwh: float
    e_grid_delivered_kwh: float  # every facility-input feeder: grid, green-traded and mixed
    e_green_traded_kwh: float  # facility-input feeders with source green-traded
    e_pv_kwh: float
    e_wind_kwh: float
    e_diesel_kwh: float
    ledger_gec_kwh: float  # the period's GEC kWh prorated to these bins
    ledger_traded_kwh: float  # the period's green-trading contract kWh prorated to these bins
    green_metered_kwh: float  # pv + wind + green-traded feeders
    green_kwh: float  # green_metered + ledger instruments claimed
    green_unclaimed_kwh: float  # ledger instruments beyond the grid energy they could cover
    carbon_location_kg: float
    carbon_market_kg: float


@dataclass(frozen=True)
class SiteMetrics:
    """One site's metrics for one period; every figure None when its data is missing, with the reason."""

    period: str
    start_ms: int
    end_ms: int
    bins_total: int
    factors: SiteFactors
    # facility energy, green power and emissions, over the facility-complete bins
    bins_facility_complete: int
    facility_coverage: float
    facility: Totals | None
    e_facility_kwh: float | None
    green_kwh: float | None
    green_unclaimed_kwh: float | None
    green_ratio: float | None
    green_ratio_metered: float | None  # without ledger instruments
    green_ratio_onsite: float | None  # pv and wind only: without green-traded feeders and ledger
    green_status: str
    carbon_location_kg: float | None
    carbon_market_kg: float | None
    # PUE, CUE and pPUE, over the complete bins
    pue_category: PueCategory | None
    bins_complete: int
    coverage: float
    pue_basis: Totals | None
    e_it_kwh: float | None
    pue: float | None
    pue_status: str
    cue_location: float | None
    cue_market: float | None
    ppue_cooling: float | None
    ppue_bins: int
    # over every bin received
    host_coverage: float | None
    cpu_util: float | None
    gpu_util: float | None


def metrics_for_period(
    bins: Sequence[SiteBin],
    start_ms: int,
    end_ms: int,
    factors: SiteFactors,
    gec_kwh: float = 0.0,
    traded_kwh: float = 0.0,
    period_label: str = "",
) -> SiteMetrics:
    """The metrics of one site over [start_ms, end_ms), from its bins in that period.

    Bins absent from `bins` count as incomplete. gec_kwh and traded_kwh are the ledger's instruments for the
    whole period; the figures over a subset of its bins use the share prorated by bin count.
    """
    bins_total = _check_period(bins, start_ms, end_ms)
    _check_non_negative("gec_kwh", gec_kwh)
    _check_non_negative("traded_kwh", traded_kwh)
    facility_bins = [b for b in bins if _facility_complete(b)]
    facility = _totals(facility_bins, bins_total, gec_kwh, traded_kwh, factors) if facility_bins else None
    category = _choose_category(facility_bins)
    complete = [b for b in facility_bins if category and _it_complete(b, category, factors.min_it_coverage)]
    basis = _totals(complete, bins_total, gec_kwh, traded_kwh, factors) if complete else None
    e_it = _it_kwh(complete, category) if complete and category else None
    pue, pue_status = _pue(facility_bins, category, basis, e_it, factors.min_it_coverage)
    green_ratio, green_ratio_metered, green_ratio_onsite, green_status = _green_ratios(facility)
    ppue, ppue_bins = _ppue_cooling(complete, category)

    return SiteMetrics(
        period=period_label,
        start_ms=start_ms,
        end_ms=end_ms,
        bins_total=bins_total,
        factors=factors,
        bins_facility_complete=len(facility_bins),
        facility_coverage=len(facility_bins) / bins_total,
        facility=facility,
        e_facility_kwh=facility.e_facility_kwh if facility else None,
        green_kwh=facility.green_kwh if facility else None,
        green_unclaimed_kwh=facility.green_unclaimed_kwh if facility else None,
        green_ratio=green_ratio,
        green_ratio_metered=green_ratio_metered,
        green_ratio_onsite=green_ratio_onsite,
        green_status=green_status,
        carbon_location_kg=facility.carbon_location_kg if facility else None,
        carbon_market_kg=facility.carbon_market_kg if facility else None,
        pue_category=category,
        bins_complete=len(complete),
        coverage=len(complete) / bins_total,
        pue_basis=basis,
        e_it_kwh=e_it,
        pue=pue,
        pue_status=pue_status,
        cue_location=_cue(pue, basis.carbon_location_kg if basis else None, e_it),
        cue_market=_cue(pue, basis.carbon_market_kg if basis else None, e_it),
        ppue_cooling=ppue,
        ppue_bins=ppue_bins,
        host_coverage=_ratio(math.fsum(b.host_coverage_sum for b in bins), sum(b.hosts_expected for b in bins)),
        cpu_util=_ratio(math.fsum(b.cpu_util_weighted_sum for b in bins), math.fsum(b.cpu_util_weight for b in bins)),
        gpu_util=_ratio(math.fsum(b.gpu_util_weighted_sum for b in bins), math.fsum(b.gpu_util_weight for b in bins)),
    )


def standard_periods(now_ms: int, tz: str = DEFAULT_TZ) -> list[Period]:
    """The standard periods at instant now_ms, as (label, start_ms, end_ms) with end exclusive.

    - "15m": the 15-minute bin that ended last (bins are multiples of 15 min since the Unix epoch);
    - "1h": the last whole hour, UTC-aligned (local too wherever the offset is a whole number of hours);
    - "1d": the last whole local day in tz;
    - "mtd": from the start of the local month holding the last bin, to the end of that bin;
    - "12m": the trailing 12 calendar months (local wall clock) up to the end of the last bin.
    Every boundary is a multiple of 15 minutes, also in timezones offset by 30 or 45 minutes.
    """
    end = now_ms - now_ms % BIN_MS
    hour_end = end - end % HOUR_MS
    local_end = _local(end, tz)
    day_end = local_end.normalize()
    month_start = _local(end - BIN_MS, tz).normalize().replace(day=1)
    periods = [
        ("15m", end - BIN_MS, end),
        ("1h", hour_end - HOUR_MS, hour_end),
        ("1d", _utc_ms(day_end - pd.Timedelta(days=1), tz), _utc_ms(day_end, tz)),
        ("mtd", _utc_ms(month_start, tz), end),
        ("12m", _utc_ms(local_end - pd.DateOffset(months=12), tz), end),
    ]
    for label, start, stop in periods:
        if start % BIN_MS or stop % BIN_MS:
            raise ValueError(f"period {label} in {tz} is not aligned to 15-minute bins ({start}, {stop})")
    return periods


def rollup(
    bins: Iterable[SiteBin],
    periods: Iterable[Period],
    factors: SiteFactors,
    ledger: Mapping[str, tuple[float, float]] | None = None,
) -> list[SiteMetrics]:
    """metrics_for_period for each (label, start_ms, end_ms), picking each period's bins from `bins`.

    ledger maps a period label to its (gec_kwh, traded_kwh); a label it does not name has no instruments.
    """
    all_bins = list(bins)
    results = []
    for label, start_ms, end_ms in periods:
        selected = [b for b in all_bins if start_ms <= b.start_ms < end_ms]
        gec_kwh, traded_kwh = (ledger or {}).get(label, (0.0, 0.0))
        results.append(metrics_for_period(selected, start_ms, end_ms, factors, gec_kwh, traded_kwh, label))
    return results


def _facility_complete(b: SiteBin) -> bool:
    has_input = any(c.role is MeterRole.FACILITY_INPUT for c in b.meter_coverage.values())
    return has_input and _roles_complete(b, FACILITY_ROLES)


def _roles_complete(b: SiteBin, roles: frozenset[MeterRole]) -> bool:
    """At least one meter of these roles is expected and every one of them covered the bin."""
    fractions = [c.fraction for c in b.meter_coverage.values() if c.role in roles]
    return bool(fractions) and min(fractions) >= COMPLETE_COVERAGE


def _it_configured(b: SiteBin, category: PueCategory) -> bool:
    if category is PueCategory.ESTIMATED:
        return b.hosts_expected > 0
    return any(c.role is IT_ROLE[category] for c in b.meter_coverage.values())


def _it_complete(b: SiteBin, category: PueCategory, min_it_coverage: float) -> bool:
    if category is PueCategory.ESTIMATED:
        return b.hosts_expected > 0 and b.host_coverage_sum / b.hosts_expected >= min_it_coverage
    return _roles_complete(b, frozenset({IT_ROLE[category]}))


def _choose_category(facility_bins: Sequence[SiteBin]) -> PueCategory | None:
    """The best category whose IT metering is configured (expected) in every facility-complete bin.

    Chosen by configuration, not by which meters happened to report, so one period never mixes categories
    and a meter outage shows as missing data rather than as a silent change of category.
    """
    if not facility_bins:
        return None
    for category in PueCategory:
        if all(_it_configured(b, category) for b in facility_bins):
            return category
    return None


def _energy(bins: Iterable[SiteBin], role: MeterRole, source: EnergySource | None = None) -> float:
    return math.fsum(
        kwh for b in bins for (r, s), kwh in b.energy_kwh.items() if r == role and (source is None or s == source)
    )


def _it_kwh(bins: Sequence[SiteBin], category: PueCategory) -> float:
    if category is PueCategory.ESTIMATED:
        return math.fsum(b.host_server_input_kwh for b in bins)
    return _energy(bins, IT_ROLE[category])


def _totals(
    bins: Sequence[SiteBin], bins_total: int, gec_kwh: float, traded_kwh: float, factors: SiteFactors
) -> Totals:
    """Energy, green and carbon over `bins`; the period's instruments prorated by bin count (len(bins) / bins_total)."""
    share = len(bins) / bins_total
    grid = _energy(bins, MeterRole.FACILITY_INPUT)
    green_traded = _energy(bins, MeterRole.FACILITY_INPUT, EnergySource.GREEN_TRADED)
    pv = _energy(bins, MeterRole.ONSITE_GENERATION, EnergySource.PV)
    wind = _energy(bins, MeterRole.ONSITE_GENERATION, EnergySource.WIND)
    diesel = _energy(bins, MeterRole.ONSITE_GENERATION, EnergySource.DIESEL)
    instruments = (gec_kwh + traded_kwh) * share
    claimable = max(grid - green_traded, 0.0)  # grid energy not already metered as green
    claimed = min(instruments, claimable)
    diesel_kg = diesel * factors.diesel.value_kg_per_kwh
    return Totals(
        bins=len(bins),
        e_facility_kwh=grid + pv + wind + diesel,
        e_grid_delivered_kwh=grid,
        e_green_traded_kwh=green_traded,
        e_pv_kwh=pv,
        e_wind_kwh=wind,
        e_diesel_kwh=diesel,
        ledger_gec_kwh=gec_kwh * share,
        ledger_traded_kwh=traded_kwh * share,
        green_metered_kwh=pv + wind + green_traded,
        green_kwh=pv + wind + green_traded + claimed,
        green_unclaimed_kwh=instruments - claimed,
        carbon_location_kg=grid * factors.grid.value_kg_per_kwh + diesel_kg,
        carbon_market_kg=(claimable - claimed) * factors.residual.value_kg_per_kwh + diesel_kg,
    )


def _pue(
    facility_bins: Sequence[SiteBin],
    category: PueCategory | None,
    basis: Totals | None,
    e_it: float | None,
    min_it_coverage: float,
) -> tuple[float | None, str]:
    """(pue, "ok") or (None, the reason there is none)."""
    if not facility_bins:
        return None, "no-facility-data"
    if category is None:
        return None, "no-it-data"
    if basis is None or e_it is None:
        return None, _it_coverage_reason(facility_bins, category, min_it_coverage)
    if e_it <= 0.0:
        return None, "no-it-energy"
    pue = basis.e_facility_kwh / e_it
    if pue < 1.0:
        return None, f"pue-below-1 {_floor(pue, 3)}"
    return pue, "ok"


def _cue(pue: float | None, carbon_kg: float | None, e_it: float | None) -> float | None:
    """kgCO2 per IT kWh over the PUE's bins; None whenever the PUE is (for the same reason)."""
    if pue is None or carbon_kg is None or not e_it:
        return None
    return carbon_kg / e_it


def _it_coverage_reason(facility_bins: Sequence[SiteBin], category: PueCategory, min_it_coverage: float) -> str:
    if category is PueCategory.ESTIMATED:
        covered = math.fsum(b.host_coverage_sum for b in facility_bins) / sum(b.hosts_expected for b in facility_bins)
        return f"it-coverage-low {_floor(covered, 2)} < {min_it_coverage:g}"
    return f"meter-coverage-low {IT_ROLE[category]}"


def _green_ratios(facility: Totals | None) -> tuple[float | None, float | None, float | None, str]:
    """(green ratio, metered green ratio, on-site green ratio, status); ratios capped at 1 against rounding."""
    if facility is None:
        return None, None, None, "no-facility-data"
    e_facility = facility.e_facility_kwh
    if e_facility <= 0.0:
        return None, None, None, "no-consumption"
    onsite = facility.e_pv_kwh + facility.e_wind_kwh
    return (
        min(1.0, facility.green_kwh / e_facility),
        min(1.0, facility.green_metered_kwh / e_facility),
        min(1.0, onsite / e_facility),
        "ok",
    )


def _ppue_cooling(complete: Sequence[SiteBin], category: PueCategory | None) -> tuple[float | None, int]:
    """(E_IT + E_cooling) / E_IT over the complete bins whose cooling meters all covered the bin."""
    cooled = [b for b in complete if _roles_complete(b, frozenset({MeterRole.COOLING}))]
    if not cooled or category is None:
        return None, 0
    e_it = _it_kwh(cooled, category)
    if e_it <= 0.0:
        return None, len(cooled)
    return (e_it + _energy(cooled, MeterRole.COOLING)) / e_it, len(cooled)


def _check_period(bins: Sequence[SiteBin], start_ms: int, end_ms: int) -> int:
    """The number of 15-minute bins in the period; raise ValueError on a malformed period or bin list."""
    if start_ms % BIN_MS or end_ms % BIN_MS or end_ms <= start_ms:
        raise ValueError(f"period [{start_ms}, {end_ms}) is empty or not aligned to {BIN_MS} ms bins")
    starts = [b.start_ms for b in bins]
    outside = [s for s in starts if not start_ms <= s < end_ms]
    if outside:
        raise ValueError(f"{len(outside)} bins outside [{start_ms}, {end_ms}), first at {outside[0]}")
    if len(set(starts)) != len(starts):
        raise ValueError("the same bin appears twice: its energy would be counted twice")
    return (end_ms - start_ms) // BIN_MS


def _energy_key(key: tuple[str, str | None], expected_roles: set[MeterRole]) -> EnergyKey:
    """The key as enums, checked: a source that fits the role, and a role with an expected meter."""
    role = MeterRole(key[0])
    source = None if key[1] is None else EnergySource(key[1])
    if role is MeterRole.FACILITY_INPUT and source not in GRID_SOURCES:
        raise ValueError(f"a facility-input meter must have source grid, green-traded or mixed, not {source}")
    if role is MeterRole.ONSITE_GENERATION and source not in GENERATION_SOURCES:
        raise ValueError(f"an onsite-generation meter must have source pv, wind or diesel, not {source}")
    if role not in expected_roles:
        raise ValueError(f"energy reported for role {role} but no meter of that role is expected")
    return role, source


def _check_non_negative(name: str, value: float) -> None:
    if not (math.isfinite(value) and value >= 0.0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def _check_utilisation(name: str, weighted_sum: float, weight: float) -> None:
    _check_non_negative(f"{name}_util_weighted_sum", weighted_sum)
    _check_non_negative(f"{name}_util_weight", weight)
    if weighted_sum > weight * (1.0 + 1e-9):
        raise ValueError(f"{name} utilisation {weighted_sum} / {weight} is above 1")


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator else None


def _floor(value: float, digits: int) -> str:
    """value rounded down to `digits` decimals, so a figure shown beside a threshold is never rounded up to it."""
    return str(Decimal(repr(value)).quantize(Decimal(1).scaleb(-digits), rounding=ROUND_FLOOR))


def _local(ms: int, tz: str) -> pd.Timestamp:
    """Local wall-clock time (naive) of a UTC epoch-ms instant."""
    return pd.Timestamp(ms, unit="ms", tz="UTC").tz_convert(tz).tz_localize(None)


def _utc_ms(local: pd.Timestamp, tz: str) -> int:
    """UTC epoch ms of a local wall-clock time; a time skipped by DST moves forward, a repeated one is the first."""
    instant = local.tz_localize(tz, ambiguous=True, nonexistent="shift_forward")
    return instant.value // 1_000_000
