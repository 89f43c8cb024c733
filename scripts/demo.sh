#!/usr/bin/env bash
# The demo: installs what it needs, then runs a broker, a database, this machine's agent and the collector
# on loopback and prints what they measured. Extra arguments go to scripts/demo.py (--seconds N).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/python scripts/demo.py "$@"
