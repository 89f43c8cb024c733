#!/usr/bin/env bash
# The demo: installs what it needs, then runs a broker, a database, the collector, this machine's agent and a
# simulated data-center day on loopback, and prints what was stored. Extra arguments go to scripts/demo.py
# (--hours N, --step S).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/python scripts/demo.py "$@"
