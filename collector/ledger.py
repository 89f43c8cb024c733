"""Green instruments no meter sees: green electricity certificates (GEC) and green-power trading, per site.

A ledger file (format in docs/site-config.md, example in collector/ledger.example.yaml) lists what was claimed for
which consumption period. Loading refuses a certificate claimed twice, in one file or across the files of
different sites, and a trading contract claimed twice for overlapping periods. green_instruments_kwh() gives the
kWh claimed for a reporting period; capping green energy at the facility energy is the metrics code's job.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal, NamedTuple
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from collector.site import SiteConfig, TopicLevel, describe_errors, read_yaml

KWH_PER_CERTIFICATE = 1000
DIGITS = "0123456789"

CertificateId = Annotated[str, Field(pattern=r"^\S{1,128}$")]


class LedgerError(ValueError):
    """A ledger that cannot be used; the message names the file, the entry and why."""


class InstrumentKind(StrEnum):
    """The kinds of green instrument a ledger entry can hold."""

    GEC = "gec"
    GREEN_TRADING = "green-trading"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Period(_Section):
    """Consumption period [start, end) in whole days of the site's time zone."""

    start: date
    end: date

    @model_validator(mode="after")
    def _not_empty(self) -> Period:
        if self.end <= self.start:
            raise ValueError(f"end {self.end} must be after start {self.start} (the period is [start, end))")
        return self


class IdRange(_Section):
    """Consecutive certificate numbers: prefix + number zero-padded to `digits`, first..last inclusive."""

    prefix: str = Field(default="", pattern=r"^\S{0,96}$")
    first: int = Field(ge=0)
    last: int = Field(ge=0)
    digits: int = Field(ge=1, le=30)

    @model_validator(mode="after")
    def _ordered_and_fitting(self) -> IdRange:
        if self.last < self.first:
            raise ValueError(f"last {self.last} is before first {self.first}")
        if len(str(self.last)) > self.digits:
            raise ValueError(f"last {self.last} has more than {self.digits} digits")
        return self

    def identifier(self, number: int) -> str:
        return f"{self.prefix}{number:0{self.digits}d}"


class GecEntry(_Section):
    """Green electricity certificates claimed for a period; 1 certificate = 1,000 kWh."""

    kind: Literal["gec"]
    ids: list[CertificateId] | None = Field(default=None, min_length=1)
    id_range: IdRange | None = None
    kwh: float | None = Field(default=None, gt=0, description="optional cross-check: must be certificates x 1000")
    period: Period

    @model_validator(mode="after")
    def _one_way_of_listing_and_matching_kwh(self) -> GecEntry:
        if (self.ids is None) == (self.id_range is None):
            raise ValueError("give either ids or id_range")
        repeated = sorted(identifier for identifier, count in Counter(self.ids or ()).items() if count > 1)
        if repeated:
            raise ValueError(f"ids lists {', '.join(repeated)} more than once")
        if self.kwh is not None and self.kwh != self.certificate_count * KWH_PER_CERTIFICATE:
            raise ValueError(
                f"kwh {self.kwh:g} is not {self.certificate_count} certificates x {KWH_PER_CERTIFICATE} kWh"
            )
        return self

    @property
    def certificate_count(self) -> int:
        if self.ids is not None:
            return len(self.ids)
        return self.id_range.last - self.id_range.first + 1


class TradingEntry(_Section):
    """A green-power trading contract's energy settled for a period."""

    kind: Literal["green-trading"]
    contract: str = Field(min_length=1, max_length=128)
    kwh: float = Field(gt=0)
    period: Period


Entry = Annotated[GecEntry | TradingEntry, Field(discriminator="kind")]


class LedgerFile(_Section):
    """The YAML file as written: the site it belongs to and its entries."""

    site: TopicLevel
    entries: tuple[Entry, ...] = ()


@dataclass(frozen=True, slots=True)
class Claim:
    """kWh claimed for [start, end), time-zone aware; `entry` is its index in the file."""

    kind: InstrumentKind
    kwh: float
    start: datetime
    end: datetime
    entry: int


@dataclass(frozen=True)
class Ledger:
    """One site's loaded ledger: every entry as a claim with time-zone aware bounds."""

    site: str
    timezone: str
    path: Path
    claims: tuple[Claim, ...]


class GreenInstruments(NamedTuple):
    """kWh claimed for a reporting period, by instrument, before any cap at the facility energy."""

    gec_kwh: float
    traded_kwh: float


def load_ledger(path: Path, timezone: str) -> Ledger:
    """Read one site's ledger, dates taken as midnight in `timezone`; raise LedgerError on any problem."""
    parsed = _read(Path(path))
    _refuse_double_claims([(Path(path), parsed)])
    return _ledger(Path(path), parsed, timezone)


def load_ledgers(paths: Iterable[Path], timezones: Mapping[str, str]) -> dict[str, Ledger]:
    """Read the ledgers of several sites (one file per site), checking claims across all of them.

    `timezones` maps each known site id to its time zone; a ledger for any other site is refused.
    """
    files = [(Path(path), _read(Path(path))) for path in paths]
    _refuse_unknown_or_repeated_sites(files, timezones)
    _refuse_double_claims(files)
    return {parsed.site: _ledger(path, parsed, timezones[parsed.site]) for path, parsed in files}


def load_site_ledgers(config: SiteConfig) -> dict[str, Ledger]:
    """The ledgers named by the sites' `certificates` fields, each checked to be for the site naming it."""
    named = [(site.certificates, site.id) for site in config.sites if site.certificates is not None]
    paths = dict.fromkeys(path for path, _ in named)
    ledgers = load_ledgers(paths, {site.id: site.timezone for site in config.sites})
    site_in_file = {ledger.path: ledger.site for ledger in ledgers.values()}
    for path, site_id in named:
        if site_in_file[path] != site_id:
            raise LedgerError(f"{path}: site: {site_in_file[path]!r}, but it is the certificates file of {site_id!r}")
    return ledgers


def green_instruments_kwh(ledger: Ledger, period_start: datetime, period_end: datetime) -> GreenInstruments:
    """kWh of certificates and of traded green power claimed for [period_start, period_end).

    An entry whose consumption period only partly overlaps the reporting period counts in proportion to the
    overlapping time (kWh spread evenly over the entry's period). The result may exceed the facility energy of
    the period; the metrics code caps green energy at E_facility.
    """
    if period_start.tzinfo is None or period_end.tzinfo is None:
        raise ValueError("period_start and period_end must be time-zone aware")
    if period_end <= period_start:
        raise ValueError(f"period end {period_end} must be after start {period_start}")
    totals = {InstrumentKind.GEC: 0.0, InstrumentKind.GREEN_TRADING: 0.0}
    for claim in ledger.claims:
        totals[claim.kind] += claim.kwh * _overlap_fraction(claim, period_start, period_end)
    return GreenInstruments(totals[InstrumentKind.GEC], totals[InstrumentKind.GREEN_TRADING])


def _overlap_fraction(claim: Claim, start: datetime, end: datetime) -> float:
    overlap = min(end.timestamp(), claim.end.timestamp()) - max(start.timestamp(), claim.start.timestamp())
    return max(overlap, 0.0) / (claim.end.timestamp() - claim.start.timestamp())


def _read(path: Path) -> LedgerFile:
    data = read_yaml(path, LedgerError)
    try:
        return LedgerFile.model_validate(data)
    except ValidationError as exc:
        raise LedgerError(describe_errors(exc, path)) from None


def _ledger(path: Path, parsed: LedgerFile, timezone: str) -> Ledger:
    zone = ZoneInfo(timezone)
    claims = tuple(
        Claim(InstrumentKind(entry.kind), _entry_kwh(entry), _midnight(entry.period.start, zone),
              _midnight(entry.period.end, zone), index)
        for index, entry in enumerate(parsed.entries)
    )
    return Ledger(site=parsed.site, timezone=timezone, path=path, claims=claims)


def _entry_kwh(entry: GecEntry | TradingEntry) -> float:
    if isinstance(entry, GecEntry):
        return float(entry.certificate_count * KWH_PER_CERTIFICATE)
    return entry.kwh


def _midnight(day: date, zone: ZoneInfo) -> datetime:
    return datetime.combine(day, time(), tzinfo=zone)


def _refuse_unknown_or_repeated_sites(files: list[tuple[Path, LedgerFile]], timezones: Mapping[str, str]) -> None:
    first_file: dict[str, Path] = {}
    for path, parsed in files:
        if parsed.site not in timezones:
            raise LedgerError(f"{path}: site: {parsed.site!r} is not a configured site ({', '.join(timezones)})")
        if parsed.site in first_file:
            raise LedgerError(f"{path}: site: {parsed.site!r} already has a ledger, {first_file[parsed.site]}")
        first_file[parsed.site] = path


def _refuse_double_claims(files: list[tuple[Path, LedgerFile]]) -> None:
    problems = list(dict.fromkeys([*_double_certificates(files), *_double_contracts(files)]))
    if problems:
        raise LedgerError("\n".join(problems))


def _double_certificates(files: list[tuple[Path, LedgerFile]]) -> Iterator[str]:
    """Overlaps between certificate runs, found by a sweep over (stem, width, number) intervals.

    Every identifier maps to one (stem, width, number) triple, so a range of a million certificates is one
    interval rather than a million strings.
    """
    runs: dict[tuple[str, int], list[tuple[int, int, str]]] = {}
    for place, stem, width, low, high in _certificate_runs(files):
        runs.setdefault((stem, width), []).append((low, high, place))
    for (stem, width), intervals in runs.items():
        intervals.sort()
        reach, reach_place = intervals[0][1], intervals[0][2]
        for low, high, place in intervals[1:]:
            if low <= reach:
                yield f"{place}: certificate {_identifier(stem, width, low)} is also claimed in {reach_place}"
            if high > reach:
                reach, reach_place = high, place


def _certificate_runs(files: list[tuple[Path, LedgerFile]]) -> Iterator[tuple[str, str, int, int, int]]:
    for path, parsed in files:
        for index, entry in enumerate(parsed.entries):
            if not isinstance(entry, GecEntry):
                continue
            place = f"{path} entries[{index}]"
            if entry.id_range is not None:
                stem, width, offset = _split_number(entry.id_range.prefix)
                scale = 10 ** entry.id_range.digits
                yield (place, stem, width + entry.id_range.digits,
                       offset * scale + entry.id_range.first, offset * scale + entry.id_range.last)
            for identifier in entry.ids or ():
                stem, width, number = _split_number(identifier)
                yield place, stem, width, number, number


def _split_number(identifier: str) -> tuple[str, int, int]:
    """'GEC-2026-000042' -> ('GEC-2026-', 6, 42): the text before the trailing digits, their count, their value."""
    stem = identifier.rstrip(DIGITS)
    width = len(identifier) - len(stem)
    return stem, width, int(identifier[len(stem):] or 0)


def _identifier(stem: str, width: int, number: int) -> str:
    return f"{stem}{number:0{width}d}" if width else stem


def _double_contracts(files: list[tuple[Path, LedgerFile]]) -> Iterator[str]:
    seen: dict[str, list[tuple[Period, str]]] = {}
    for path, parsed in files:
        for index, entry in enumerate(parsed.entries):
            if not isinstance(entry, TradingEntry):
                continue
            place = f"{path} entries[{index}]"
            for period, other_place in seen.get(entry.contract, ()):
                if entry.period.start < period.end and period.start < entry.period.end:
                    yield (f"{place}: contract {entry.contract!r} is also claimed for an overlapping period"
                           f" in {other_place}")
            seen.setdefault(entry.contract, []).append((entry.period, place))
