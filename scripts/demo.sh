#!/usr/bin/env bash
# Sets up a fresh machine (system libraries, release build) and runs `tessera demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
swift build -c release
exec .build/release/tessera demo "$@"
