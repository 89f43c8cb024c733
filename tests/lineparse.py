"""A small reference parser of InfluxDB line protocol for tests, independent of collector/lineproto.py."""

from __future__ import annotations


def _scan(text: str, stops: str, quotes: bool = False) -> tuple[str, str, str]:
    """(raw text up to the first unescaped stop character, that character or '', the rest); with `quotes`,
    stops inside a double-quoted stretch do not count."""
    i, in_quotes = 0, False
    while i < len(text):
        char = text[i]
        if char == "\\" and i + 1 < len(text):
            i += 2
            continue
        if quotes and char == '"':
            in_quotes = not in_quotes
        elif char in stops and not in_quotes:
            return text[:i], char, text[i + 1:]
        i += 1
    return text, "", ""


def _unescape(text: str, escapable: str) -> str:
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in escapable:
            out.append(text[i + 1])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _field_value(text: str) -> object:
    if text.startswith('"'):
        return _unescape(text[1:-1], '"\\')
    if text in ("true", "false"):
        return text == "true"
    if text.endswith("i"):
        return int(text[:-1])
    return float(text)


def parse(text: str) -> tuple[str, dict[str, str], dict[str, object], int]:
    """A small reference parser with InfluxDB's rules: (measurement, tags, fields, timestamp). Quotes only
    matter in field values; a backslash always takes the next character with it while scanning."""
    measurement, stop, rest = _scan(text, ", ")
    tags = {}
    while stop == ",":
        key, _, rest = _scan(rest, "=")
        value, stop, rest = _scan(rest, ", ")
        tags[_unescape(key, ",= ")] = _unescape(value, ",= ")
    fields, stop = {}, ","
    while stop == ",":
        key, _, rest = _scan(rest, "=")
        value, stop, rest = _scan(rest, ", ", quotes=True)
        fields[_unescape(key, ",= ")] = _field_value(value)
    return _unescape(measurement, ", "), tags, fields, int(rest)
