#!/usr/bin/env bash
# sessync side by side with Redis and a loopback echo baseline, on this machine, in one run.
#
# Installs Redis (Debian's redis-server) if it is missing, starts it on a free loopback
# port with no persistence, starts three `sessync node` processes sharing a secret, builds
# with --release, runs the comparisons of issue 7 (each repeated, ratios per repetition,
# median reported), stops everything it started, and prints the ratio table. Sections 6
# and 7 (issue 15): move and sticky-90 with --replicas 1 against --replicas 0, and a
# 5-node cluster's moves against the 3-node one's.
#
# Every run also writes an SVG plot (latency CDF and throughput per target) next to its
# JSON. benches/netns.sh is the same comparison over links with a real round trip.
#
#   bash benches/compare.sh                 # everything, about 15 minutes on 2 cores
#   DURATION=2s REPEAT=1 MEMORY_SESSIONS=100000 bash benches/compare.sh   # a quick look
#   NODE_BIN=/path/to/old/sessync OUT=target/bench-before bash benches/compare.sh
#                                           # another build's nodes, this build's client
#
# Results (JSON and the printed tables) go to $OUT (default target/bench-compare).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-5s}
WARMUP=${WARMUP:-1s}
REPEAT=${REPEAT:-3}
SLICES=${SLICES:-5}
MEMORY_SESSIONS=${MEMORY_SESSIONS:-1000000}
OUT=${OUT:-target/bench-compare}
mkdir -p "$OUT"

pids=()
tmp=$(mktemp -d)
cleanup() {
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$tmp"
}
trap cleanup EXIT INT TERM

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

if ! command -v redis-server >/dev/null; then
  echo "== installing redis-server (Debian package)"
  apt-get update -qq && apt-get install -y -qq redis-server >/dev/null
fi

echo "== building (release)"
cargo build --release -q -p sessync -p sessync-bench
bin=target/release
# The node binary measured; NODE_BIN runs another build's nodes (a "before" column) with
# this build's sessync-bench, so both columns come from one script and one client.
node_bin=${NODE_BIN:-$bin/sessync}
echo "== nodes: $node_bin"

redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
  --daemonize no --logfile "$tmp/redis.log" &
pids+=($!)
for _ in $(seq 100); do
  redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break
  sleep 0.1
done
redis-cli -p "$redis_port" ping >/dev/null
redis="127.0.0.1:$redis_port"
echo "== redis $(redis-server --version | awk '{print $3}') on $redis (no persistence)"

head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$tmp/secret"
nodes=()
for i in 0 1 2; do
  "$node_bin" node --client 127.0.0.1:0 --peer 127.0.0.1:0 --secret-file "$tmp/secret" \
    --max-sessions 50000000 --max-memory 200G --log warn >"$tmp/node$i.out" 2>"$tmp/node$i.err" &
  pids+=($!)
  for _ in $(seq 100); do
    grep -q '^ready ' "$tmp/node$i.out" 2>/dev/null && break
    sleep 0.1
  done
  addr=$(sed -n 's/^ready client=\([^ ]*\) .*/\1/p' "$tmp/node$i.out")
  [ -n "$addr" ] || { echo "node $i did not start:" >&2; cat "$tmp/node$i.err" >&2; exit 1; }
  nodes+=("$addr")
done
all_nodes=$(IFS=,; echo "${nodes[*]}")
echo "== sessync nodes: $all_nodes"

# Two more 3-node clusters for the cost of backups: the same flags plus --peers, one with
# --replicas 0 (the default) and one with --replicas 1 (every write waits for one
# REPLICATE round trip). --peers needs the peer ports up front.
start_cluster() { # $1 = replicas, $2 = nodes (default 3); sets $cluster to the client addresses
  local n=${2:-3} ports=() addrs=() i
  for ((i = 0; i < n; i++)); do ports+=("$(free_port)"); done
  local peers
  peers=$(printf '127.0.0.1:%s,' "${ports[@]}")
  peers=${peers%,}
  for ((i = 0; i < n; i++)); do
    local name="r$1n$n-$i"
    "$node_bin" node --client 127.0.0.1:0 --peer "127.0.0.1:${ports[$i]}" --peers "$peers" \
      --replicas "$1" --secret-file "$tmp/secret" --max-sessions 50000000 --max-memory 200G \
      --log warn >"$tmp/$name.out" 2>"$tmp/$name.err" &
    pids+=($!)
    for _ in $(seq 100); do
      grep -q '^ready ' "$tmp/$name.out" 2>/dev/null && break
      sleep 0.1
    done
    local addr
    addr=$(sed -n 's/^ready client=\([^ ]*\) .*/\1/p' "$tmp/$name.out")
    [ -n "$addr" ] || { echo "node $name did not start:" >&2; cat "$tmp/$name.err" >&2; exit 1; }
    addrs+=("$addr")
  done
  cluster=$(IFS=,; echo "${addrs[*]}")
}
start_cluster 0
replicas0=$cluster
start_cluster 1
replicas1=$cluster
echo "== backups: --replicas 0 $replicas0; --replicas 1 $replicas1"
# A 5-node cluster (--replicas 0) for the shape of the cost of moves with cluster size.
start_cluster 0 5
five=$cluster
echo "== 5 nodes: $five"

common=(--duration "$DURATION" --warmup "$WARMUP" --repeat "$REPEAT" --slices "$SLICES" --quiet)

echo
echo "== 1. throughput: one node vs one Redis, 50 connections, pipeline 16, 1 KiB in 8 attributes"
"$bin/sessync-bench" load --nodes "${nodes[0]}" --scenario local,mixed,create \
  --against-redis "$redis" --redis-flush --connections 50 --depth 16 "${common[@]}" \
  --json-out "$OUT/throughput.json" | tee "$OUT/throughput.txt"

echo
echo "== 2. latency: one node, 1 connection, no pipelining"
"$bin/sessync-bench" load --nodes "${nodes[0]}" --scenario local \
  --against-redis "$redis" --redis-flush --connections 1 --depth 1 "${common[@]}" \
  --json-out "$OUT/latency.json" | tee "$OUT/latency.txt"

echo
echo "== 3. instant copy: three nodes, 1 connection, no pipelining"
"$bin/sessync-bench" load --nodes "$all_nodes" --scenario local,move,sticky-90 \
  --connections 1 --depth 1 "${common[@]}" \
  --json-out "$OUT/move-latency.json" | tee "$OUT/move-latency.txt"

echo
echo "== 4. instant copy: three nodes, 50 connections, pipeline 16"
"$bin/sessync-bench" load --nodes "$all_nodes" --scenario local,move,sticky-90 \
  --against-redis "$redis" --redis-flush --redis-mode hash --connections 50 --depth 16 "${common[@]}" \
  --json-out "$OUT/move-throughput.json" | tee "$OUT/move-throughput.txt"

echo
echo "== 5. the cost of backups: 3 nodes --replicas 1 vs the same with --replicas 0"
"$bin/sessync-bench" load --nodes "$replicas0" --against-nodes "$replicas1" --against-label replicas-1 \
  --scenario mixed,create --connections 50 --depth 16 --no-echo "${common[@]}" \
  --json-out "$OUT/backups-throughput.json" | tee "$OUT/backups-throughput.txt"
"$bin/sessync-bench" load --nodes "$replicas0" --against-nodes "$replicas1" --against-label replicas-1 \
  --scenario mixed,create --connections 1 --depth 1 --no-echo "${common[@]}" \
  --json-out "$OUT/backups-latency.json" | tee "$OUT/backups-latency.txt"

echo
echo "== 6. moves with backups: 3 nodes --replicas 1 vs the same with --replicas 0, 50 connections, pipeline 16"
"$bin/sessync-bench" load --nodes "$replicas0" --against-nodes "$replicas1" --against-label replicas-1 \
  --scenario move,sticky-90 --connections 50 --depth 16 --no-echo "${common[@]}" \
  --json-out "$OUT/backups-move.json" | tee "$OUT/backups-move.txt"

echo
echo "== 7. cluster size: moves on 5 nodes vs 3 nodes (both --replicas 0)"
"$bin/sessync-bench" load --nodes "$replicas0" --against-nodes "$five" --against-label 5-nodes \
  --scenario local,move --connections 50 --depth 16 --no-echo "${common[@]}" \
  --json-out "$OUT/nodes5-throughput.json" | tee "$OUT/nodes5-throughput.txt"
"$bin/sessync-bench" load --nodes "$replicas0" --against-nodes "$five" --against-label 5-nodes \
  --scenario local,move --connections 1 --depth 1 --no-echo "${common[@]}" \
  --json-out "$OUT/nodes5-latency.json" | tee "$OUT/nodes5-latency.txt"

echo
echo "== 8. memory per session ($MEMORY_SESSIONS sessions)"
"$bin/sessync-bench" memory --sessions "$MEMORY_SESSIONS" --size 1024 --attrs 8 \
  --sessync-bin "$node_bin" --against-redis "$redis" --redis-flush --json-out "$OUT/memory-1k.json" | tee "$OUT/memory-1k.txt"
"$bin/sessync-bench" memory --sessions "$MEMORY_SESSIONS" --size 100 --attrs 8 \
  --sessync-bin "$node_bin" --against-redis "$redis" --redis-flush --json-out "$OUT/memory-100.json" | tee "$OUT/memory-100.txt"

echo
echo "== the issue's targets (median of $REPEAT runs; ratios measured in the same run)"
python3 - "$OUT" <<'PY' | tee "$OUT/targets.txt"
import json, sys
out = sys.argv[1]
def ratio(file, name):
    doc = json.load(open(f"{out}/{file}.json"))
    for r in doc["ratios"]:
        if r["name"] == name:
            return r["median"]
    return float("nan")
def mem(file):
    d = json.load(open(f"{out}/{file}.json"))
    return d
def within(file, target, case_a, case_b, metric):
    # A ratio between two cases of one target, per repetition, median (e.g. the 5-node
    # cluster's move throughput over its own local throughput).
    doc = json.load(open(f"{out}/{file}.json"))
    rows = {r["case"]: r for r in doc["rows"] if r["target"] == target}
    if case_a not in rows or case_b not in rows:
        return float("nan")
    runs = sorted(a[metric] / b[metric] for a, b in zip(rows[case_a]["runs"], rows[case_b]["runs"]))
    n = len(runs)
    return runs[n // 2] if n % 2 else (runs[n // 2 - 1] + runs[n // 2]) / 2
rows = [
    ("local 50x16: sessync / Redis HGETALL+EXPIRE throughput", ratio("throughput", "local: sessync/redis-hash throughput"), ">=", 2.0),
    ("mixed 50x16: sessync / Redis HGETALL/HSET throughput", ratio("throughput", "mixed: sessync/redis-hash throughput"), ">=", 2.0),
    ("local 50x16: sessync / Redis GET 1 KiB string throughput", ratio("throughput", "local: sessync/redis-string throughput"), ">=", 1.0),
    ("mixed 50x16: sessync / Redis GET/SET 1 KiB string throughput", ratio("throughput", "mixed: sessync/redis-string throughput"), ">=", 1.0),
    ("local 1x1: sessync p50 / echo p50", ratio("latency", "local: sessync/echo p50"), "<=", 1.1),
    ("local 1x1: sessync p99 / echo p99", ratio("latency", "local: sessync/echo p99"), "<=", 1.5),
    ("move 1x1: move p50 / local p50", ratio("move-latency", "move: move/local p50"), "<=", 2.5),
    ("move 50x16: move p50 / local p50", ratio("move-throughput", "move: move/local p50"), "<=", 2.5),
    ("move 50x16: move / local throughput", ratio("move-throughput", "move: move/local throughput"), "", None),
    ("backups 50x16: mixed, replicas 1 / replicas 0 throughput", ratio("backups-throughput", "mixed: replicas-1/sessync throughput"), "", None),
    ("backups 50x16: create, replicas 1 / replicas 0 throughput", ratio("backups-throughput", "create: replicas-1/sessync throughput"), "", None),
    ("backups 1x1: mixed, replicas 1 / replicas 0 p50", ratio("backups-latency", "mixed: replicas-1/sessync p50"), "", None),
    ("backups 1x1: create, replicas 1 / replicas 0 p50", ratio("backups-latency", "create: replicas-1/sessync p50"), "", None),
    ("backups 50x16: move, replicas 1 / replicas 0 throughput", ratio("backups-move", "move: replicas-1/sessync throughput"), ">=", 0.9),
    ("backups 50x16: sticky-90, replicas 1 / replicas 0 throughput", ratio("backups-move", "sticky-90: replicas-1/sessync throughput"), ">=", 0.9),
    ("backups 50x16: move, replicas 1 / replicas 0 p50", ratio("backups-move", "move: replicas-1/sessync p50"), "", None),
    ("backups 50x16: sticky-90, replicas 1 / replicas 0 p50", ratio("backups-move", "sticky-90: replicas-1/sessync p50"), "", None),
    ("nodes 50x16: move, 5 nodes / 3 nodes throughput", ratio("nodes5-throughput", "move: 5-nodes/sessync throughput"), "", None),
    ("nodes 50x16: move, 5 nodes / 3 nodes p50", ratio("nodes5-throughput", "move: 5-nodes/sessync p50"), "", None),
    ("nodes 50x16: move / local throughput, 3 nodes", ratio("nodes5-throughput", "move: move/local throughput"), "", None),
    ("nodes 50x16: move / local throughput, 5 nodes", within("nodes5-throughput", "5-nodes", "move", "local", "throughput"), "", None),
    ("nodes 1x1: move, 5 nodes / 3 nodes p50", ratio("nodes5-latency", "move: 5-nodes/sessync p50"), "", None),
    ("nodes 1x1: move / local p50, 5 nodes", within("nodes5-latency", "5-nodes", "move", "local", "p50_us"), "", None),
]
for size in ("1k", "100"):
    d = mem(f"memory-{size}")
    s, r = d["sessync"], d.get("redis", {})
    rows.append((f"memory {size}: sessync RSS overhead B/session", s["rss_overhead_per_session"], "<=", 145))
    if r:
        rows.append((f"memory {size}: sessync / Redis overhead ({r['encoding']})", s["rss_overhead_per_session"] / r["overhead_per_session"], "<=", 0.25))
def table(rows):
    print(f"{'target':<62} {'measured':>9}  {'wanted':<9} met")
    for name, v, op, want in rows:
        met = "" if want is None else ("yes" if (v >= want if op == ">=" else v <= want) else "NO")
        wanted = "" if want is None else f"{op} {want}"
        print(f"{name:<62} {v:>9.2f}  {wanted:<9} {met}")
table(rows)
# Issue 15's table (moves at the speed of local requests), in its own order and targets.
m100 = mem("memory-100")
issue15 = [
    ("move 50x16: throughput / local throughput", ratio("move-throughput", "move: move/local throughput"), ">=", 0.5),
    ("move 50x16: throughput / Redis HGETALL+EXPIRE", ratio("move-throughput", "move: sessync/redis-hash throughput"), ">=", 1.0),
    ("move 50x16: p50 / local p50", ratio("move-throughput", "move: move/local p50"), "<=", 3.0),
    ("sticky-90 50x16: throughput / local", ratio("move-throughput", "sticky-90: sticky-90/local throughput"), ">=", 0.8),
    ("sticky-90 50x16: throughput / Redis hash", ratio("move-throughput", "sticky-90: sessync/redis-hash throughput"), ">=", 1.5),
    ("replicas 1 / replicas 0, mixed 50x16 throughput", ratio("backups-throughput", "mixed: replicas-1/sessync throughput"), ">=", 0.8),
    ("replicas 1 / replicas 0, create 50x16 throughput", ratio("backups-throughput", "create: replicas-1/sessync throughput"), ">=", 0.5),
    ("move 50x16: replicas 1 / replicas 0 throughput", ratio("backups-move", "move: replicas-1/sessync throughput"), ">=", 0.9),
    ("sticky-90 50x16: replicas 1 / replicas 0 throughput", ratio("backups-move", "sticky-90: replicas-1/sessync throughput"), ">=", 0.9),
    ("local 50x16 / Redis hash throughput", ratio("throughput", "local: sessync/redis-hash throughput"), ">=", 2.0),
    ("local 50x16 / Redis 1 KiB string throughput", ratio("throughput", "local: sessync/redis-string throughput"), ">=", 1.0),
    ("RSS overhead per session, 1 KiB in 8 attributes (B)", mem("memory-1k")["sessync"]["rss_overhead_per_session"], "<=", 145),
    ("RSS per session, 100 B in 8 attributes / Redis used_memory", m100.get("ratios", {}).get("rss_per_session", float("nan")), "<=", 0.8),
    ("local 1x1 p50 / echo p50", ratio("latency", "local: sessync/echo p50"), "<=", 1.1),
]
print()
print("issue 15 (moves at the speed of local requests):")
table(issue15)
PY
