#!/usr/bin/env bash
# Sets up .venv and runs the whole test suite: lint, unit tests, integration tests against the local Heap stand-in.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/python -m pytest unit_tests integration_tests "$@"
