"""The scenario file: a site's layout, load, weather, cooling, UPS, PV, green feeder and diesel (YAML, validated).

Errors name the file and the field path (rooms[1].load_profile). Simulated time starts at `start` (local
wall-clock time in the site's time zone) or, when it is left out, at (now - duration) rounded down to a
15-minute boundary: `start_ms` takes `now_ms` as a parameter, so nothing here reads the clock.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated, Literal
from zoneinfo import ZoneInfo

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from collector.accounting import BIN_MS
from collector.factors import GridRegion
from collector.site import describe_errors, read_yaml
from common.config import check_timezone
from common.contract import check_level

BIN_S = BIN_MS // 1000


class ScenarioError(ValueError):
    """A scenario that cannot be simulated; one line per problem: file, field path, why."""


TopicLevel = Annotated[str, AfterValidator(lambda value: check_level("id", value))]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class HostProfile(_Section):
    """A server model: input power from idle to peak with CPU utilisation, plus its GPUs."""

    idle_w: float = Field(gt=0)
    peak_w: float = Field(gt=0)
    gpus: int = Field(default=0, ge=0, le=16)
    gpu_idle_w: float = Field(default=0.0, ge=0)
    gpu_peak_w: float = Field(default=0.0, ge=0)
    logical_cpus: int = Field(default=64, ge=1)
    mem_total_gb: float = Field(default=256.0, gt=0)

    @model_validator(mode="after")
    def _peak_above_idle(self) -> HostProfile:
        if self.peak_w < self.idle_w or self.gpu_peak_w < self.gpu_idle_w:
            raise ValueError("peak_w and gpu_peak_w must not be below idle_w and gpu_idle_w")
        return self


class _Load(_Section):
    cpu_idle: float = Field(ge=0, le=1)
    cpu_busy: float = Field(ge=0, le=1)
    gpu_idle: float = Field(default=0.0, ge=0, le=1)
    gpu_busy: float = Field(default=0.0, ge=0, le=1)


class TrainingLoad(_Load):
    """Busy from job_start_h to job_stop_h hours after the scenario start, idle otherwise."""

    kind: Literal["training"]
    job_start_h: float = Field(default=0.0, ge=0)
    job_stop_h: float | None = Field(default=None, gt=0, description="None: the job never stops")


class OfficeLoad(_Load):
    """Busy as a half sine between day_start_h and day_end_h local time, idle at night."""

    kind: Literal["office"]
    day_start_h: float = Field(ge=0, lt=24)
    day_end_h: float = Field(gt=0, le=24)

    @model_validator(mode="after")
    def _day_in_order(self) -> OfficeLoad:
        if self.day_end_h <= self.day_start_h:
            raise ValueError("day_end_h must be after day_start_h")
        return self


LoadProfile = Annotated[TrainingLoad | OfficeLoad, Field(discriminator="kind")]


class Room(_Section):
    """A room of identical racks, each holding hosts_per_rack hosts of one host profile and load profile."""

    id: TopicLevel
    racks: int = Field(ge=1, le=100)
    hosts_per_rack: int = Field(ge=1, le=100)
    host_profile: str
    load_profile: str


class Weather(_Section):
    """Outdoor temperature: a daily cosine peaking at warmest_h local time."""

    mean_c: float = Field(ge=-40, le=50)
    amplitude_c: float = Field(default=0.0, ge=0, le=30)
    warmest_h: float = Field(default=15.0, ge=0, lt=24)


class Cooling(_Section):
    """cooling power = IT power x (a + b x max(0, outdoor - t0_c))."""

    a: float = Field(ge=0, le=3)
    b: float = Field(default=0.0, ge=0, le=1)
    t0_c: float = 18.0


class Ups(_Section):
    """UPS losses = fixed_w + k x IT power."""

    fixed_w: float = Field(default=0.0, ge=0)
    k: float = Field(default=0.0, ge=0, lt=1)


class Pv(_Section):
    """PV output = peak_kw x sin(pi x (h - sunrise_h) / (sunset_h - sunrise_h)) between sunrise and sunset."""

    peak_kw: float = Field(gt=0)
    sunrise_h: float = Field(ge=0, lt=24)
    sunset_h: float = Field(gt=0, le=24)

    @model_validator(mode="after")
    def _sun_in_order(self) -> Pv:
        if self.sunset_h <= self.sunrise_h:
            raise ValueError("sunset_h must be after sunrise_h")
        return self


class DieselRun(_Section):
    """A generator test: kw delivered from at_h hours after the scenario start, for duration_min minutes."""

    at_h: float = Field(ge=0)
    duration_min: float = Field(gt=0)
    kw: float = Field(gt=0)


class Diesel(_Section):
    runs: tuple[DieselRun, ...] = ()


class Scenario(_Section):
    """A simulated site (the format is described in simulator/README.md)."""

    site: TopicLevel
    name: str = "Simulated site"
    timezone: str = "Asia/Shanghai"
    grid_region: GridRegion
    grid_year: int | None = Field(default=None, ge=2000, le=2100)
    seed: int = 0
    host_jitter: float = Field(default=0.0, ge=0, lt=1, description="per-host load scale drawn from 1 +- jitter")
    start: datetime | None = Field(default=None, description="local wall-clock time; None: now - duration")
    duration_h: float = Field(gt=0, le=8 * 24)
    step_s: int = Field(gt=0, le=BIN_S)
    host_profiles: dict[str, HostProfile] = Field(min_length=1)
    load_profiles: dict[str, LoadProfile] = Field(min_length=1)
    rooms: tuple[Room, ...] = Field(min_length=1)
    weather: Weather
    cooling: Cooling
    ups: Ups = Ups()
    pv: Pv | None = None
    green_feeder_kw: float = Field(default=0.0, ge=0)
    diesel: Diesel | None = None

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        return check_timezone(value)

    @field_validator("step_s")
    @classmethod
    def _divides_a_bin(cls, value: int) -> int:
        if BIN_S % value:
            raise ValueError(f"step_s must divide {BIN_S} s so every 15-minute boundary is a step boundary")
        return value

    @field_validator("duration_h")
    @classmethod
    def _whole_bins(cls, value: float) -> float:
        if (value * 3600) % BIN_S:
            raise ValueError("duration_h must be a whole number of 15-minute bins")
        return value

    @field_validator("start")
    @classmethod
    def _naive_on_a_bin(cls, value: datetime | None) -> datetime | None:
        if value is not None and (value.tzinfo is not None or value.minute % 15 or value.second or value.microsecond):
            raise ValueError("start is a local time without offset on a 15-minute boundary (2025-06-01T00:00)")
        return value

    @model_validator(mode="after")
    def _profiles_exist(self) -> Scenario:
        problems = []
        for i, room in enumerate(self.rooms):
            if room.host_profile not in self.host_profiles:
                problems.append(f"rooms[{i}].host_profile: {room.host_profile!r} is not in host_profiles")
            if room.load_profile not in self.load_profiles:
                problems.append(f"rooms[{i}].load_profile: {room.load_profile!r} is not in load_profiles")
        if len({room.id for room in self.rooms}) != len(self.rooms):
            problems.append("rooms: room ids repeat")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def duration_ms(self) -> int:
        return round(self.duration_h * 3_600_000)

    @property
    def step_ms(self) -> int:
        return self.step_s * 1000


def load_scenario(path: Path) -> Scenario:
    """Read and validate a scenario file; raise ScenarioError naming the file, the field path and why."""
    path = Path(path)
    data = read_yaml(path, ScenarioError)
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        raise ScenarioError(describe_errors(exc, path)) from None


def start_ms(scenario: Scenario, now_ms: int) -> int:
    """The simulated start (UTC epoch ms): the scenario's local start, else (now - duration) rounded down to 15 min."""
    if scenario.start is None:
        begin = now_ms - scenario.duration_ms
        return begin - begin % BIN_MS
    ms = round(scenario.start.replace(tzinfo=scenario.zone).timestamp() * 1000)
    if ms % BIN_MS:
        raise ScenarioError(f"start {scenario.start} in {scenario.timezone} is not on a 15-minute UTC boundary")
    return ms
