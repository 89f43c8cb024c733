"""The collector's configuration: a TOML file (see collector/collector.example.toml), environment, flags."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from collector.writers import InfluxConfig
from common.contract import check_level
from common.logs import LogConfig
from common.mqtt import MqttConfig

ENV_PREFIX = "DCEM_COLLECTOR"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class IngestConfig(_Section):
    client_id: str = Field(default="dcem-collector", pattern=r"^[A-Za-z0-9_.\-]{1,64}$",
                           description="fixed, so the broker keeps this collector's session while it is away")
    session_expiry_s: int = Field(default=7 * 86400, ge=60, description="how long the broker queues for us")
    sites: list[str] | None = Field(default=None, min_length=1,
                                    description="subscribe to these sites only (per-site partitioning); all if unset")

    @field_validator("sites", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        """The environment gives a string: 'dc1,dc2'."""
        return [part.strip() for part in value.split(",")] if isinstance(value, str) else value

    @field_validator("sites")
    @classmethod
    def _topic_levels(cls, value: list[str] | None) -> list[str] | None:
        for site in value or []:
            check_level("ingest.sites", site)
        return value
    # per-flush work (a transaction, a row per rack touched, a database write) spread over more messages: at
    # 20,000 msg/s, 33-36 µs of CPU per message against 36-39 with 5000 and 0.2 s (BENCHMARKS.md)
    max_batch: int = Field(default=10_000, ge=1, description="messages handled per flush at most")
    flush_interval_s: float = Field(default=0.4, gt=0, le=10, description="longest wait before a flush")
    raw_resolution_s: float = Field(default=10.0, ge=0.001, description="raw readings kept per device")
    dead_letter_per_s: int = Field(default=100, ge=0, description="rejected messages republished per second")


class LimitsConfig(_Section):
    max_future_s: float = Field(default=300.0, gt=0)
    max_age_s: float = Field(default=8 * 86400.0, gt=0, le=30 * 86400.0,
                             description="oldest sample accepted; bins older than this (+1 day) are final")
    max_host_reading_w: float = Field(default=50_000.0, gt=0)
    max_meter_w: float = Field(default=500e6, gt=0)


class StateConfig(_Section):
    folder: Path = Path("/var/lib/dcem-collector")
    output_spool_max_batches: int = Field(default=100_000, ge=10)
    keep_points: int = Field(default=16, ge=2, description="recent points kept per session (late data)")


class ReportConfig(_Section):
    metrics_interval_s: float = Field(default=10.0, gt=0, description="how often site metrics are recomputed")
    stats_interval_s: float = Field(default=10.0, gt=0)


class RulesConfig(_Section):
    folder: Path | None = Field(default=None, description="rule profiles (*.yaml); the shipped rules/ when unset")


class CollectorConfig(_Section):
    site_config: Path
    mqtt: MqttConfig = MqttConfig()
    influx: InfluxConfig
    ingest: IngestConfig = IngestConfig()
    limits: LimitsConfig = LimitsConfig()
    state: StateConfig = StateConfig()
    report: ReportConfig = ReportConfig()
    rules: RulesConfig = RulesConfig()
    log: LogConfig = LogConfig()
