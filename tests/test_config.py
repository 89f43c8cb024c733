"""Tests of the configuration loader (common/config.py) with the agent's model (agent/config.py)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from agent.config import ENV_PREFIX, AgentConfig
from common.config import ConfigError, env_overrides, leaf_paths, load, set_path, toml_text

REPO = Path(__file__).resolve().parent.parent
PASSWORD = "hunter2-Sup3rSecret"

MINIMAL = """
[identity]
site = "dc1"
room = "hall-a"
rack = "r01"
host = "node-017"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def load_agent(path: Path | None, environ: dict[str, str] | None = None, overrides: dict | None = None) -> AgentConfig:
    return load(AgentConfig, path, ENV_PREFIX, environ or {}, overrides)


def config_error(path: Path | None, environ: dict[str, str] | None = None, overrides: dict | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        load_agent(path, environ, overrides)
    return str(caught.value)


def test_agent_config_from_a_toml_file(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + """
[sampling]
interval_s = 2.0
publish_interval_s = 20.0

[mqtt]
host = "broker.internal"
port = 8883
username = "node-017"

[mqtt.tls]
ca_file = "/etc/dcem/ca.pem"

[server]
overhead_w = 80
psu_efficiency = 0.9
""")
    config = load_agent(path)
    assert (config.identity.site, config.identity.room, config.identity.rack, config.identity.host) == (
        "dc1", "hall-a", "r01", "node-017")
    assert config.sampling.interval_s == 2.0
    assert config.sampling.publish_interval_s == 20.0
    assert (config.mqtt.host, config.mqtt.port, config.mqtt.username) == ("broker.internal", 8883, "node-017")
    assert config.mqtt.tls is not None and config.mqtt.tls.ca_file == Path("/etc/dcem/ca.pem")
    assert (config.server.overhead_w, config.server.psu_efficiency) == (80, 0.9)
    assert config.cpu_model.tdp_w == 150.0  # untouched sections keep their defaults


def test_environment_reaches_nested_fields(tmp_path: Path) -> None:
    config = load_agent(write(tmp_path, MINIMAL), {
        "DCEM_AGENT_MQTT_PORT": "1884",
        "DCEM_AGENT_MQTT_TLS_CA_FILE": "/run/ca.pem",
        "DCEM_AGENT_RAPL_ENABLED": "false",
        "DCEM_AGENT_MQTT_PASSWORD": PASSWORD,
        "UNRELATED_MQTT_PORT": "1",
    })
    assert config.mqtt.port == 1884
    assert config.mqtt.tls is not None and config.mqtt.tls.ca_file == Path("/run/ca.pem")
    assert config.rapl.enabled is False
    assert config.mqtt.password is not None and config.mqtt.password.get_secret_value() == PASSWORD


def test_environment_alone_is_enough_without_a_file() -> None:
    config = load_agent(None, {"DCEM_AGENT_IDENTITY_SITE": "dc2", "DCEM_AGENT_IDENTITY_ROOM": "b",
                               "DCEM_AGENT_IDENTITY_RACK": "r9", "DCEM_AGENT_IDENTITY_HOST": "h"})
    assert config.identity.site == "dc2"


@pytest.mark.parametrize(
    ("file_port", "env_port", "override_port", "expected"),
    [
        (None, None, None, 1883),  # default
        (1001, None, None, 1001),  # file beats default
        (1001, "1002", None, 1002),  # environment beats file
        (1001, "1002", 1003, 1003),  # command line beats environment
        (None, "1002", None, 1002),
        (None, None, 1003, 1003),
    ],
)
def test_precedence_command_line_over_environment_over_file(
        tmp_path: Path, file_port: int | None, env_port: str | None, override_port: int | None, expected: int) -> None:
    text = MINIMAL + (f"\n[mqtt]\nport = {file_port}\n" if file_port else "")
    environ = {"DCEM_AGENT_MQTT_PORT": env_port} if env_port else {}
    config = load_agent(write(tmp_path, text), environ, {"mqtt.port": override_port})
    assert config.mqtt.port == expected


def test_override_of_none_means_not_given(tmp_path: Path) -> None:
    config = load_agent(write(tmp_path, MINIMAL), {"DCEM_AGENT_MQTT_HOST": "from-env"}, {"mqtt.host": None})
    assert config.mqtt.host == "from-env"


def test_error_names_the_field_and_why(tmp_path: Path) -> None:
    message = config_error(write(tmp_path, MINIMAL + '\n[mqtt]\nport = 70000\n'))
    assert "mqtt.port" in message
    assert "less than or equal to 65535" in message
    assert "70000" in message
    assert str(tmp_path / "agent.toml") in message


def test_error_for_a_non_numeric_port_from_the_environment(tmp_path: Path) -> None:
    message = config_error(write(tmp_path, MINIMAL), {"DCEM_AGENT_MQTT_PORT": "eighteen"})
    assert "mqtt.port" in message
    assert "integer" in message


def test_missing_identity_field_names_it(tmp_path: Path) -> None:
    text = MINIMAL.replace('site = "dc1"\n', "")
    message = config_error(write(tmp_path, text))
    assert "identity.site" in message
    assert "required" in message.lower()


@pytest.mark.parametrize(
    ("field", "value"),
    [("site", "a/b"), ("room", "hall a"), ("rack", "+"), ("host", "#"), ("site", ""), ("host", "x" * 65)],
)
def test_bad_topic_level_names_the_identity_field(tmp_path: Path, field: str, value: str) -> None:
    message = config_error(write(tmp_path, MINIMAL), overrides={f"identity.{field}": value})
    assert f"identity.{field}" in message
    assert "topic level" in message


@pytest.mark.parametrize(("interval_s", "publish_interval_s"), [(5.0, 1.0), (1.0, 0.5)])
def test_publish_interval_shorter_than_sampling_interval_is_refused(
        tmp_path: Path, interval_s: float, publish_interval_s: float) -> None:
    text = MINIMAL + f"\n[sampling]\ninterval_s = {interval_s}\npublish_interval_s = {publish_interval_s}\n"
    message = config_error(write(tmp_path, text))
    assert "sampling" in message
    assert "publish_interval_s must be at least interval_s" in message


def test_publish_interval_equal_to_sampling_interval_is_accepted(tmp_path: Path) -> None:
    text = MINIMAL + "\n[sampling]\ninterval_s = 5.0\npublish_interval_s = 5.0\n"
    assert load_agent(write(tmp_path, text)).sampling.publish_interval_s == 5.0


@pytest.mark.parametrize(
    ("text", "environ"),
    [
        # another field is wrong while the password is set
        (MINIMAL + f'\n[mqtt]\nport = 0\npassword = "{PASSWORD}"\n', {}),
        (MINIMAL + "\n[mqtt]\nport = 0\n", {"DCEM_AGENT_MQTT_PASSWORD": PASSWORD}),
        # the password itself has the wrong type
        (MINIMAL + f"\n[mqtt]\npassword = [\"{PASSWORD}\"]\n", {}),
        (MINIMAL + f'\n[mqtt]\npassword = {{ value = "{PASSWORD}" }}\n', {}),
    ],
    ids=["file-other-field", "env-other-field", "wrong-type-list", "wrong-type-table"],
)
def test_password_never_appears_in_the_error(tmp_path: Path, text: str, environ: dict[str, str]) -> None:
    message = config_error(write(tmp_path, text), environ)
    assert PASSWORD not in message
    assert "mqtt." in message


def test_password_under_a_misspelled_key_does_not_appear_in_the_error(tmp_path: Path) -> None:
    message = config_error(write(tmp_path, MINIMAL + f'\n[mqtt]\npasswd = "{PASSWORD}"\n'))
    assert "mqtt.passwd" in message
    assert PASSWORD not in message


def test_error_for_a_bad_environment_value_names_the_variable(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "\n[mqtt]\nport = 8883\n")  # the file's own value is fine
    message = config_error(path, {"DCEM_AGENT_MQTT_PORT": "99999"})
    assert "DCEM_AGENT_MQTT_PORT" in message
    assert f"mqtt.port in {path}" not in message


@pytest.mark.parametrize(
    ("text", "needle"),
    [("[identity\nsite=", "not valid TOML"), (MINIMAL + "\n[nonsense]\nx = 1\n", "nonsense")],
)
def test_unusable_file_is_a_config_error(tmp_path: Path, text: str, needle: str) -> None:
    assert needle in config_error(write(tmp_path, text))


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    assert "does not exist" in config_error(tmp_path / "absent.toml")


def test_shipped_example_config_is_valid() -> None:
    config = load_agent(REPO / "agent" / "agent.example.toml")
    assert config.identity.site == "dc1"
    assert config.mqtt.port == 8883
    assert config.mqtt.tls is not None and config.mqtt.tls.ca_file == Path("/etc/dcem/ca.pem")
    assert config.sampling.publish_interval_s >= config.sampling.interval_s


def test_leaf_paths_include_nested_optional_sections() -> None:
    paths = leaf_paths(AgentConfig)
    assert {"mqtt.tls.ca_file", "mqtt.tls.cert_file", "mqtt.port", "identity.site", "spool.max_samples"} <= set(paths)
    assert "mqtt" not in paths and "mqtt.tls" not in paths  # sections are not leaves


def test_every_leaf_has_its_own_environment_variable() -> None:
    names = [f"{ENV_PREFIX}_{path.replace('.', '_')}".upper() for path in leaf_paths(AgentConfig)]
    assert len(names) == len(set(names))
    environ = {name: "x" for name in names}
    assert set(env_overrides(AgentConfig, ENV_PREFIX, environ)) == set(leaf_paths(AgentConfig))


def test_set_path_creates_sections() -> None:
    data: dict = {"mqtt": {"host": "h"}}
    set_path(data, "mqtt.tls.ca_file", "/ca.pem")
    set_path(data, "log.level", "debug")
    assert data == {"mqtt": {"host": "h", "tls": {"ca_file": "/ca.pem"}}, "log": {"level": "debug"}}


def test_section_level_errors_never_echo_secrets():
    from collector.writers import InfluxConfig

    with pytest.raises(ConfigError) as caught:
        load(InfluxConfig, None, "DCEM_TEST", {}, {"api": "v1", "url": "http://127.0.0.1:8086", "token": "tok-SECRET",
                                                   "database": "d", "password": "pw-SECRET"})
    assert "SECRET" not in str(caught.value)


def test_toml_text_reads_back_as_the_same_mapping():
    data = {"site_config": Path("/etc/dcem/site.yaml"), "flag": True,
            "mqtt": {"host": "127.0.0.1", "port": 1883, "password": 'a "quoted" \\ secret'},
            "ingest": {"sites": ["dc1", "dc2"], "flush_interval_s": 0.05},
            "meters": [{"id": "utility-1", "unit_id": 1}, {"id": "pv-1", "unit_id": 2}]}
    expected = {**data, "site_config": "/etc/dcem/site.yaml"}
    assert tomllib.loads(toml_text(data)) == expected
