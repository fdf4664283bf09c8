#!/usr/bin/env bash
# Run the test suite from a clean clone: create the repository's .venv on first
# use, bring requirements-dev.txt up to date in it, then run pytest.
#
# With no arguments, as CI runs it, three passes at the same time:
#   - the whole suite with --engine crt, in two pytest-xdist processes (a file to each at a time)
#     with servers of their own;
#   - the tests whose outcome depends on the engine again with --engine threads, likewise (what
#     does not, tests/conftest.py's ENGINE_INDEPENDENT_MODULES, runs in the crt pass only);
#   - the unit tests against the oldest boto3, botocore and awscrt requirements.txt allows
#     (scripts/test-floor.sh, a virtualenv of its own).
# The suite mostly waits on its servers and on the tool's start-up, so the passes share two cores
# well. All must pass. Extra arguments run one pytest over the whole suite with them instead (e.g.
# ./scripts/run-tests.sh -k seaweed -x, or --engine threads).
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
floor_log=$(mktemp)
trap 'rm -f "$threads_log" "$floor_log"' EXIT
.venv/bin/python -m pytest tests -q -p no:cacheprovider --engine threads -m "not engine_independent" -n 3 \
    --dist loadfile >"$threads_log" 2>&1 &
threads_pid=$!
./scripts/test-floor.sh >"$floor_log" 2>&1 &
floor_pid=$!

crt_status=0
.venv/bin/python -m pytest tests -q --engine crt -n 4 --dist loadfile || crt_status=$?
threads_status=0
wait "$threads_pid" || threads_status=$?
floor_status=0
wait "$floor_pid" || floor_status=$?

echo
echo "=== the tests that depend on the engine, with --engine threads (run alongside) ==="
cat "$threads_log"
echo
echo "=== the unit tests at the dependency floor (run alongside) ==="
cat "$floor_log"
echo "crt engine, whole suite: exit $crt_status; threads engine: exit $threads_status; dependency floor: exit $floor_status"
[[ $crt_status -eq 0 && $threads_status -eq 0 && $floor_status -eq 0 ]]
