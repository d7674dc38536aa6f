#!/usr/bin/env bash
# Sets up .venv, starts the local Heap stand-in, loads sample_files/ through each API type and shows what
# "Heap" received. Nothing leaves this machine: the stand-in listens on 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python scripts/demo.py "$@"
