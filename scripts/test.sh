#!/usr/bin/env bash
# Install everything into .venv and run the whole test suite. Exits non-zero if any test fails
# or if no test ran (pytest exit code 5).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -e ".[test]"
.venv/bin/python -m pytest "$@"
