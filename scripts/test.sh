#!/usr/bin/env bash
# Sets up the venvs and runs the whole test suite: lint, then unit and integration tests (against the local Heap
# stand-in) twice: on the pure-Python editable install (.venv), and on the install with the mapping compiled by
# mypyc (.venv-compiled), the build the container image ships. The container tests run in the first pass only
# (the image is the same for both). Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
DESTINATION_HEAP_COMPILE=1 bash scripts/setup.sh
.venv/bin/ruff check .
echo "== pure Python (.venv)"
.venv/bin/python -m pytest unit_tests integration_tests "$@"
echo "== mapping compiled by mypyc (.venv-compiled)"
# -P and the import before pytest's: the installed (compiled) package is the one under test, not the source tree
# that pytest puts on sys.path for integration_tests' sake
DESTINATION_HEAP_COMPILE=1 .venv-compiled/bin/python -P -c \
  'import sys, destination_heap_analytics, pytest; sys.exit(pytest.main(sys.argv[1:]))' \
  unit_tests integration_tests --ignore=integration_tests/test_container.py "$@"
