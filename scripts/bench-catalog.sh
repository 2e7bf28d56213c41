#!/usr/bin/env bash
# Catalog benchmarks, side by side with the Dask anchor in the same run:
#   scripts/bench-catalog.sh [DIR] [ROWS]
# DIR holds the anchor's data (written once by anchor_catalog.py: Parquet for Dask, FITS for
# Tessera, which ingests it once into DIR/tessera-*). Needs a virtual environment with the
# anchor's packages (VENV, default .venv):
#   python3 -m venv .venv && .venv/bin/pip install dask distributed pandas pyarrow astropy
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${1:-/tmp/tessera-anchor}"
rows="${2:-20000000}"
venv="${VENV:-.venv}"
anchor="../shared/bench/anchor_catalog.py"
[ -x "$venv/bin/python" ] && [ -f "$anchor" ] || { echo "needs $venv/bin/python (with dask, pandas, pyarrow, astropy) and $anchor" >&2; exit 1; }
"$venv/bin/python" "$anchor" --rows "$rows" --out "$dir" --only-data
swift build -c release >&2
.build/release/tessera bench catalog --data "$dir"
.build/release/tessera bench cone --data "$dir"
.build/release/tessera bench plan
"$venv/bin/python" "$anchor" --rows "$rows" --out "$dir" 2>/dev/null
