#!/usr/bin/env bash
# The Python client's tests (Clients/python/tests, pytest) against real daemons: installs the
# client with its test dependencies into a virtual environment (VENV, default .venv) with
# `pip install ./Clients/python[test]`, as a user would, then runs pytest with the Swift build's
# binaries (TESSERA_BIN_DIR, default: this debug build). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${VENV:-.venv}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check "./Clients/python[test]"
export TESSERA_BIN_DIR="${TESSERA_BIN_DIR:-$(swift build --show-bin-path)}"
cd Clients/python/tests
exec "../../../$venv/bin/python" -m pytest -q -p no:cacheprovider "$@"
