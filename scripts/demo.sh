#!/usr/bin/env bash
# Set up (first time) and run the main job on the bundled example images.
set -euo pipefail
cd "$(dirname "$0")/.."
ANALYZER_EXTRAS="${ANALYZER_EXTRAS:-dev}" scripts/setup.sh
exec .venv/bin/analyzer run examples --plugins metadata "$@"
