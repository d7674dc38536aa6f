#!/usr/bin/env bash
# Sets up .venv and runs the benchmark: the installed connector against the local Heap stand-in on 127.0.0.1,
# one table, written to benchmarks/results.md (--quick: a 20 s paced run and the memory rows at a tenth of their
# size, written to benchmarks/results-quick.md). Arguments go to benchmarks/benchmark.py.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python benchmarks/benchmark.py "$@"
