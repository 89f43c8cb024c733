"""The site model: sites, rooms, racks and expected hosts, the facility meters, and the site's carbon settings.

Loaded from YAML (format in docs/site-config.md, example in collector/site.example.yaml). Every error names the
file and the field path (sites[0].meters[2].role). SiteIndex turns a loaded config into the tuple-keyed dicts
the collector consults for every message.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any
from zoneinfo import ZoneInfo

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, ValidationInfo
from pydantic import field_validator, model_validator
from pydantic_core import PydanticCustomError

from collector.factors import FactorError, FactorTable, GridRegion, default_factors, grid_factor
from common.config import check_timezone
from common.contract import EnergySource, MeterRole, check_level

FACILITY_ROOM = "facility"
FACILITY_RACK = "main"
DEFAULT_TIMEZONE = "Asia/Shanghai"
CROSS_FIELD_ERROR = "site_config"

SOURCES_FOR_ROLE = {
    MeterRole.ONSITE_GENERATION: (EnergySource.PV, EnergySource.WIND, EnergySource.DIESEL),
    MeterRole.FACILITY_INPUT: (EnergySource.GRID, EnergySource.GREEN_TRADED, EnergySource.MIXED),
}

Key = tuple[str, str, str, str]


class SiteConfigError(ValueError):
    """A site configuration that cannot be used; one line per problem: file, field path, why."""


def _topic_level(value: str) -> str:
    return check_level("id", value)


TopicLevel = Annotated[str, AfterValidator(_topic_level)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Rack(_Section):
    """A rack and the hosts (agent device levels) expected to report from it."""

    id: TopicLevel
    hosts: tuple[TopicLevel, ...] = ()


class Room(_Section):
    """A room (hall) and its racks."""

    id: TopicLevel
    racks: tuple[Rack, ...] = ()


class Meter(_Section):
    """A facility meter: the topic levels its gateway publishes under, and what its energy counts towards."""

    id: TopicLevel
    room: TopicLevel = FACILITY_ROOM
    rack: TopicLevel = FACILITY_RACK
    role: MeterRole
    source: EnergySource | None = None
    feeds: tuple[TopicLevel, ...] = ()


class Site(_Section):
    """One data centre: its layout, meters, time zone and carbon settings (fields in docs/site-config.md)."""

    id: TopicLevel
    name: str = Field(min_length=1, max_length=200)
    timezone: str = DEFAULT_TIMEZONE
    grid_region: GridRegion
    grid_factor_year: int | None = Field(default=None, ge=2000, le=2100)
    diesel_factor_kg_per_kwh: float | None = Field(default=None, gt=0, lt=3)
    certificates: Path | None = None
    min_it_coverage: float = Field(default=0.98, gt=0, le=1)
    require_facility_meter: bool = False
    rules: tuple[str, ...] = Field(default=(), description="rule profiles (rules/*.yaml `profile`) to evaluate")
    rooms: tuple[Room, ...] = ()
    meters: tuple[Meter, ...] = ()

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        return check_timezone(value)

    @field_validator("certificates")
    @classmethod
    def _relative_to_config_file(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        base_dir = (info.context or {}).get("base_dir")
        if value is None or value.is_absolute() or base_dir is None:
            return value
        return Path(base_dir) / value

    @property
    def zone(self) -> ZoneInfo:
        """The site's time zone, which sets its day and month boundaries."""
        return ZoneInfo(self.timezone)


class SiteConfig(_Section):
    """All sites one collector accounts for. Cross-field rules are checked after the fields themselves."""

    sites: list[Site] = Field(min_length=1)

    @model_validator(mode="after")
    def _cross_field_rules(self, info: ValidationInfo) -> SiteConfig:
        factors = (info.context or {}).get("factors")
        factors = factors if factors is not None else default_factors()
        problems = list(_problems(self, factors))
        if problems:
            raise PydanticCustomError(CROSS_FIELD_ERROR, "{problems}", {"problems": "\n".join(problems)})
        return self


STREAM_SEPARATOR = "\x1f"  # between the parts of a stream key; a topic level never holds it


def stream_key(*parts: str) -> str:
    """The key of a device's energy counter in the collector's book and state: its kind and identity, joined.
    A string, whose hash Python keeps, because the collector looks streams up several times per message."""
    return STREAM_SEPARATOR.join(parts)


@dataclass(frozen=True, slots=True)
class HostInfo:
    """An expected host, identified by its topic levels."""

    site: str
    room: str
    rack: str
    device: str
    # the key of its energy counter in the collector's book and state: "host", site, room, rack, device
    stream: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "stream", stream_key("host", self.site, self.room, self.rack, self.device))


@dataclass(frozen=True, slots=True)
class MeterInfo:
    """An expected meter, identified by its topic levels, with what its energy counts towards."""

    site: str
    room: str
    rack: str
    device: str
    role: MeterRole
    source: EnergySource | None
    feeds: tuple[str, ...]
    # the key of its energy counter in the collector's book and state: "meter", site, device
    stream: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "stream", stream_key("meter", self.site, self.device))


class SiteIndex:
    """Lookups by topic identity over a loaded config: one dict lookup on a tuple per call."""

    __slots__ = ("_sites", "_hosts", "_meters", "_hosts_under", "_meters_of")

    def __init__(self, config: SiteConfig):
        self._sites = {site.id: site for site in config.sites}
        self._hosts: dict[Key, HostInfo] = {}
        self._hosts_under: dict[tuple[str, ...], list[HostInfo]] = {}
        for host in _hosts_of(config):
            self._hosts[(host.site, host.room, host.rack, host.device)] = host
            for scope in ((host.site,), (host.site, host.room), (host.site, host.room, host.rack)):
                self._hosts_under.setdefault(scope, []).append(host)
        self._meters = {(m.site, m.room, m.rack, m.device): m for m in _meters_of(config)}
        self._meters_of: dict[str, list[MeterInfo]] = {}
        for meter in self._meters.values():
            self._meters_of.setdefault(meter.site, []).append(meter)

    def host(self, site: str, room: str, rack: str, device: str) -> HostInfo | None:
        """The expected host at these topic levels, or None."""
        return self._hosts.get((site, room, rack, device))

    def meter(self, site: str, room: str, rack: str, device: str) -> MeterInfo | None:
        """The expected meter at these topic levels, or None."""
        return self._meters.get((site, room, rack, device))

    @property
    def sites(self) -> tuple[Site, ...]:
        return tuple(self._sites.values())

    def site(self, site_id: str) -> Site | None:
        """A site's configuration, or None."""
        return self._sites.get(site_id)

    def expected_hosts(self, site: str, room: str | None = None, rack: str | None = None) -> tuple[HostInfo, ...]:
        """The hosts expected in a site, a room of it or a rack of that room (empty when unknown)."""
        if rack is not None and room is None:
            raise ValueError("a rack is named within a room: give room too")
        scope = tuple(level for level in (site, room, rack) if level is not None)
        return tuple(self._hosts_under.get(scope, ()))

    def expected_meters(self, site: str) -> tuple[MeterInfo, ...]:
        """The meters expected in a site (empty when unknown)."""
        return tuple(self._meters_of.get(site, ()))


def load_site_config(path: Path, factors: FactorTable | None = None) -> SiteConfig:
    """Read and validate a site config; certificates paths become relative to the file's directory.

    Each site's grid region and factor year are checked against `factors` (the shipped table by default).
    Raises SiteConfigError naming the file, the field path and why.
    """
    path = Path(path)
    data = read_yaml(path, SiteConfigError)
    try:
        return SiteConfig.model_validate(data, context={"base_dir": path.parent, "factors": factors})
    except ValidationError as exc:
        raise SiteConfigError(describe_errors(exc, path)) from None


def read_yaml(path: Path, error: type[ValueError]) -> dict[str, Any]:
    """A YAML file's top-level mapping; a missing file, bad YAML or a repeated key raises `error`."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise error(f"{path}: cannot read: {exc.strerror}") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        raise error(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise error(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def describe_errors(exc: ValidationError, path: Path) -> str:
    """One line per problem: 'file: field.path[2].name: why (got value)'."""
    lines = []
    for error in exc.errors():
        if error["type"] == CROSS_FIELD_ERROR:
            lines += [f"{path}: {problem}" for problem in error["ctx"]["problems"].split("\n")]
            continue
        why = error["msg"].removeprefix("Value error, ")
        got = "" if error["type"] in ("missing", "value_error") else f" (got {_short(error['input'])})"
        lines.append(f"{path}: {field_path(error['loc'])}: {why}{got}")
    return "\n".join(lines)


def field_path(loc: Iterable[int | str]) -> str:
    """('sites', 0, 'meters', 2, 'role') -> 'sites[0].meters[2].role'."""
    text = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc).lstrip(".")
    return text or "(top level)"


def find_duplicates(places: Iterable[tuple[str, str]], what: str) -> Iterator[str]:
    """For (where, value) pairs, one problem per repeated value naming both places."""
    first_seen: dict[str, str] = {}
    for where, value in places:
        if value in first_seen:
            yield f"{where}: {what} {value!r} is also at {first_seen[value]}"
        else:
            first_seen[value] = where


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key repeated in one mapping instead of keeping the last value."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                key = self.construct_object(key_node)
                if key in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"repeated key {key!r}", key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep)


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _problems(config: SiteConfig, factors: FactorTable) -> Iterator[str]:
    yield from find_duplicates(((f"sites[{i}].id", site.id) for i, site in enumerate(config.sites)), "site id")
    for i, site in enumerate(config.sites):
        yield from _site_problems(site, f"sites[{i}]", factors)


def _site_problems(site: Site, at: str, factors: FactorTable) -> Iterator[str]:
    yield from find_duplicates(((f"{at}.rooms[{j}].id", room.id) for j, room in enumerate(site.rooms)), "room id")
    for j, room in enumerate(site.rooms):
        racks = ((f"{at}.rooms[{j}].racks[{k}].id", rack.id) for k, rack in enumerate(room.racks))
        yield from find_duplicates(racks, "rack id")
    yield from find_duplicates(_device_places(site, at), "device id")
    room_ids = [room.id for room in site.rooms]
    for n, meter in enumerate(site.meters):
        yield from _meter_problems(meter, f"{at}.meters[{n}]", room_ids)
    if site.require_facility_meter and not any(meter.role is MeterRole.FACILITY_INPUT for meter in site.meters):
        yield (f"{at}.meters: require_facility_meter is true but no meter has role facility-input; the PUE needs "
               "the energy entering the site (on-site generation alone is not enough, see docs/metrics.md)")
    try:
        grid_factor(site.grid_region, site.grid_factor_year, factors)
    except FactorError as exc:
        yield f"{at}.{'grid_region' if site.grid_factor_year is None else 'grid_factor_year'}: {exc}"


def _device_places(site: Site, at: str) -> Iterator[tuple[str, str]]:
    for j, room in enumerate(site.rooms):
        for k, rack in enumerate(room.racks):
            for m, host in enumerate(rack.hosts):
                yield f"{at}.rooms[{j}].racks[{k}].hosts[{m}]", host
    for n, meter in enumerate(site.meters):
        yield f"{at}.meters[{n}].id", meter.id


def _meter_problems(meter: Meter, at: str, room_ids: list[str]) -> Iterator[str]:
    if meter.room != FACILITY_ROOM and meter.room not in room_ids:
        yield f"{at}.room: {meter.room!r} is neither {FACILITY_ROOM!r} nor a room of this site ({_listing(room_ids)})"
    for f, fed in enumerate(meter.feeds):
        if fed not in room_ids:
            yield f"{at}.feeds[{f}]: {fed!r} is not a room of this site ({_listing(room_ids)})"
    yield from find_duplicates(((f"{at}.feeds[{f}]", fed) for f, fed in enumerate(meter.feeds)), "room")
    yield from _role_source_problems(meter, at)


def _role_source_problems(meter: Meter, at: str) -> Iterator[str]:
    allowed = SOURCES_FOR_ROLE.get(meter.role)
    if allowed is not None and meter.source not in allowed:
        names = ", ".join(allowed[:-1]) + f" or {allowed[-1]}"
        yield f"{at}.source: role {meter.role} needs source {names} (got {meter.source})"


def _listing(values: list[str]) -> str:
    return ", ".join(values) or "none declared"


def _hosts_of(config: SiteConfig) -> Iterator[HostInfo]:
    for site in config.sites:
        for room in site.rooms:
            for rack in room.racks:
                for host in rack.hosts:
                    yield HostInfo(site.id, room.id, rack.id, host)


def _meters_of(config: SiteConfig) -> Iterator[MeterInfo]:
    for site in config.sites:
        for meter in site.meters:
            yield MeterInfo(site.id, meter.room, meter.rack, meter.id, meter.role, meter.source, meter.feeds)
