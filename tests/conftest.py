"""Fixtures shared by the collector's server tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from collector.writers import InfluxV1Writer
from tests.servers import Influxd, Mosquitto


@contextmanager
def local_servers(folder: Path) -> Iterator[tuple[Mosquitto, Influxd, InfluxV1Writer]]:
    """A mosquitto and an influxd (database dcem) on loopback: (broker, influx, v1 client)."""
    broker, influx = Mosquitto(folder / "broker"), Influxd(folder / "influxd")
    broker.start()
    try:
        influx.start()
        try:
            db = InfluxV1Writer(influx.url, "dcem")
            db.query("CREATE DATABASE dcem")
            yield broker, influx, db
        finally:
            influx.stop()
    finally:
        broker.stop()


@pytest.fixture
def servers(tmp_path):
    """A mosquitto and an influxd (database dcem) on loopback: (broker, influx, v1 client)."""
    with local_servers(tmp_path) as running:
        yield running
