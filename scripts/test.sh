#!/usr/bin/env bash
# Install (once) and run the whole test suite: lint, then pytest. Fails when no test ran.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh

echo "[test] ruff"
"$PY" -m ruff check .
echo "[test] pytest"
set +e
"$PY" -m pytest -q -p no:cacheprovider "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
    echo "[test] error: pytest collected no tests" >&2
    exit 1
fi
exit "$status"
