#!/usr/bin/env bash
# Scheduler benchmark, side by side with the Dask anchor in the same run:
#   scripts/bench-scheduler.sh [TASKS]
# Needs a virtual environment with dask and distributed (VENV, default .venv):
#   python3 -m venv .venv && .venv/bin/pip install dask distributed pandas pyarrow astropy
set -euo pipefail
cd "$(dirname "$0")/.."
tasks="${1:-20000}"
venv="${VENV:-.venv}"
anchor="../shared/bench/anchor_scheduler.py"
swift build -c release >&2
.build/release/tessera bench scheduler --tasks "$tasks"
if [ -x "$venv/bin/python" ] && [ -f "$anchor" ]; then
  "$venv/bin/python" "$anchor" --tasks "$tasks" 2>/dev/null
else
  echo "skipping the Dask anchor: no $venv/bin/python or $anchor" >&2
fi
