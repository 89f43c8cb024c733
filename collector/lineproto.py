"""InfluxDB line protocol, encoded by hand for speed: one `line(...)` call per point, timestamps in ms.

Escaping follows the InfluxDB parser: commas and spaces in the measurement; commas, equals signs and spaces
in tag keys, tag values and field keys; double quotes and backslashes in string field values. Tags are
sorted by key (InfluxDB's recommendation, and it makes lines deterministic); tags with an empty value are
left out (InfluxDB treats them as absent). Floats keep full precision (repr), integers get the `i` suffix.

What line protocol cannot carry is refused with ValueError rather than stored wrongly: NaN and infinities,
integers outside int64, a newline anywhere (the writers send lines joined by newlines), and a name or tag
that ends in a backslash or has one before an escaped character (InfluxDB would read the pair as an escape),
an empty measurement or key. Other backslashes in names are sent as they are, which InfluxDB stores as such.
"""

from __future__ import annotations

from collections.abc import Mapping
from math import isfinite
from operator import index
from typing import Any, SupportsIndex

# What a field may hold (None: the field is left out). `point` takes any object and refuses the others itself,
# naming the field (TypeError), rather than leave it to a type check that would not name it.
FieldValue = float | int | bool | str | None

_MEASUREMENT = str.maketrans({",": "\\,", " ": "\\ "})
_KEY = str.maketrans({",": "\\,", "=": "\\=", " ": "\\ "})
_STRING = str.maketrans({'"': '\\"', "\\": "\\\\"})
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_ESCAPED = (",", "=", " ")
_CACHE_MAX = 100_000
_escaped_keys: dict[str, str] = {}
_escaped_measurements: dict[str, str] = {}


def line(measurement: str, tags: Mapping[str, str | None], fields: Mapping[str, object],
         ts_ms: SupportsIndex) -> str:
    """One line of line protocol; ValueError (naming the field) for what InfluxDB cannot store faithfully."""
    return point(series(measurement, tags), fields, ts_ms)


def series(measurement: str, tags: Mapping[str, str | None]) -> str:
    """The escaped measurement and sorted tags of a line: compute once per device and reuse with `point`."""
    head = _escaped_measurements.get(measurement) or _measurement(measurement)
    if tags:
        head += "".join([f",{_key(k)}={_key(v)}" for k, v in sorted(tags.items()) if v])
    if "\n" in head or "\\" in head:
        _check_names(measurement, tags, {})
    return head


def point(series_text: str, fields: Mapping[str, object], ts_ms: SupportsIndex) -> str:
    """A line from a `series` and its fields; ValueError for a field InfluxDB cannot store faithfully."""
    escaped, encoded = _escaped_keys, []
    value: Any  # checked by exact type: a float subclass (numpy's, say) is converted by _value
    for key, value in fields.items():
        if value is not None:
            encoded.append(f"{escaped.get(key) or _key(key)}="  # finite floats, the usual field, without _value
                           f"{repr(value) if type(value) is float and isfinite(value) else _value(key, value)}")
    if not encoded:
        raise ValueError(f"a point of {series_text.split(',', 1)[0]!r} needs at least one field that is not None")
    text = f"{series_text} {','.join(encoded)} {index(ts_ms)}"
    if "\n" in text or text.find("\\", len(series_text)) >= 0:
        _check_names("", {}, fields)
    return text


def _measurement(text: str) -> str:
    if not text:
        raise ValueError("the measurement name is empty")
    if len(_escaped_measurements) >= _CACHE_MAX:
        _escaped_measurements.clear()
    escaped = _escaped_measurements[text] = text.translate(_MEASUREMENT)
    return escaped


def _key(text: str) -> str:
    """`text` escaped as a tag key, tag value or field key; cached, since the same few names recur."""
    escaped = _escaped_keys.get(text)
    if escaped is None:
        if not text:
            raise ValueError("a tag key or field key is empty")
        if len(_escaped_keys) >= _CACHE_MAX:
            _escaped_keys.clear()
        escaped = _escaped_keys[text] = text.translate(_KEY)
    return escaped


def _value(key: str, value: Any) -> str:
    kind = type(value)
    if kind is float:
        if not isfinite(value):
            raise ValueError(f"field {key!r} is {value}: InfluxDB cannot store NaN or infinity")
        return repr(value)
    if kind is int:
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise ValueError(f"field {key!r} is {value}: outside the int64 range InfluxDB stores")
        return f"{value}i"
    if kind is str:
        return f'"{value.translate(_STRING)}"'
    if kind is bool:
        return "true" if value else "false"
    return _other_value(key, value)


def _other_value(key: str, value: object) -> str:
    """Subclasses of str, float and int (str enums, numpy floats)."""
    if isinstance(value, str):
        return _value(key, str.__str__(value))
    for base in (float, int):
        if isinstance(value, base):
            return _value(key, base(value))
    raise TypeError(f"field {key!r} has type {type(value).__name__}; expected float, int, bool or str")


def _check_names(measurement: str, tags: Mapping[str, str | None], fields: Mapping[str, object]) -> None:
    """The slow path, for lines with a newline or a backslash: find the name or value that cannot be sent."""
    for kind, name in _names(measurement, tags, fields):
        if "\n" in name:
            raise ValueError(f"{kind} {name!r} contains a newline, which line protocol cannot carry")
        if name.endswith("\\") or any(f"\\{c}" in name for c in _ESCAPED):
            raise ValueError(f"{kind} {name!r} has a backslash that InfluxDB would read as an escape")
    for key, value in fields.items():
        if isinstance(value, str) and "\n" in value:
            raise ValueError(f"field {key!r} contains a newline, which the writers' batches cannot carry")


def _names(measurement: str, tags: Mapping[str, str | None], fields: Mapping[str, object]
           ) -> list[tuple[str, str]]:
    found = [("measurement", measurement)] if measurement else []
    for key, value in tags.items():
        if value:
            found += [("tag key", key), ("tag value", value)]
    return found + [("field key", key) for key in fields]
