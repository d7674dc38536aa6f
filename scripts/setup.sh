#!/usr/bin/env bash
# Creates .venv (Python 3.11 or 3.12) with the connector installed editable (an edit takes effect at once) and
# its test tools. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3.12 || command -v python3)}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
pip_install() {  # quiet unless it fails: the build's own warnings are noise on every run
  local output
  output=$(.venv/bin/python -m pip install --quiet "$@" 2>&1) || { echo "$output" >&2; return 1; }
}
pip_install --upgrade pip
pip_install -e ".[tests]"
.venv/bin/destination-heap-analytics spec > /dev/null
