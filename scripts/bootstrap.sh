#!/usr/bin/env bash
# Installs what the demo and the tests need on a fresh Debian machine: the servers (mosquitto, InfluxDB 1.x,
# VictoriaMetrics, from Debian's packages), openssl for test certificates, gcc and the Python headers for the
# compiled collector's test (tests/test_compiled.py), and a virtual environment in .venv with this project
# installed (pip install -e .[test]). Safe to run again; skips what is there.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
for pair in mosquitto:mosquitto mosquitto_sub:mosquitto-clients influxd:influxdb victoria-metrics:victoria-metrics openssl:openssl; do
  binary=${pair%%:*}; package=${pair#*:}
  command -v "$binary" >/dev/null 2>&1 || [ -x "/usr/sbin/$binary" ] || need_apt+=("$package")
done
python3 -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3-venv)
command -v gcc >/dev/null 2>&1 || need_apt+=(gcc)
python3 -c 'import pathlib, sys, sysconfig; sys.exit(not pathlib.Path(sysconfig.get_paths()["include"], "Python.h").is_file())' \
  || need_apt+=(python3-dev)
if [ ${#need_apt[@]} -gt 0 ]; then
  sudo_cmd=(); [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  echo "installing Debian packages: ${need_apt[*]}" >&2
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
if ! .venv/bin/python -c 'import agent, collector, common, pytest, hypothesis' 2>/dev/null \
   || [ pyproject.toml -nt .venv/.installed ]; then
  .venv/bin/pip install --quiet --disable-pip-version-check -e '.[test]'
  touch .venv/.installed
fi
