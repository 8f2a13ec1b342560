#!/usr/bin/env bash
# Create .venv and install analyzer with the extras named in $ANALYZER_EXTRAS (default: dev).
# Set-up that is already done (same pyproject.toml, the extras already installed) is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
EXTRAS="${ANALYZER_EXTRAS:-dev}"
STAMP=.venv/.analyzer-installed
PROJECT="$(sha256sum pyproject.toml | cut -c1-16)"
if [ -x .venv/bin/python ] && [ -f "$STAMP" ] && [ "$(head -n 1 "$STAMP")" = "$PROJECT" ]; then
    missing=0
    for extra in ${EXTRAS//,/ }; do
        grep -qx "$extra" "$STAMP" || missing=1
    done
    [ "$missing" = 0 ] && exit 0
fi
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
# setuptools says "Editable installation … be careful with folders named like your package" for
# every editable install whose packages live in more than one folder (analyzer/, plugins/): known.
PYTHONWARNINGS="ignore:Editable installation" \
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[${EXTRAS}]"
{
    echo "$PROJECT"
    [ -f "$STAMP" ] && [ "$(head -n 1 "$STAMP")" = "$PROJECT" ] && tail -n +2 "$STAMP"
    echo "${EXTRAS//,/$'\n'}"
} | awk '!seen[$0]++' > "$STAMP.new"
mv "$STAMP.new" "$STAMP"
