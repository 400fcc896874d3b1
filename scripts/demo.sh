#!/usr/bin/env bash
# The demo command: set-up from nothing, then run the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/python -m examples.demo "$@"
