"""MQTT connection settings and the paho-mqtt 2.x client built from them (agent, gateway and collector)."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Literal

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator


class TlsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ca_file: Path = Field(description="CA certificate that signed the broker's certificate")
    cert_file: Path | None = Field(default=None, description="client certificate, for brokers that require one")
    key_file: Path | None = None

    @model_validator(mode="after")
    def _cert_and_key_together(self) -> "TlsConfig":
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file must be given together")
        return self


class MqttConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = "localhost"
    port: int = Field(default=1883, ge=1, le=65535)
    protocol: Literal["5", "3.1.1"] = "5"
    username: str | None = None
    password: SecretStr | None = None
    tls: TlsConfig | None = None
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    topic_root: str = Field(default="dcem", pattern=r"^[A-Za-z0-9_\-]+$")


def make_client(config: MqttConfig, client_id: str, persistent_session: bool = False,
                client_class: type[paho.Client] = paho.Client) -> paho.Client:
    """A paho client (callback API version 2) with credentials and TLS applied; not yet connected.

    A persistent session (MQTT 3.1.1 clean_session=False; for MQTT 5 see `connect`) makes the broker keep
    the client's subscriptions and queue its QoS 1 messages while it is away.
    """
    protocol = paho.MQTTv5 if config.protocol == "5" else paho.MQTTv311
    client = client_class(
        paho.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=protocol,
        clean_session=None if protocol == paho.MQTTv5 else not persistent_session,
    )
    if config.username:
        password = config.password.get_secret_value() if config.password else None
        client.username_pw_set(config.username, password)
    if config.tls:
        client.tls_set(
            ca_certs=str(config.tls.ca_file),
            certfile=str(config.tls.cert_file) if config.tls.cert_file else None,
            keyfile=str(config.tls.key_file) if config.tls.key_file else None,
            cert_reqs=ssl.CERT_REQUIRED,
        )
    client.reconnect_delay_set(min_delay=1, max_delay=30)
    return client


def connect(client: paho.Client, config: MqttConfig, persistent_session: bool = False, session_expiry_s: int = 0,
            receive_maximum: int | None = None) -> None:
    """Start connecting in the background (paho reconnects by itself after that).

    receive_maximum (MQTT 5) is how many unacknowledged QoS 1 messages the broker may send us; state it:
    mosquitto 2.0 otherwise applies its own max_inflight_messages (20) to MQTT 5 clients too. MQTT 3.1.1
    has no such field: there the broker's max_inflight_messages decides.
    """
    if client.protocol == paho.MQTTv5:
        properties = Properties(PacketTypes.CONNECT)
        if persistent_session:
            properties.SessionExpiryInterval = session_expiry_s
        if receive_maximum:
            properties.ReceiveMaximum = receive_maximum
        client.connect_async(
            config.host, config.port, config.keepalive_s, clean_start=not persistent_session, properties=properties
        )
    else:
        client.connect_async(config.host, config.port, config.keepalive_s)
