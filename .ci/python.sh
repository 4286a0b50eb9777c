#!/usr/bin/env bash
# The Python SDK (sdk/python): install it with Flask, Django and pytest into a virtual
# environment made for this run, and run its tests against real `sessync node` processes
# (target/debug/sessync, built here if missing).
set -euo pipefail
cd "$(dirname "$0")/.."

command -v python3 >/dev/null || { echo "python3 is missing" >&2; exit 1; }
if [ ! -x target/debug/sessync ]; then
  cargo build --bin sessync
fi

venv="$(mktemp -d "${TMPDIR:-/tmp}/sessync-py.XXXXXX")"
trap 'rm -rf "$venv"' EXIT
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
# cryptography makes the TLS tests' certificates (the SDK itself needs only the standard library).
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check ./sdk/python flask django pytest cryptography

export SESSYNC_BIN="$PWD/target/debug/sessync"
status=0
# Run from outside the source tree, so the tests import the installed package.
(cd sdk/python/tests && timeout 600 "$venv/bin/python" -m pytest -q -p no:cacheprovider .) || status=$?
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests: treating that as a failure" >&2
  exit 1
fi
exit "$status"
