#!/usr/bin/env bash
# Creates a venv (Python 3.11 or 3.12) with the connector and its test tools installed. Idempotent.
#   default: .venv, an editable install in pure Python (an edit takes effect at once);
#   DESTINATION_HEAP_COMPILE=1: .venv-compiled, a regular install with the mapping compiled by mypyc, as the
#   container image has it. Needs a C compiler and Python's headers; pip rebuilds it on every run, so it is
#   never older than the source.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
# What the compiled build needs besides Python: a C compiler and Python's headers. Installed from Debian when
# missing and this runs as root (as the container's build stage does); otherwise a message says what to install.
compiler_ready() {
  command -v cc >/dev/null 2>&1 &&
    "$PYTHON" -c 'import os, sysconfig, sys; sys.exit(not os.path.exists(sysconfig.get_paths()["include"] + "/Python.h"))'
}
if [ "${DESTINATION_HEAP_COMPILE:-0}" = 1 ]; then
  if ! compiler_ready; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
      echo "setup: installing a C compiler and Python's headers for the compiled build (apt-get)" >&2
      apt-get update -qq || true
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc libc6-dev python3-dev >/dev/null
    fi
    compiler_ready || {
      echo "setup: the compiled build needs a C compiler (cc) and Python's headers (Python.h) for $PYTHON;" \
        "install them (Debian: apt-get install gcc python3-dev) and run again" >&2
      exit 2
    }
  fi
  venv=.venv-compiled
  package=".[tests]"
else
  venv=.venv
  package=(-e ".[tests]")
fi
if [ ! -x "$venv/bin/python" ]; then
  "$PYTHON" -m venv "$venv"
fi
pip_install() {  # quiet unless it fails: the build's own warnings are noise on every run
  local output
  output=$("$venv/bin/python" -m pip install --quiet "$@" 2>&1) || { echo "$output" >&2; return 1; }
}
pip_install --upgrade pip
pip_install "${package[@]}"
"$venv/bin/destination-heap-analytics" spec > /dev/null
