"""Structured, quiet logging: one logfmt or JSON line per event, on stderr.

Call `event(logger, level, "what-happened", key=value, ...)`: the event name is a stable label an operator
can grep for, the keys say what is wrong and what to do. Secrets never get here: configuration types keep
passwords in pydantic SecretStr, which prints as '**********'.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Literal

from pydantic import BaseModel, ConfigDict

_FIELDS = "fields"


class LogConfig(BaseModel):
    """The [log] section of the agent's, gateway's and collector's configuration."""

    model_config = ConfigDict(extra="forbid")

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["logfmt", "json"] = "logfmt"


class _LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        parts = [
            f"ts={time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(record.created))}Z",
            f"level={record.levelname.lower()}",
            f"logger={record.name}",
            f"event={_quote(record.getMessage())}",
        ]
        parts += [f"{key}={_quote(str(value))}" for key, value in getattr(record, _FIELDS, {}).items()]
        if record.exc_info:
            parts.append(f"error={_quote(self.formatException(record.exc_info))}")
        return " ".join(parts)


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        body = {
            "ts": record.created,
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
            **{key: _jsonable(value) for key, value in getattr(record, _FIELDS, {}).items()},
        }
        if record.exc_info:
            body["error"] = self.formatException(record.exc_info)
        return json.dumps(body, ensure_ascii=False)


def _quote(text: str) -> str:
    if text and not any(c in text for c in ' "=\n'):
        return text
    return json.dumps(text, ensure_ascii=False)


def _jsonable(value: object) -> object:
    return value if isinstance(value, (int, float, str, bool, type(None))) else str(value)


def setup(level: str = "info", fmt: str = "logfmt") -> None:
    """Route all logging to stderr in the given format ('logfmt' or 'json')."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if fmt == "json" else _LogfmtFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("paho").setLevel(logging.WARNING)


def event(logger: logging.Logger, level: int, name: str, **fields: object) -> None:
    """Log one structured event."""
    logger.log(level, name, extra={_FIELDS: fields})


class Once:
    """Remembers which conditions were already reported, so each is logged once until it clears."""

    def __init__(self) -> None:
        self._seen: set[str] = set()

    def first(self, key: str) -> bool:
        """True the first time `key` is seen (until `clear(key)`)."""
        if key in self._seen:
            return False
        self._seen.add(key)
        return True

    def clear(self, key: str) -> bool:
        """Forget `key`; True if it had been reported (so the caller can log the recovery)."""
        if key in self._seen:
            self._seen.discard(key)
            return True
        return False
