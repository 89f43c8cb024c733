"""Register maps as data: where a meter keeps its total active energy and active power, and how to decode them.

A map names, for each quantity, the Modbus function (3 holding, 4 input), the zero-based address, the data
type, the word order and the scale that turns the decoded number into kWh (energy) or kW (power). Byte order
within a word is always big-endian, as Modbus requires; only the order of the 16-bit words varies by vendor.
Profiles of common meters ship as YAML in agent/gateway/profiles/ (see agent/gateway/README.md).
"""

from __future__ import annotations

import math
import struct
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

DataType = Literal["float32", "uint32", "int32", "uint64"]
WordOrder = Literal["big", "little"]

REGISTER_COUNT: dict[str, int] = {"float32": 2, "uint32": 2, "int32": 2, "uint64": 4}
_STRUCT_FORMAT: dict[str, str] = {"float32": ">f", "uint32": ">I", "int32": ">i", "uint64": ">Q"}
UNSIGNED_RANGE: dict[str, int] = {"uint32": 2**32 - 1, "uint64": 2**64 - 1}
PROFILE_FOLDER = Path(__file__).parent / "profiles"


class RegisterSpec(BaseModel):
    """One value held in consecutive registers."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    address: int = Field(ge=0, le=65535, description="zero-based protocol address (40001-style minus 40001)")
    count: int = Field(default=0, description="registers: 2 for 32-bit types, 4 for uint64 (filled in when omitted)")
    data_type: DataType
    word_order: WordOrder = "big"
    scale: float = Field(gt=0, description="decoded value x scale = kWh (energy) or kW (power)")
    function: Literal[3, 4] = 3

    @model_validator(mode="after")
    def _count_matches_type(self) -> "RegisterSpec":
        expected = REGISTER_COUNT[self.data_type]
        if self.count == 0:
            object.__setattr__(self, "count", expected)
        elif self.count != expected:
            raise ValueError(f"count must be {expected} for {self.data_type}, got {self.count}")
        if self.address + expected - 1 > 65535:
            raise ValueError(f"address {self.address} + {expected} registers runs past 65535")
        return self

    @property
    def wraps(self) -> bool:
        """True for unsigned integer counters, which roll over to 0 after their maximum."""
        return self.data_type in UNSIGNED_RANGE

    @property
    def max_raw(self) -> int:
        """The largest raw value of an unsigned counter."""
        return UNSIGNED_RANGE[self.data_type]


class RegisterMap(BaseModel):
    """Where one meter model keeps its lifetime active energy (kWh) and, optionally, its active power (kW)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "inline"
    source: str = Field(default="", description="where the addresses and scales come from")
    confidence: Literal["confirmed", "likely", "unverified"] = "unverified"
    energy: RegisterSpec
    power: RegisterSpec | None = None


def decode_raw(registers: list[int], spec: RegisterSpec) -> int | float:
    """The unscaled number held in `registers` (as read, first register first) per `spec`."""
    if len(registers) != spec.count:
        raise ValueError(f"{spec.data_type} needs {spec.count} registers, got {len(registers)}")
    if any(not 0 <= word <= 0xFFFF for word in registers):
        raise ValueError(f"register values must be 0..65535, got {registers}")
    words = registers if spec.word_order == "big" else list(reversed(registers))
    raw = b"".join(word.to_bytes(2, "big") for word in words)
    return struct.unpack(_STRUCT_FORMAT[spec.data_type], raw)[0]


def decode(registers: list[int], spec: RegisterSpec) -> float:
    """The scaled value (kWh or kW) held in `registers` per `spec`."""
    return float(decode_raw(registers, spec)) * spec.scale


def encode_raw(value: int | float, spec: RegisterSpec) -> list[int]:
    """The registers a meter would send for the unscaled `value` (the inverse of decode_raw)."""
    if isinstance(value, float) and spec.data_type != "float32" and not math.isfinite(value):
        raise ValueError(f"{value} cannot be held in {spec.data_type}")
    raw = struct.pack(_STRUCT_FORMAT[spec.data_type], value)
    words = [int.from_bytes(raw[i:i + 2], "big") for i in range(0, len(raw), 2)]
    return words if spec.word_order == "big" else list(reversed(words))


def profile_names() -> list[str]:
    """The names of the shipped profiles."""
    return sorted(path.stem for path in PROFILE_FOLDER.glob("*.yaml"))


def load_profile(name: str) -> RegisterMap:
    """A shipped profile by name (file agent/gateway/profiles/{name}.yaml)."""
    if name not in profile_names():
        raise ValueError(f"unknown profile {name!r}; shipped profiles: {', '.join(profile_names())}")
    return RegisterMap.model_validate(yaml.safe_load((PROFILE_FOLDER / f"{name}.yaml").read_text()))
