#!/usr/bin/env bash
# Benchmark s3_bulk_transfer.py against rclone (and the AWS CLI for server-side
# copies) on a local SeaweedFS server, from a clean clone: install rclone with
# apt if it is missing, create or reuse the repository's .venv, bring the tool's
# requirements and bench/requirements.txt up to date in it, then run
# bench/bench.py. Extra arguments go to bench.py (e.g. ./bench/run.sh --quick,
# ./bench/run.sh --only small --repetitions 5). Results land in bench/results/.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! command -v rclone >/dev/null 2>&1; then
    # Debian's package (1.60 on bookworm); needs root, as on a fresh test machine.
    apt-get install -y rclone || { apt-get update && apt-get install -y rclone; }
fi
if [[ ! -x .venv/bin/python ]]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt -r bench/requirements.txt

exec .venv/bin/python bench/bench.py "$@"
