#!/usr/bin/env bash
# Install everything into .venv, run the test suite (arguments go to pytest), then build the documentation
# site strictly (mkdocs.yml; a broken link or a page missing from the nav fails). Exits non-zero if any test
# fails, if no test ran (pytest exit code 5) or if the docs do not build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -e ".[test]"
rc=0
.venv/bin/python -m pytest "$@" || rc=$?
SITE=$(mktemp -d)
trap 'rm -rf "$SITE"' EXIT
docs_rc=0
NO_MKDOCS_2_WARNING=1 .venv/bin/python -m mkdocs build --strict --site-dir "$SITE" || docs_rc=$?
if [ "$docs_rc" -ne 0 ]; then echo "test.sh: mkdocs build --strict failed (see above)" >&2; fi
if [ "$rc" -ne 0 ]; then exit "$rc"; fi
exit "$docs_rc"
