#!/usr/bin/env bash
# Runs every test: unit tests of each module and end-to-end tests that start real
# tessera-scheduler and tessera-worker processes on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
swift build --build-tests
swift test --skip-build
