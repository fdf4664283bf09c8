#!/usr/bin/env bash
# Run the test suite from a clean clone: create the repository's .venv on first
# use, bring requirements-dev.txt up to date in it, then run pytest.
#
# With no arguments, as CI runs it: the whole suite with the crt engine (in two
# pytest-xdist processes, a file to each at a time), and at the same time the
# tests that move object bodies (copy, resume, integrity, faults, checksums,
# expiring credentials) again with the threads engine; every process has servers
# of its own. The suite mostly waits on its servers, so the three share two
# cores well. All must pass. Extra arguments run one
# pytest over the whole suite with them instead (e.g. ./scripts/run-tests.sh -k
# seaweed -x, or --engine threads).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [[ ! -x .venv/bin/python ]]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt

if [[ $# -gt 0 ]]; then
    exec .venv/bin/python -m pytest tests -q "$@"
fi

THREADS_TESTS=(tests/test_copy.py tests/test_resume.py tests/test_integrity.py tests/test_faults.py
               tests/test_checksums.py tests/test_expiring_credentials.py)
threads_log=$(mktemp)
trap 'rm -f "$threads_log"' EXIT
.venv/bin/python -m pytest "${THREADS_TESTS[@]}" -q -p no:cacheprovider --engine threads >"$threads_log" 2>&1 &
threads_pid=$!

crt_status=0
.venv/bin/python -m pytest tests -q --engine crt -n 2 --dist loadfile || crt_status=$?
threads_status=0
wait "$threads_pid" || threads_status=$?

echo
echo "=== the same body-moving tests with --engine threads (run alongside) ==="
cat "$threads_log"
echo "crt engine, whole suite: exit $crt_status; threads engine, body-moving tests: exit $threads_status"
[[ $crt_status -eq 0 && $threads_status -eq 0 ]]
