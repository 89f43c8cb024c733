"""The meter gateway's configuration: a TOML file (see agent/gateway/gateway.example.toml), environment, flags."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from agent.gateway.registers import RegisterMap, load_profile
from common.contract import EnergySource, MeterRole, check_level
from common.logs import LogConfig
from common.mqtt import MqttConfig

ENV_PREFIX = "DCEM_GATEWAY"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class IdentityConfig(_Section):
    """The site, and the topic levels of the gateway itself and (by default) of its meters."""

    site: str
    room: str = "facility"
    rack: str = "main"
    gateway: str = Field(default="meter-gateway", description="device level of the gateway's own status topic")

    @field_validator("site", "room", "rack", "gateway")
    @classmethod
    def _topic_level(cls, value: str, info) -> str:
        return check_level(info.field_name, value)


class PollingConfig(_Section):
    interval_s: float = Field(default=5.0, ge=1, le=300, description="one Modbus read per meter per interval")
    publish_interval_s: float = Field(default=10.0, ge=1, le=3600, description="one MQTT message per interval")

    @model_validator(mode="after")
    def _publish_not_faster_than_polling(self) -> "PollingConfig":
        if self.publish_interval_s < self.interval_s:
            raise ValueError("publish_interval_s must be at least interval_s")
        return self


class SpoolConfig(_Section):
    folder: Path = Path("/var/lib/dcem-meter-gateway/spool")
    max_samples: int = Field(default=51_840, ge=10, description="per meter: 3 days at 5 s; oldest dropped beyond")


class MeterConfig(_Section):
    """One meter: where to reach it, which register map it uses and what it counts towards."""

    id: str = Field(description="device topic level")
    host: str
    port: int = Field(default=502, ge=1, le=65535)
    unit_id: int = Field(default=1, ge=0, le=255)
    profile: str | None = Field(default=None, description="a shipped profile (agent/gateway/profiles/*.yaml)")
    registers: RegisterMap | None = Field(default=None, description="an inline map, instead of a profile")
    ratio: float = Field(default=1.0, gt=0, description="PT x CT, for meters that report secondary-side values")
    role: MeterRole
    source: EnergySource = EnergySource.GRID
    timeout_s: float = Field(default=2.0, gt=0, le=30)
    room: str | None = None
    rack: str | None = None
    reset_tolerance_kwh: float = Field(default=0.01, ge=0, description="a drop this small is noise, not a reset")

    @field_validator("id", "room", "rack")
    @classmethod
    def _topic_level(cls, value: str | None, info) -> str | None:
        return None if value is None else check_level(info.field_name, value)

    @field_validator("profile")
    @classmethod
    def _known_profile(cls, value: str | None) -> str | None:
        if value is not None:
            load_profile(value)
        return value

    @model_validator(mode="after")
    def _one_register_map(self) -> "MeterConfig":
        if (self.profile is None) == (self.registers is None):
            raise ValueError("give exactly one of profile or registers")
        return self

    def register_map(self) -> RegisterMap:
        """The inline map, or the named profile."""
        return self.registers if self.registers is not None else load_profile(self.profile)


class GatewayConfig(_Section):
    identity: IdentityConfig
    mqtt: MqttConfig = MqttConfig()
    polling: PollingConfig = PollingConfig()
    spool: SpoolConfig = SpoolConfig()
    meters: list[MeterConfig] = Field(min_length=1)
    log: LogConfig = LogConfig()

    @model_validator(mode="after")
    def _unique_meter_ids(self) -> "GatewayConfig":
        ids = [meter.id for meter in self.meters]
        duplicates = sorted({meter_id for meter_id in ids if ids.count(meter_id) > 1})
        if duplicates:
            raise ValueError(f"meter ids must be unique, repeated: {', '.join(duplicates)}")
        return self

    @model_validator(mode="after")
    def _timeouts_fit_the_interval(self) -> "GatewayConfig":
        for index, meter in enumerate(self.meters):
            if meter.timeout_s >= self.polling.interval_s:
                raise ValueError(f"meters.{index}.timeout_s ({meter.timeout_s}) must be below "
                                 f"polling.interval_s ({self.polling.interval_s})")
        return self
