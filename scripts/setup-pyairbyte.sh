#!/usr/bin/env bash
# Sets up PyAirbyte (PyPI `airbyte` 0.71.x) in a venv of its own, apart from the connector's .venv, plus the
# real source-faker installed the way PyAirbyte installs sources (its own venv, in <venv>/connectors/).
# Used by integration_tests/test_pyairbyte.py. Idempotent and cached: a run that finds both ready only checks
# them (well under a second); from scratch it takes about 2-3 minutes and 1.2 GB.
#
# The venv lives outside the work tree by default, so that it survives fresh clones (CI clones the repo anew
# on the same machine): ${XDG_CACHE_HOME:-~/.cache}/destination-heap-analytics/pyairbyte-0.71.
# PYAIRBYTE_VENV overrides the location. Prints the venv's path on stdout; progress goes to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE_HOME="${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}"
VENV="${PYAIRBYTE_VENV:-$CACHE_HOME/destination-heap-analytics/pyairbyte-0.71}"
CONNECTORS="$VENV/connectors"
AIRBYTE_SPEC="airbyte>=0.71,<0.72"
FAKER_PIP_URL="airbyte-source-faker"
# PyAirbyte 0.71 needs Python 3.10 .. 3.12.
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3.12 || command -v python3)}"
# No connector registry to reach, no telemetry, and no uv on these machines: PyAirbyte must not need them.
export AIRBYTE_OFFLINE_MODE=1 AIRBYTE_NO_UV=1 DO_NOT_TRACK=1 PIP_DISABLE_PIP_VERSION_CHECK=1

say() { echo "setup-pyairbyte: $*" >&2; }
quiet_pip() { grep -v "is ignored: it is neither a file nor a directory" >&2 || true; }

mkdir -p "$(dirname "$VENV")"
# Two runs at once (a developer's tests and CI, say) must not build the same venv together.
exec 9>"$VENV.lock"
flock 9

# Readiness is checked cheaply (importing airbyte takes seconds): a stamp written once the full check passed,
# plus the installed version and the executables.
airbyte_ready() {
  [ -f "$VENV/.airbyte-ready" ] && [ -x "$VENV/bin/python" ] &&
    "$VENV/bin/python" -c 'from importlib.metadata import version as v; assert v("airbyte").startswith("0.71.")' \
      2>/dev/null
}

faker_ready() {
  [ -f "$CONNECTORS/.faker-ready" ] && [ -x "$CONNECTORS/.venv-source-faker/bin/source-faker" ]
}

if ! airbyte_ready; then
  started=$(date +%s)
  say "installing PyAirbyte ($AIRBYTE_SPEC) into $VENV: a few minutes"
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip 2>&1 | quiet_pip
  "$VENV/bin/python" -m pip install --quiet "$AIRBYTE_SPEC" 2>&1 | quiet_pip
  "$VENV/bin/python" -c 'import airbyte' >/dev/null 2>&1 || { say "airbyte did not install: import fails"; exit 1; }
  touch "$VENV/.airbyte-ready"
  airbyte_ready || { say "airbyte 0.71.x did not install"; exit 1; }
  say "PyAirbyte installed in $(($(date +%s) - started)) s"
fi

if ! faker_ready; then
  started=$(date +%s)
  say "installing source-faker through PyAirbyte into $CONNECTORS"
  rm -rf "$CONNECTORS"
  mkdir -p "$CONNECTORS"
  log="$CONNECTORS/install.log"
  (cd "$CONNECTORS" && AIRBYTE_LOGGING_ROOT="$CONNECTORS/logs" "$VENV/bin/python" - "$CONNECTORS" "$FAKER_PIP_URL") \
    >"$log" 2>&1 <<'PY' || { tail -n 40 "$log" >&2; say "source-faker did not install"; exit 1; }
import sys
from pathlib import Path

import airbyte as ab

install_root, pip_url = Path(sys.argv[1]), sys.argv[2]
source = ab.get_source("source-faker", pip_url=pip_url, install_root=install_root, install_if_missing=True)
source.executor.ensure_installation()
PY
  "$CONNECTORS/.venv-source-faker/bin/source-faker" spec >/dev/null 2>&1 ||
    { tail -n 40 "$log" >&2; say "source-faker does not run"; exit 1; }
  touch "$CONNECTORS/.faker-ready"
  say "source-faker installed in $(($(date +%s) - started)) s"
fi
say "ready: airbyte $("$VENV/bin/python" -c 'from importlib.metadata import version as v; print(v("airbyte"))') in $VENV"
echo "$VENV"
