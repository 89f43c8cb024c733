"""The edge agent: reads CPU, GPU and server power on one host and publishes it over MQTT."""

__version__ = "0.1.0"
