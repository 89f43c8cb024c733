"""Carbon emission factors (kgCO2/kWh) as data: grid averages by region and year, the national residual, diesel.

The figures and the documents they come from live in collector/data/emission_factors.yaml (docs/site-config.md).
Lookups are pure functions over a loaded FactorTable. Nothing falls back silently: a region without a figure
for a year is an error, and a site that wants the national figure says `grid_region: national`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

DEFAULT_FACTORS_PATH = Path(__file__).parent / "data" / "emission_factors.yaml"
MJ_PER_KWH = 3.6
DIESEL_DERIVATION_TOLERANCE = 0.001


class GridRegion(StrEnum):
    """The regional grids the Ministry of Ecology and Environment publishes factors for, and the national grid."""

    NATIONAL = "national"
    NORTH = "north"  # 华北
    NORTHEAST = "northeast"  # 东北
    EAST = "east"  # 华东
    CENTRAL = "central"  # 华中
    NORTHWEST = "northwest"  # 西北
    SOUTH = "south"  # 南方
    SOUTHWEST = "southwest"  # 西南


FactorKind = Literal["location", "residual", "assumption"]


@dataclass(frozen=True, slots=True)
class Factor:
    """One emission factor with where it comes from. year is None for an assumption that has no year."""

    value_kg_per_kwh: float
    region: str
    year: int | None
    kind: FactorKind
    source: str


class FactorError(ValueError):
    """A factors file that cannot be used, or a lookup for a factor that does not exist."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class _Document(_Strict):
    citation: str = Field(min_length=1)
    note: str = ""


class _Row(_Strict):
    region: GridRegion
    year: int = Field(ge=2000, le=2100)
    kind: Literal["location", "residual"]
    kg_per_kwh: float = Field(gt=0, lt=2)
    document: str


class _Diesel(_Strict):
    fuel_kg_co2_per_gj: float = Field(gt=0)
    generator_efficiency: float = Field(gt=0, le=1)
    kg_per_kwh: float = Field(gt=0, lt=3)
    document: str

    @model_validator(mode="after")
    def _value_follows_from_its_derivation(self) -> _Diesel:
        derived = self.fuel_kg_co2_per_gj * MJ_PER_KWH / 1000 / self.generator_efficiency
        if abs(derived - self.kg_per_kwh) > DIESEL_DERIVATION_TOLERANCE:
            raise ValueError(f"kg_per_kwh {self.kg_per_kwh} does not match fuel factor / efficiency = {derived:.4f}")
        return self


class _FactorsFile(_Strict):
    documents: dict[str, _Document]
    factors: list[_Row] = Field(min_length=1)
    diesel: _Diesel

    @model_validator(mode="after")
    def _consistent(self) -> _FactorsFile:
        seen: set[tuple[str, int, str]] = set()
        for index, row in enumerate(self.factors):
            key = (row.region, row.year, row.kind)
            if key in seen:
                raise ValueError(f"factors[{index}]: a second {row.kind} factor for {row.region} {row.year}")
            if row.kind == "residual" and row.region != GridRegion.NATIONAL:
                raise ValueError(f"factors[{index}]: a residual factor is published for the nation only")
            seen.add(key)
        references = [(f"factors[{index}]", row.document) for index, row in enumerate(self.factors)]
        references.append(("diesel", self.diesel.document))
        for where, document in references:
            if document not in self.documents:
                raise ValueError(f"{where}: document {document!r} is not listed under documents")
        return self


@dataclass(frozen=True)
class FactorTable:
    """Loaded factors: location-based by (region, year), national residual by year, and the diesel default."""

    location: Mapping[tuple[GridRegion, int], Factor]
    residual: Mapping[int, Factor]
    diesel: Factor


def load_factors(path: Path = DEFAULT_FACTORS_PATH) -> FactorTable:
    """Read and validate a factors file; raise FactorError naming the file and what is wrong."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        parsed = _FactorsFile.model_validate(data)
    except (OSError, yaml.YAMLError, ValidationError) as exc:
        raise FactorError(f"emission factors file {path}: {exc}") from None
    return _table(parsed)


@cache
def default_factors() -> FactorTable:
    """The factors shipped with the product (collector/data/emission_factors.yaml), loaded once."""
    return load_factors(DEFAULT_FACTORS_PATH)


def grid_factor(region: GridRegion | str, year: int | None = None, table: FactorTable | None = None) -> Factor:
    """The location-based grid factor of a region for a year; the region's latest year when year is None."""
    table = table if table is not None else default_factors()
    region = _region(region)
    years = sorted(year for known_region, year in table.location if known_region == region)
    if not years:
        known = ", ".join(sorted({str(known_region) for known_region, _ in table.location}))
        raise FactorError(f"no grid emission factor for region {region}; the table has {known}")
    chosen = years[-1] if year is None else year
    if chosen not in years:
        raise FactorError(_missing_year_message(region, chosen, years, table))
    return table.location[(region, chosen)]


def residual_factor(year: int | None = None, table: FactorTable | None = None) -> Factor:
    """The national residual factor (grid average without market-traded non-fossil kWh); latest year when None.

    No regional residual is published, so market-based CUE uses the national figure for every region.
    """
    table = table if table is not None else default_factors()
    years = sorted(table.residual)
    chosen = years[-1] if year is None else year
    if chosen not in table.residual:
        raise FactorError(f"no national residual factor for {chosen}; the table has {_listing(years)}")
    return table.residual[chosen]


def diesel_factor(site_kg_per_kwh: float | None = None, table: FactorTable | None = None) -> Factor:
    """The factor for on-site diesel generation: the site's own figure when it has one, else the default."""
    default = (table if table is not None else default_factors()).diesel
    if site_kg_per_kwh is None:
        return default
    return Factor(site_kg_per_kwh, "on-site", None, "assumption", "site configuration (diesel_factor_kg_per_kwh)")


def _region(region: GridRegion | str) -> GridRegion:
    try:
        return GridRegion(region)
    except ValueError:
        raise FactorError(f"unknown grid region {region!r}; regions are {_listing(list(GridRegion))}") from None


def _missing_year_message(region: GridRegion, year: int, years: list[int], table: FactorTable) -> str:
    message = f"no grid emission factor for {region} in {year}; {region} has {_listing(years)}"
    if region != GridRegion.NATIONAL and (GridRegion.NATIONAL, year) in table.location:
        message += f" (a national figure exists for {year}: set grid_region: national to use it)"
    return message


def _listing(values: list) -> str:
    return ", ".join(str(value) for value in values)


def _table(parsed: _FactorsFile) -> FactorTable:
    location, residual = {}, {}
    for row in parsed.factors:
        factor = Factor(row.kg_per_kwh, str(row.region), row.year, row.kind, parsed.documents[row.document].citation)
        if row.kind == "location":
            location[(row.region, row.year)] = factor
        else:
            residual[row.year] = factor
    diesel_source = parsed.documents[parsed.diesel.document].citation
    diesel = Factor(parsed.diesel.kg_per_kwh, "on-site", None, "assumption", diesel_source)
    return FactorTable(location=location, residual=residual, diesel=diesel)
