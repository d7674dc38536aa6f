#!/usr/bin/env bash
# Creates .venv (Python 3.11 or 3.12) with the connector and its test tools installed. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip 2>&1 | grep -v "is ignored" || true
.venv/bin/python -m pip install --quiet -e ".[tests]" 2>&1 | grep -v "is ignored" || true
.venv/bin/destination-heap-analytics spec > /dev/null
