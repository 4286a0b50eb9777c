#!/usr/bin/env bash
# The status page (GET / of a node's --http port) in headless Chromium (Debian's package,
# installed here if missing): a 3-node `sessync cluster` under a small load; the page must
# show three members, no script or console error, and a requests/s chart that moves.
# Saves target/status-page/status-page.png (a screenshot) and the DOM it checked.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v chromium >/dev/null; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q chromium >/dev/null
fi
if [ ! -x target/debug/sessync ]; then
  cargo build --bin sessync
fi
bin="$PWD/target/debug/sessync"
out="$PWD/target/status-page"
rm -rf "$out" && mkdir -p "$out"
profile="$(mktemp -d "${TMPDIR:-/tmp}/sessync-chromium.XXXXXX")"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$profile"
}
trap cleanup EXIT

# The cluster takes base..base+2 (clients), +100 (peers), +200 (HTTP): try a few bases.
started=""
for attempt in 1 2 3 4 5; do
  base=$(( 30000 + (RANDOM % 300) * 10 ))
  "$bin" cluster --nodes 3 --base-port "$base" --log warn >"$out/cluster.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 100); do
    if grep -q "Ctrl-C" "$out/cluster.log"; then started=1; break; fi
    if ! kill -0 "$pid" 2>/dev/null; then break; fi
    sleep 0.1
  done
  if [ -n "$started" ]; then pids+=("$pid"); break; fi
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
done
[ -n "$started" ] || { echo "could not start a trial cluster" >&2; cat "$out/cluster.log" >&2; exit 1; }
url="http://127.0.0.1:$((base + 200))/"
echo "cluster on base port $base; status page $url"

# Load: sessions created at node 0 and read through node 2 (each read after the first is
# local, the first moves the session), until stopped.
(
  while true; do
    t=$("$bin" session create --node "127.0.0.1:$base" user=load 2>/dev/null) || continue
    "$bin" session get --node "127.0.0.1:$((base + 2))" "$t" >/dev/null 2>&1 || true
  done
) &
pids+=("$!")
sleep 2

chrome=(chromium --headless --no-sandbox --disable-gpu --disable-background-networking
  --disable-component-update --disable-sync --no-first-run --user-data-dir="$profile"
  --enable-logging=stderr --v=0 --virtual-time-budget=8000)
timeout 60 "${chrome[@]}" --dump-dom "$url" >"$out/dom.html" 2>"$out/chromium.log" || {
  echo "chromium failed" >&2; cat "$out/chromium.log" >&2; exit 1; }
timeout 60 "${chrome[@]}" --window-size=1200,900 --screenshot="$out/status-page.png" "$url" \
  >/dev/null 2>>"$out/chromium.log" || true

python3 - "$out/dom.html" "$out/chromium.log" <<'PY'
import re, sys
dom = open(sys.argv[1]).read()
log = open(sys.argv[2]).read()
fail = []
members = re.findall(r'<tr class="member">', dom)
if len(members) != 3:
    fail.append(f"{len(members)} members shown, expected 3")
errors = re.search(r'<pre id="errors"[^>]*>(.*?)</pre>', dom, re.S)
if errors is None or errors.group(1).strip():
    fail.append("script errors on the page: %r" % (errors.group(1) if errors else "no #errors element"))
console = [l for l in log.splitlines() if "CONSOLE" in l]
if console:
    fail.append("console messages: %r" % console)
m = re.search(r'id="chart-requests"[^>]*data-points="([^"]*)"', dom) or \
    re.search(r'data-points="([^"]*)"[^>]*id="chart-requests"', dom)
points = [float(x) for x in m.group(1).split(",")] if m and m.group(1) else []
if len(points) < 3 or max(points) <= 0:
    fail.append(f"the requests/s chart did not move: {points}")
if 'id="readiness" class="ready"' not in dom:
    fail.append("the page does not say the node is ready")
print(f"status page: {len(members)} members, requests/s points {points}")
if fail:
    print("FAILED: " + "; ".join(fail))
    sys.exit(1)
print("status page: 1 passed")
PY
ls -l "$out/status-page.png"
