#!/usr/bin/env bash
# Validates the HTTP gateway with TOPCAT's TAP validator: starts a local cluster (real
# scheduler, workers and gateway on loopback, free ports), loads a small generated catalog,
# runs `stilts taplint` against /tap and fails on any error (E-) line. Warnings are printed.
# Needs stilts (Debian: apt-get install stilts) and the Swift build (TESSERA_BIN_DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v stilts >/dev/null || { echo "stilts not found: apt-get install -y stilts" >&2; exit 1; }
bin="${TESSERA_BIN_DIR:-$(swift build --show-bin-path)}"
work="$(mktemp -d)"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# The client port P needs P + 1 free too (the worker port).
while :; do
  port="$(free_port)"
  python3 -c "import socket,sys; s=socket.socket(); s.bind(('127.0.0.1', $port + 1))" 2>/dev/null && break
done
http="$(free_port)"
"$bin/tessera" local --workers 2 --port "$port" --http "127.0.0.1:$http" --anonymous --data "$work/data" \
  --exit-with-parent $$ >"$work/local.log" 2>&1 &
cluster=$!
trap 'kill $cluster 2>/dev/null; wait $cluster 2>/dev/null; rm -rf "$work"' EXIT
"$bin/tessera" generate catalog --rows 20000 --seed 3 --out "$work/catalog" >/dev/null
for _ in $(seq 1 300); do
  python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$http/tap/availability', timeout=1)" 2>/dev/null && break
  sleep 0.1
done
TESSERA_KEY="$work/data/keys/user-local.key" "$bin/tessera" ingest object "$work"/catalog/*.fits \
  --scheduler "tcp://127.0.0.1:$port" --max-rows-per-shard 4000 >/dev/null 2>&1
stilts taplint tapurl="http://127.0.0.1:$http/tap" report=EWF >"$work/taplint.txt" 2>&1 || true
[ -n "${TAPLINT_KEEP:-}" ] && cp "$work/taplint.txt" "$TAPLINT_KEEP"
grep -E '^(E|W|F)-' "$work/taplint.txt" || true
tail -1 "$work/taplint.txt"
if grep -qE '^E-' "$work/taplint.txt" || ! grep -q 'Totals: Errors: 0;' "$work/taplint.txt"; then
  echo "taplint found errors in the gateway (above)" >&2
  exit 1
fi
echo "taplint: no errors"
