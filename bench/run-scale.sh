#!/usr/bin/env bash
# Issue #7's scale measurements (bench/scale.py) on a local SeaweedFS server, from a clean clone:
# create or reuse the repository's .venv, bring the tool's requirements and bench/requirements.txt
# (SeaweedFS among them) up to date in it, then run bench/scale.py. Extra arguments go to scale.py
# (e.g. ./bench/run-scale.sh --quick, ./bench/run-scale.sh --only listing). Results land in
# bench/results/scale-<timestamp>/ and bench/results/scale-latest/.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [[ ! -x .venv/bin/python ]]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt -r bench/requirements.txt

exec .venv/bin/python bench/scale.py "$@"
