"""Fixtures shared by the collector's server tests."""

from __future__ import annotations

import pytest

from collector.writers import InfluxV1Writer
from tests.servers import Influxd, Mosquitto


@pytest.fixture
def servers(tmp_path):
    """A mosquitto and an influxd (database dcem) on loopback: (broker, influx, v1 client)."""
    broker, influx = Mosquitto(tmp_path / "broker"), Influxd(tmp_path / "influxd")
    broker.start()
    influx.start()
    db = InfluxV1Writer(influx.url, "dcem")
    db.query("CREATE DATABASE dcem")
    yield broker, influx, db
    broker.stop()
    influx.stop()
