#!/usr/bin/env bash
# Run the test suite from a clean clone: create the repository's .venv on first
# use, bring requirements-dev.txt up to date in it, then run pytest.
#
# With no arguments, as CI runs it: the whole suite twice at the same time, once
# with --engine crt and once with --engine threads, each in two pytest-xdist
# processes (a file to each at a time) with servers of their own. The suite mostly
# waits on its servers and on the tool's start-up, so the four share two cores
# well (about 10 min). Both must pass. Extra arguments run one pytest over the
# whole suite with them instead (e.g. ./scripts/run-tests.sh -k seaweed -x, or
# --engine threads).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [[ ! -x .venv/bin/python ]]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt

if [[ $# -gt 0 ]]; then
    exec .venv/bin/python -m pytest tests -q "$@"
fi

threads_log=$(mktemp)
trap 'rm -f "$threads_log"' EXIT
.venv/bin/python -m pytest tests -q -p no:cacheprovider --engine threads -n 2 --dist loadfile >"$threads_log" 2>&1 &
threads_pid=$!

crt_status=0
.venv/bin/python -m pytest tests -q --engine crt -n 2 --dist loadfile || crt_status=$?
threads_status=0
wait "$threads_pid" || threads_status=$?

echo
echo "=== the whole suite with --engine threads (run alongside) ==="
cat "$threads_log"
echo "crt engine, whole suite: exit $crt_status; threads engine, whole suite: exit $threads_status"
[[ $crt_status -eq 0 && $threads_status -eq 0 ]]
