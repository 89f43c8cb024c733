"""The agent's configuration: a TOML file (see agent/agent.example.toml), environment, command line."""

from __future__ import annotations

import re
import socket
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from common.contract import check_level
from common.logs import LogConfig
from common.mqtt import MqttConfig

ENV_PREFIX = "DCEM_AGENT"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _default_host() -> str:
    return re.sub(r"[^A-Za-z0-9_.\-]", "-", socket.gethostname().split(".")[0])[:64] or "host"


class IdentityConfig(_Section):
    """Where this server stands; these become the topic levels the broker ACL checks."""

    site: str
    room: str
    rack: str
    host: str = Field(default_factory=_default_host)

    @field_validator("site", "room", "rack", "host")
    @classmethod
    def _topic_level(cls, value: str, info) -> str:
        return check_level(info.field_name, value)


class SamplingConfig(_Section):
    interval_s: float = Field(default=1.0, ge=0.1, le=60, description="one sample per interval")
    publish_interval_s: float = Field(default=10.0, ge=0.1, le=3600, description="one MQTT message per interval")

    @model_validator(mode="after")
    def _publish_not_faster_than_sampling(self) -> "SamplingConfig":
        if self.publish_interval_s < self.interval_s:
            raise ValueError("publish_interval_s must be at least interval_s")
        return self


class SpoolConfig(_Section):
    path: Path = Path("/var/lib/dcem-agent/spool.db")
    max_samples: int = Field(default=259_200, ge=10, description="3 days at 1 s; oldest dropped beyond")


class RaplConfig(_Section):
    enabled: bool = True
    root: Path = Path("/sys/class/powercap")
    max_power_w: float = Field(default=500.0, gt=0, description="ceiling per zone when the zone states none")


class NvmlConfig(_Section):
    enabled: bool = True
    reinit_interval_s: float = Field(default=60.0, ge=1)


class CpuModelConfig(_Section):
    """The fallback CPU power model where RAPL is absent: idle + (TDP - idle) x utilisation per socket."""

    tdp_w: float = Field(default=150.0, gt=0, le=1000, description="thermal design power of one socket")
    sockets: int = Field(default=1, ge=1, le=16)
    idle_fraction: float = Field(default=0.3, ge=0, le=1, description="idle power as a fraction of TDP")


class ServerConfig(_Section):
    """Server input power = (components + platform overhead) / PSU efficiency, labelled as a model."""

    overhead_w: float = Field(default=60.0, ge=0, le=5000, description="fans, disks, NICs, board")
    psu_efficiency: float = Field(default=0.94, gt=0.5, le=1.0)


class AgentConfig(_Section):
    identity: IdentityConfig
    sampling: SamplingConfig = SamplingConfig()
    mqtt: MqttConfig = MqttConfig()
    spool: SpoolConfig = SpoolConfig()
    rapl: RaplConfig = RaplConfig()
    nvml: NvmlConfig = NvmlConfig()
    cpu_model: CpuModelConfig = CpuModelConfig()
    server: ServerConfig = ServerConfig()
    log: LogConfig = LogConfig()
