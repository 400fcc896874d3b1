#!/usr/bin/env bash
# Runs every benchmark (each starts its own private redis-server) and prints the tables.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
.venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[dev,bench]"
for bench in e2e_aiogram hot_path flush_throughput memory gc_pause idle_turn restart crash_loss scaling \
    multi_process handover_latency kept_connection; do
    echo "== benchmarks/$bench.py"
    .venv/bin/python -m "benchmarks.$bench"
done
echo "== benchmarks/e2e_aiogram.py --freeze-gc"
.venv/bin/python -m benchmarks.e2e_aiogram --freeze-gc
