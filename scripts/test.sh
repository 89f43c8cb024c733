#!/usr/bin/env bash
# Runs the whole test suite against real servers (installed first if missing). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/python -m pytest "$@"
