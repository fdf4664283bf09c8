#!/usr/bin/env bash
# Run the unit tests (every test that starts no S3 server: pytest -m "not servers", the marker
# tests/conftest.py sets) against the oldest boto3, botocore and awscrt that requirements.txt
# allows, in a virtualenv made from scratch: what requirements.txt promises is then what was tested.
#
# The floor is read from requirements.txt itself (each NAME>=VERSION becomes NAME==VERSION, a pip
# constraint), so raising it there is all it takes. The venv is .venv-floor (git ignores it), or
# $FLOOR_VENV; it is recreated on every run. Extra arguments go to pytest.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

venv="${FLOOR_VENV:-.venv-floor}"
constraints=$(mktemp)
tools=$(mktemp)
trap 'rm -f "$constraints" "$tools"' EXIT
sed -nE 's/^([A-Za-z0-9_.-]+)(\[[^]]*\])?>=([^ ,;#]+).*/\1==\3/p' requirements.txt >"$constraints"
if [[ ! -s "$constraints" ]]; then
    echo "test-floor: no NAME>=VERSION floor found in requirements.txt" >&2
    exit 1
fi
# The unit tests need pytest, and cryptography only because collecting tests/test_security.py imports
# it; the servers (moto, SeaweedFS) stay out, which makes the venv in seconds rather than a minute.
# Their versions are requirements-dev.txt's.
grep -E '^(pytest|cryptography)([^-A-Za-z0-9_.]|$)' requirements-dev.txt >"$tools"

python3 -m venv --clear "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -c "$constraints" -r requirements.txt -r "$tools"

# Say what was tested, and refuse to pass on anything but the floor.
"$venv/bin/python" - "$constraints" <<'PY'
import importlib.metadata
import sys

wanted = dict(line.strip().split("==") for line in open(sys.argv[1]) if line.strip())
installed = {name: importlib.metadata.version(name) for name in wanted}
print("dependency floor:", ", ".join(f"{name} {version}" for name, version in installed.items()))
wrong = {name: version for name, version in installed.items() if version != wanted[name]}
if wrong:
    sys.exit(f"test-floor: installed {wrong}, not the floor {wanted}")
PY

exec "$venv/bin/python" -m pytest tests -q -p no:cacheprovider -m "not servers" "$@"
