#!/usr/bin/env bash
# Runs every test: unit tests of each module, end-to-end tests that start real
# tessera-scheduler and tessera-worker processes on loopback, the deployment files' checks
# (scripts/check-deploy.sh), the HTTP gateway against TOPCAT's TAP validator
# (scripts/check-taplint.sh, stilts taplint), the Python client's tests against real daemons and its notebook
# (scripts/test-python.sh, in a virtual environment; Aladin's Hipsgen is their reference HiPS builder), and a short run of every fuzz
# target (FUZZ_SECONDS each, default 30; 0 skips them; long runs: scripts/fuzz.sh TARGET SECONDS).
set -euo pipefail
cd "$(dirname "$0")/.."
# From a fresh clone, the builds, the virtual environment and the tests' files (the Python tests'
# clusters alone 2.6 GB, removed at the end) take about 8 GB: with less free, dozens of tests fail
# at once with "no space left on device", so say so first.
for where in . "${TMPDIR:-/tmp}"; do
  free_kb=$(df -Pk "$where" 2>/dev/null | awk 'NR == 2 { print $4 }') || true
  free_mb=$(( ${free_kb:-8388608} / 1024 ))
  if [ "$free_mb" -lt 8192 ]; then
    echo "warning: $(cd "$where" && pwd) has only $free_mb MB free; building and testing from a fresh clone takes about 8 GB" >&2
  fi
done
scripts/setup.sh stilts chromium chromium-driver aladin
swift build --build-tests
swift test --skip-build
TESSERA_BIN_DIR="$(swift build --show-bin-path)" scripts/check-deploy.sh
TESSERA_BIN_DIR="$(swift build --show-bin-path)" scripts/check-taplint.sh
scripts/test-python.sh
fuzz_seconds="${FUZZ_SECONDS:-30}"
if [ "$fuzz_seconds" -gt 0 ]; then
  scripts/fuzz.sh all "$fuzz_seconds"
fi
