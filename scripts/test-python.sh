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
# What the tests, and the daemons, executors and browsers they start, put in the temporary
# folder goes in one folder of this run's, removed at the end (over 2 GB a run; a CI host shares
# its /tmp). TESSERA_KEEP_TEST_FILES=1 keeps it.
scratch="$(mktemp -d "${TMPDIR:-/tmp}/tessera-pytest-XXXXXX")"
if [ -n "${TESSERA_KEEP_TEST_FILES:-}" ]; then
  trap 'echo "the Python tests'"'"' files are kept in $scratch" >&2' EXIT
else
  trap 'rm -rf "$scratch" || true' EXIT
fi
export TMPDIR="$scratch"
cd Clients/python/tests
# In the background, so that a signal to this script (a CI timeout) reaches pytest, which
# stops its clusters, before the folder goes.
"../../../$venv/bin/python" -m pytest -q -p no:cacheprovider --basetemp "$scratch/pytest" "$@" &
pytest_pid=$!
trap 'kill -TERM "$pytest_pid" 2>/dev/null; wait "$pytest_pid"; exit 143' TERM
trap 'kill -TERM "$pytest_pid" 2>/dev/null; wait "$pytest_pid"; exit 130' INT
wait "$pytest_pid"
