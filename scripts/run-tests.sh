#!/usr/bin/env bash
# Run the test suite from a clean clone: create the repository's .venv on first
# use, bring requirements-dev.txt up to date in it, then run pytest. Extra
# arguments go to pytest (e.g. ./scripts/run-tests.sh -k seaweed -x).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [[ ! -x .venv/bin/python ]]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt

exec .venv/bin/python -m pytest tests -q "$@"
