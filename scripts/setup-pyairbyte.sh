#!/usr/bin/env bash
# Creates .venv-pyairbyte: PyAirbyte (PyPI `airbyte` 0.71.x) in a venv of its own, apart from the connector's
# .venv, plus the real source-faker installed the way PyAirbyte installs sources (its own venv, under
# .venv-pyairbyte/connectors/). Idempotent and cached: a second run that finds both ready only checks them.
# Used by integration_tests/test_pyairbyte.py. Takes a few minutes and ~1 GB from scratch.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${PYAIRBYTE_VENV:-$PWD/.venv-pyairbyte}"
CONNECTORS="$VENV/connectors"
AIRBYTE_SPEC="airbyte>=0.71,<0.72"
FAKER_SPEC="airbyte-source-faker"
# PyAirbyte 0.71 needs Python 3.10 .. 3.12.
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3.12 || command -v python3)}"
export AIRBYTE_OFFLINE_MODE=1 AIRBYTE_NO_UV=1 DO_NOT_TRACK=1 PIP_DISABLE_PIP_VERSION_CHECK=1

airbyte_ready() {
  [ -x "$VENV/bin/python" ] && "$VENV/bin/python" - <<'EOF' 2>/dev/null
from importlib.metadata import version
assert version("airbyte").startswith("0.71."), version("airbyte")
EOF
}

faker_ready() {
  [ -x "$CONNECTORS/.venv-source-faker/bin/source-faker" ] &&
    "$CONNECTORS/.venv-source-faker/bin/source-faker" spec >/dev/null 2>&1
}

if ! airbyte_ready; then
  echo "setup-pyairbyte: installing PyAirbyte into $VENV (a few minutes)" >&2
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  "$VENV/bin/python" -m pip install --quiet "$AIRBYTE_SPEC"
  airbyte_ready || { echo "setup-pyairbyte: airbyte 0.71.x did not install" >&2; exit 1; }
fi

if ! faker_ready; then
  echo "setup-pyairbyte: installing source-faker through PyAirbyte into $CONNECTORS" >&2
  rm -rf "$CONNECTORS/.venv-source-faker"
  mkdir -p "$CONNECTORS"
  "$VENV/bin/python" - "$CONNECTORS" "$FAKER_SPEC" <<'EOF'
import sys
from pathlib import Path

import airbyte as ab

install_root, pip_url = Path(sys.argv[1]), sys.argv[2]
source = ab.get_source("source-faker", pip_url=pip_url, install_root=install_root, install_if_missing=True)
source.executor.ensure_installation()
EOF
  faker_ready || { echo "setup-pyairbyte: source-faker did not install" >&2; exit 1; }
fi
echo "setup-pyairbyte: ready ($("$VENV/bin/python" -c 'from importlib.metadata import version as v; print("airbyte", v("airbyte"))'))" >&2
