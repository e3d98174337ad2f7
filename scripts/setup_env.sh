#!/usr/bin/env bash
# Sourced by demo.sh and test.sh: create .venv if missing, install the pinned requirements and
# this checkout itself in editable mode (so scripts/*.py and `python -m scripts.x` import the
# library from anywhere). The requirements are keyed by a hash of the requirements files: when
# they change, pip installs exactly what they now say; when they have not changed, nothing is
# reinstalled. The editable install is checked on its own, not by that stamp: a venv whose
# requirements are current may lack it, or serve another checkout.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PYTHON_BIN="${PYTHON_BIN:-python3.11}"
command -v "$PYTHON_BIN" >/dev/null 2>&1 || PYTHON_BIN=python3

REQS=("$ROOT/requirements.txt" "$ROOT/requirements-dev.txt")
HASH="$(cat "${REQS[@]}" | sha256sum | cut -d' ' -f1)"
STAMP="$VENV/.requirements.sha256"

if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating $VENV with $("$PYTHON_BIN" --version)"
    "$PYTHON_BIN" -m venv "$VENV"
fi
if [ "$(cat "$STAMP" 2>/dev/null || true)" != "$HASH" ]; then
    echo "[setup] installing requirements (torch is large: this takes a few minutes once)"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -r "$ROOT/requirements.txt" -r "$ROOT/requirements-dev.txt"
    if [ "${INSTALL_VISDOM:-0}" = "1" ]; then
        # visdom is an sdist that needs an older setuptools to build; live display is optional.
        "$VENV/bin/python" -m pip install --quiet "setuptools<81" &&
            "$VENV/bin/python" -m pip install --quiet --no-build-isolation visdom ||
            echo "[setup] warning: visdom failed to install; live display stays off"
    fi
    echo "$HASH" > "$STAMP"
else
    echo "[setup] $VENV is up to date with the requirements"
fi

serves_this_checkout() {  # does the venv, isolated from PYTHONPATH and cwd, import our util?
    "$VENV/bin/python" -I -c 'import os, sys, util.cli
sys.exit(os.path.realpath(util.cli.__file__)
         != os.path.realpath(os.path.join(sys.argv[1], "util", "cli.py")))' "$ROOT" 2>/dev/null
}
if ! serves_this_checkout; then
    echo "[setup] installing $ROOT in editable mode"
    LOG="$VENV/.editable-install.log"
    # Offline with the venv's setuptools; else pip fetches a build backend.
    if ! { "$VENV/bin/python" -m pip install --no-deps --no-build-isolation -e "$ROOT" ||
        "$VENV/bin/python" -m pip install --no-deps -e "$ROOT"; } >"$LOG" 2>&1 ||
        ! serves_this_checkout; then
        cat "$LOG" >&2
        echo "[setup] error: the editable install of $ROOT failed (log above, $LOG)" >&2
        exit 1
    fi
fi
export PATH="$VENV/bin:$PATH"
PY="$VENV/bin/python"
