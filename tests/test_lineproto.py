"""Line-protocol encoding: a table of exact lines, refusals, and a round trip through a small reference parser."""

from __future__ import annotations

import math
from enum import Enum

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.lineparse import parse
from collector.lineproto import line

TS = 1_700_000_000_123


class Method(str, Enum):
    RAPL = "rapl"


@pytest.mark.parametrize(("measurement", "tags", "fields", "expected"), [
    ("power", {"site": "dc1"}, {"w": 1.5}, "power,site=dc1 w=1.5"),
    ("power", {"b": "2", "a": "1", "c": "3"}, {"w": 1.0}, "power,a=1,b=2,c=3 w=1.0"),
    ("power", {}, {"w": 1.0}, "power w=1.0"),
    ("power", {"site": "dc1", "rack": ""}, {"w": 1.0}, "power,site=dc1 w=1.0"),
    ("my power,kW=", {}, {"w": 1.0}, "my\\ power\\,kW= w=1.0"),
    ("p", {"rack id": "r=1,a b"}, {"w": 1.0}, "p,rack\\ id=r\\=1\\,a\\ b w=1.0"),
    ("p", {"k,=": "v"}, {"energy j,=": 2.0}, "p,k\\,\\==v energy\\ j\\,\\==2.0"),
    ("p", {"host": "CORP\\h1"}, {"w": 1.0}, "p,host=CORP\\h1 w=1.0"),
    ("p", {}, {"s": 'say "hi" \\ ok'}, 'p s="say \\"hi\\" \\\\ ok"'),
    ("p", {}, {"s": "a,b=c d"}, 'p s="a,b=c d"'),
    ("p", {}, {"s": ""}, 'p s=""'),
    ("p", {}, {"n": 12, "neg": -7, "big": 2**63 - 1}, "p n=12i,neg=-7i,big=9223372036854775807i"),
    ("p", {}, {"t": True, "f": False}, "p t=true,f=false"),
    ("p", {}, {"a": 0.1, "b": 1 / 3, "c": 1e16, "d": 5e-324, "e": -0.0},
     "p a=0.1,b=0.3333333333333333,c=1e+16,d=5e-324,e=-0.0"),
    ("p", {}, {"skip": None, "w": 2.0}, "p w=2.0"),
    ("p", {"method": Method.RAPL}, {"m": Method.RAPL}, 'p,method=rapl m="rapl"'),
])
def test_encodes_exact_lines(measurement, tags, fields, expected) -> None:
    assert line(measurement, tags, fields, TS) == f"{expected} {TS}"


@pytest.mark.parametrize(("fields", "named"), [
    ({"w": math.nan}, "'w'"),
    ({"ok": 1.0, "w": math.inf}, "'w'"),
    ({"w": -math.inf}, "'w'"),
    ({"n": 2**63}, "'n'"),
    ({"n": -(2**63) - 1}, "'n'"),
    ({"s": "two\nlines"}, "'s'"),
    ({"a": None}, "at least one field"),
    ({}, "at least one field"),
    ({"": 1.0}, "empty"),
])
def test_refuses_values_influxdb_cannot_store(fields, named) -> None:
    with pytest.raises(ValueError, match=named):
        line("p", {"site": "dc1"}, fields, TS)


@pytest.mark.parametrize(("measurement", "tags", "named"), [
    ("p", {"host": "h\n1"}, "newline"),
    ("p\n", {}, "newline"),
    ("p", {"host": "ends\\"}, "backslash"),
    ("p", {"host": "a\\,b"}, "backslash"),
    ("p", {"a\\ b": "x"}, "backslash"),
    ("p\\", {}, "backslash"),
    ("", {}, "measurement name is empty"),
])
def test_refuses_names_line_protocol_cannot_carry(measurement, tags, named) -> None:
    with pytest.raises(ValueError, match=named):
        line(measurement, tags, {"w": 1.0}, TS)


def test_refuses_other_types_and_non_integer_timestamps() -> None:
    with pytest.raises(TypeError, match="'w'"):
        line("p", {}, {"w": [1.0]}, TS)
    with pytest.raises(TypeError):
        line("p", {}, {"w": 1.0}, 1.7e12)


def _representable(name: str) -> bool:
    return "\n" not in name and not name.endswith("\\") and not any(f"\\{c}" in name for c in ",= ")


names = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12)
values = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.booleans(),
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=12),
)


@given(measurement=names, tags=st.dictionaries(names, st.text(max_size=8), max_size=4),
       fields=st.dictionaries(names, values, min_size=1, max_size=4), ts=st.integers(0, 2**53))
def test_encoded_lines_parse_back_to_the_point(measurement, tags, fields, ts) -> None:
    kept = {key: value for key, value in tags.items() if value}
    everything = [measurement, *kept, *kept.values(), *fields]
    sendable = all(_representable(n) for n in everything) and not any(
        isinstance(v, str) and "\n" in v for v in fields.values())
    if not sendable:
        with pytest.raises(ValueError):
            line(measurement, tags, fields, ts)
        return
    assert parse(line(measurement, tags, fields, ts)) == (measurement, kept, fields, ts)
