#!/usr/bin/env bash
# Sets up .venv and runs the whole test suite once: lint, then unit and integration tests (against the local
# Heap stand-in, the container image and PyAirbyte), in two pytest-xdist workers that take a test file each
# at a time (a file's fixtures, such as the image or PyAirbyte's venv, are set up once). Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/python -m pytest -n 2 --dist loadfile unit_tests integration_tests "$@"
