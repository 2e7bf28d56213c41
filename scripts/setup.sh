#!/usr/bin/env bash
# Installs the system libraries Tessera links against (Debian/Ubuntu), when they are missing,
# and any packages named as arguments.
set -euo pipefail
# Extra packages may be named as arguments (scripts/test.sh adds stilts, the TAP validator).
pkgs="libzmq3-dev libcfitsio-dev liblz4-dev libsqlite3-dev zlib1g-dev libxml2-dev protobuf-compiler pkg-config $*"
missing=""
for p in $pkgs; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  echo "installing:$missing" >&2
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq $missing
fi
