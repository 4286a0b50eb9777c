#!/usr/bin/env bash
# The Node.js SDK (sdk/node) and the express example (examples/express_login): install
# their locked dependencies with `npm ci`, type-check the declarations (`tsc --noEmit`),
# and run their tests (node's test runner) against real `sessync node` processes
# (target/debug/sessync, built here if missing; $SESSYNC_BIN overrides it).
set -euo pipefail
cd "$(dirname "$0")/.."

command -v node >/dev/null || { echo "node is missing" >&2; exit 1; }
command -v npm >/dev/null || { echo "npm is missing" >&2; exit 1; }
major="$(node -p 'process.versions.node.split(".")[0]')"
[ "$major" -ge 20 ] || { echo "Node.js 20 or later is needed, found $(node --version)" >&2; exit 1; }

# The TLS tests make their certificates with the openssl command.
if ! command -v openssl >/dev/null; then
  sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  echo "== installing openssl"
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends openssl >/dev/null
fi

if [ -z "${SESSYNC_BIN:-}" ]; then
  if [ ! -x target/debug/sessync ]; then
    cargo build --bin sessync
  fi
  export SESSYNC_BIN="$PWD/target/debug/sessync"
fi

npm_ci() { npm ci --no-audit --no-fund --loglevel=error; }

(
  cd sdk/node
  npm_ci
  npx --no-install tsc --noEmit -p .
  timeout 600 node --test test/*.test.js
)
# After sdk/node's install: the example links the SDK, whose sessync/express resolves
# express-session from sdk/node's own dependencies.
(
  cd examples/express_login
  npm_ci
  timeout 300 node --test test.js
)
