"""Register decoding (a table, and a round trip for every type and word order), the profiles, the config."""

from __future__ import annotations

import math
import re
import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from agent.gateway.config import ENV_PREFIX, GatewayConfig
from agent.gateway.registers import RegisterSpec, decode, decode_raw, encode_raw, load_profile, profile_names
from common.config import ConfigError, load


def spec(data_type: str, word_order: str = "big", scale: float = 1.0) -> RegisterSpec:
    return RegisterSpec(address=0, data_type=data_type, word_order=word_order, scale=scale)


@pytest.mark.parametrize("registers, data_type, word_order, scale, expected", [
    ([0x0001, 0x0000], "uint32", "big", 1.0, 65536.0),
    ([0x0000, 0x0001], "uint32", "little", 1.0, 65536.0),
    ([0x0001, 0xE240], "uint32", "big", 0.01, 1234.56),
    ([0xFFFF, 0xFFFF], "uint32", "big", 1.0, 4294967295.0),
    ([0xFFFF, 0xFFFF], "int32", "big", 1.0, -1.0),
    ([0x8000, 0x0000], "int32", "big", 1.0, -2147483648.0),
    ([0x3F80, 0x0000], "float32", "big", 1.0, 1.0),
    ([0x0000, 0x3F80], "float32", "little", 1.0, 1.0),
    ([0x4640, 0xE400], "float32", "big", 0.001, 12.345),
    ([0x0000, 0x0001, 0x0000, 0x0000], "uint64", "big", 1.0, 2.0**32),
    ([0x0000, 0x0000, 0x0001, 0x0000], "uint64", "little", 1.0, 2.0**32),
])
def test_decode_table(registers, data_type, word_order, scale, expected):
    assert decode(registers, spec(data_type, word_order, scale)) == pytest.approx(expected)


@pytest.mark.parametrize("data_type, expected", [("float32", 2), ("uint32", 2), ("int32", 2), ("uint64", 4)])
def test_count_follows_the_data_type(data_type, expected):
    assert spec(data_type).count == expected


def test_wrong_count_and_wrong_length_are_refused():
    with pytest.raises(ValidationError, match="count must be 4"):
        RegisterSpec(address=0, count=2, data_type="uint64", scale=1)
    with pytest.raises(ValueError, match="needs 2 registers"):
        decode([1, 2, 3], spec("uint32"))
    with pytest.raises(ValueError, match="0..65535"):
        decode([70000, 0], spec("uint32"))


word_orders = st.sampled_from(["big", "little"])


@given(st.integers(0, 2**32 - 1), word_orders)
def test_uint32_round_trip(value, word_order):
    assert decode_raw(encode_raw(value, spec("uint32", word_order)), spec("uint32", word_order)) == value


@given(st.integers(-2**31, 2**31 - 1), word_orders)
def test_int32_round_trip(value, word_order):
    assert decode_raw(encode_raw(value, spec("int32", word_order)), spec("int32", word_order)) == value


@given(st.integers(0, 2**64 - 1), word_orders)
def test_uint64_round_trip(value, word_order):
    assert decode_raw(encode_raw(value, spec("uint64", word_order)), spec("uint64", word_order)) == value


@given(st.floats(width=32, allow_nan=False), word_orders, st.sampled_from([1.0, 0.1, 0.001]))
def test_float32_round_trip(value, word_order, scale):
    register_spec = spec("float32", word_order, scale)
    registers = encode_raw(value, register_spec)
    assert decode_raw(registers, register_spec) == value
    assert decode(registers, register_spec) == float(value) * scale


def test_float32_nan_decodes_as_nan():
    nan = list(struct.unpack(">HH", struct.pack(">f", math.nan)))
    assert math.isnan(decode(nan, spec("float32")))


@pytest.mark.parametrize("name", ["generic", "acrel-adl3000", "chint-dtsu666"])
def test_shipped_profiles_load_and_state_their_source(name):
    assert name in profile_names()
    register_map = load_profile(name)
    assert register_map.name == name
    assert register_map.source
    assert register_map.energy.count == 2


def test_unknown_profile_names_the_shipped_ones():
    with pytest.raises(ValueError, match="generic"):
        load_profile("no-such-meter")


EXAMPLE = Path(__file__).parent.parent / "agent" / "gateway" / "gateway.example.toml"


def test_example_config_loads():
    config = load(GatewayConfig, EXAMPLE, ENV_PREFIX, {})
    assert [meter.register_map().name for meter in config.meters] == ["chint-dtsu666", "acrel-adl3000", "plc-pv"]
    assert config.meters[2].register_map().energy.count == 2


@pytest.mark.parametrize("meter_patch, field", [
    ({"profile": "no-such-meter"}, "meters.0.profile"),
    ({"role": "kitchen"}, "meters.0.role"),
    ({"id": "has/slash"}, "meters.0.id"),
    ({"timeout_s": 9.0}, "meters.0.timeout_s"),
    ({"profile": None}, "meters.0"),
])
def test_bad_meter_config_names_the_field(tmp_path, meter_patch, field):
    meter = {"id": "m1", "host": "10.0.0.1", "profile": "generic", "role": "facility-input", **meter_patch}
    meter = {key: value for key, value in meter.items() if value is not None}
    lines = ['[identity]', 'site = "s1"', '[[meters]]'] + [f"{key} = {value!r}".replace("'", '"')
                                                          for key, value in meter.items()]
    path = tmp_path / "gateway.toml"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match=re.escape(field)):
        load(GatewayConfig, path, ENV_PREFIX, {})
