#!/usr/bin/env bash
# Sets up the venvs (.venv-compiled, the build the image ships, and the pure-Python .venv beside it) and runs
# the benchmark (installed connector vs the local Heap stand-in on 127.0.0.1). Arguments go to
# benchmarks/benchmark.py, e.g. --quick for a smoke run. Results: benchmarks/results.md.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
DESTINATION_HEAP_COMPILE=1 bash scripts/setup.sh
.venv/bin/python benchmarks/benchmark.py "$@"
