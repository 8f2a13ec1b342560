#!/usr/bin/env bash
# Create .venv and install analyzer with the extras named in $ANALYZER_EXTRAS (default: dev).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[${ANALYZER_EXTRAS:-dev}]"
