#!/usr/bin/env bash
# Sets up .venv and runs the whole test suite once: lint, then unit and integration tests (against the local
# Heap stand-in, the container image and PyAirbyte). Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/python -m pytest unit_tests integration_tests "$@"
