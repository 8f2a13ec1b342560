#!/usr/bin/env bash
# Set up (first time) and run every check: lint, format, types, then the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
ANALYZER_EXTRAS="${ANALYZER_EXTRAS:-dev,clip,llm,grid}" scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
exec .venv/bin/python -m pytest "$@"
