#!/usr/bin/env bash
# sessync against Redis over a network with a real round trip, in network namespaces.
#
# The application (sessync-bench) and its local node share one namespace; two more nodes
# and Redis each have their own. A bridge in a fifth namespace joins them, and
# `sessync-bench delay-proxy` processes on it give every link that crosses the network a
# round trip (this kernel has no netem): DELAY each way, 0.5 ms by default, on
#   - the nodes' peer links (each node advertises its proxy, so tokens, --peers and every
#     COPY go through it), and
#   - the application's link to Redis.
# The application's link to each node is not delayed: one sessync-bench process plays the
# application server next to every node (a round-robin balancer sends each request to
# another application server, which asks its own node). So a local read crosses no
# network, a move crosses one peer round trip, and every Redis request crosses the network.
#
#   bash benches/netns.sh                                   # ~5 min; must run as root
#   DELAY=0.5ms DURATION=5s REPEAT=3 SLICES=5 bash benches/netns.sh
#   BIN=target/debug DURATION=1s WARMUP=200ms REPEAT=1 SLICES=1 SIZES=1x1 bash benches/netns.sh  # CI
#
# BIN: directory holding `sessync` and `sessync-bench` (default: a release build made here).
# SIZES: space-separated CONNECTIONSxDEPTH runs (default "1x1 50x16").
# Results (JSON, SVG plots, the printed tables) go to $OUT (default target/bench-netns).
# Everything it creates (namespaces, veths, the bridge, processes) is removed on exit,
# failure or interrupt. Nothing is configured outside its namespaces: no traffic leaves them.
set -euo pipefail
cd "$(dirname "$0")/.."

DELAY=${DELAY:-0.5ms}
DURATION=${DURATION:-5s}
WARMUP=${WARMUP:-1s}
REPEAT=${REPEAT:-3}
SLICES=${SLICES:-5}
SIZES=${SIZES:-1x1 50x16}
OUT=${OUT:-target/bench-netns}
mkdir -p "$OUT"

[ "$(id -u)" = 0 ] || { echo "benches/netns.sh needs root (ip netns)" >&2; exit 1; }

missing=()
command -v ip >/dev/null || missing+=(iproute2)
command -v redis-server >/dev/null || missing+=(redis-server)
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing ${missing[*]} (Debian packages)"
  apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [ -z "${BIN:-}" ]; then
  echo "== building (release)"
  cargo build --release -q -p sessync -p sessync-bench
  BIN=target/release
fi
BIN=$(cd "$BIN" && pwd)
[ -x "$BIN/sessync" ] && [ -x "$BIN/sessync-bench" ] || { echo "no sessync / sessync-bench in $BIN" >&2; exit 1; }

# Names unique to this run (veth names must fit in 15 characters).
P="sb$$"
NS_HUB="$P-hub" NS_APP="$P-app" NS_N1="$P-n1" NS_N2="$P-n2" NS_REDIS="$P-redis"
ALL_NS=("$NS_HUB" "$NS_APP" "$NS_N1" "$NS_N2" "$NS_REDIS")
NET=10.77.0
HUB=$NET.1
pids=()
tmp=$(mktemp -d)
cleanup() {
  local rc=$?
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  for ns in "${ALL_NS[@]}"; do
    ip netns del "$ns" 2>/dev/null || true
  done
  rm -rf "$tmp"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Background processes are started with `ip netns exec ... &` directly (never through a
# shell function, whose subshell would be the pid killed while its child lives on).
in_ns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

wait_line() { # file pattern what
  for _ in $(seq 200); do
    grep -q "$2" "$1" 2>/dev/null && return 0
    sleep 0.05
  done
  echo "$3 did not start:" >&2
  cat "$1" "${1%.out}.err" >&2 2>/dev/null || true
  exit 1
}

echo "== namespaces $P-*: bridge in $NS_HUB ($HUB), delay $DELAY each way on peer and Redis links"
for ns in "${ALL_NS[@]}"; do
  ip netns add "$ns"
  ip -n "$ns" link set lo up
done
ip -n "$NS_HUB" link add br0 type bridge
ip -n "$NS_HUB" addr add "$HUB/24" dev br0
ip -n "$NS_HUB" link set br0 up
attach() { # ns short-name address
  ip link add "$P$2" netns "$NS_HUB" type veth peer name eth0 netns "$1"
  ip -n "$NS_HUB" link set "$P$2" master br0 up
  ip -n "$1" addr add "$3/24" dev eth0
  ip -n "$1" link set eth0 up
}
APP_IP=$NET.10 N1_IP=$NET.11 N2_IP=$NET.12 REDIS_IP=$NET.20
attach "$NS_APP" a "$APP_IP"
attach "$NS_N1" b "$N1_IP"
attach "$NS_N2" c "$N2_IP"
attach "$NS_REDIS" r "$REDIS_IP"

# Delay proxies on the bridge: one in front of each node's peer port, one in front of Redis.
proxy() { # name listen-port to
  ip netns exec "$NS_HUB" "$BIN/sessync-bench" delay-proxy --listen "$HUB:$2" --to "$3" --delay "$DELAY" \
    >"$tmp/$1.out" 2>"$tmp/$1.err" &
  pids+=($!)
  wait_line "$tmp/$1.out" '^ready ' "delay proxy $1"
}
NODE_IPS=("$APP_IP" "$N1_IP" "$N2_IP")
NODE_NS=("$NS_APP" "$NS_N1" "$NS_N2")
for i in 0 1 2; do proxy "peer$i" "780$i" "${NODE_IPS[$i]}:7800"; done
proxy redis 6379 "$REDIS_IP:6379"

# Protected mode off: Redis refuses clients from other hosts without a password, and
# every client here comes through the proxy; the namespace is reachable from nowhere else.
ip netns exec "$NS_REDIS" redis-server --port 6379 --bind "$REDIS_IP" --protected-mode no \
  --save '' --appendonly no --daemonize no --logfile "$tmp/redis.log" >/dev/null 2>&1 &
pids+=($!)
for _ in $(seq 100); do
  in_ns "$NS_REDIS" redis-cli -h "$REDIS_IP" ping >/dev/null 2>&1 && break
  sleep 0.1
done
in_ns "$NS_APP" redis-cli -h "$HUB" -p 6379 ping >/dev/null
echo "== redis $(redis-server --version | awk '{print $3}') in $NS_REDIS, reached at $HUB:6379 (delayed)"

head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$tmp/secret"
peers="$HUB:7800,$HUB:7801,$HUB:7802"
nodes=()
for i in 0 1 2; do
  ip netns exec "${NODE_NS[$i]}" "$BIN/sessync" node --client "${NODE_IPS[$i]}:7700" \
    --peer "${NODE_IPS[$i]}:7800" --advertise "$HUB:780$i" --peers "$peers" \
    --secret-file "$tmp/secret" --max-sessions 50000000 --max-memory 200G --log warn \
    >"$tmp/node$i.out" 2>"$tmp/node$i.err" &
  pids+=($!)
  wait_line "$tmp/node$i.out" '^ready ' "node $i"
  nodes+=("${NODE_IPS[$i]}:7700")
done
all_nodes=$(IFS=,; echo "${nodes[*]}")
echo "== sessync nodes (client ports, not delayed): $all_nodes; peers advertised at $peers (delayed)"

common=(--duration "$DURATION" --warmup "$WARMUP" --repeat "$REPEAT" --slices "$SLICES" --quiet --no-echo)
for size in $SIZES; do
  conns=${size%x*} depth=${size#*x}
  echo
  echo "== $size: local, move, sticky-90 on 3 nodes vs Redis HGETALL+EXPIRE, $DELAY each way"
  # In the background and waited for, so an interrupt reaches the trap at once (bash runs
  # traps only after a foreground command ends) and the cleanup stops the run too.
  ip netns exec "$NS_APP" "$BIN/sessync-bench" load --nodes "$all_nodes" --scenario local,move,sticky-90 \
    --against-redis "$HUB:6379" --redis-flush --redis-mode hash \
    --connections "$conns" --depth "$depth" "${common[@]}" \
    --json-out "$OUT/netns-$size.json" >"$OUT/netns-$size.txt" &
  pids+=($!)
  wait "$!"
  cat "$OUT/netns-$size.txt"
done

echo
echo "== over the network ($DELAY each way; median of $REPEAT runs; ratios measured in the same run)"
python3 - "$OUT" "$DELAY" $SIZES <<'PY' | tee "$OUT/netns-ratios.txt"
import json, sys
out, delay, sizes = sys.argv[1], sys.argv[2], sys.argv[3:]
print(f"{'ratio (same run)':<52} " + " ".join(f"{s:>12}" for s in sizes))
def ratio(doc, name):
    for r in doc["ratios"]:
        if r["name"] == name:
            return r["median"]
    return float("nan")
def row(doc, target, case):
    for r in doc["rows"]:
        if r["target"] == target and r["case"] == case:
            return r
    return None
docs = {s: json.load(open(f"{out}/netns-{s}.json")) for s in sizes}
lines = [
    ("local read p50 / Redis p50", "local: sessync/redis-hash p50"),
    ("move p50 / Redis p50", "move: sessync/redis-hash p50"),
    ("sticky-90 p50 / Redis p50", "sticky-90: sessync/redis-hash p50"),
    ("local throughput / Redis throughput", "local: sessync/redis-hash throughput"),
    ("sticky-90 throughput / Redis throughput", "sticky-90: sessync/redis-hash throughput"),
    ("move throughput / Redis throughput", "move: sessync/redis-hash throughput"),
]
for label, name in lines:
    print(f"{label:<52} " + " ".join(f"{ratio(docs[s], name):>11.3g}x" for s in sizes))
print()
print("absolute medians, for orientation only (noise on this shared machine):")
print(f"{'':<28} " + " ".join(f"{s + ' req/s':>14} {s + ' p50 us':>14}" for s in sizes))
for target, case in [("sessync", "local"), ("sessync", "move"), ("sessync", "sticky-90"), ("redis-hash", "read")]:
    cells = []
    for s in sizes:
        r = row(docs[s], target, case)
        cells.append(f"{r['median']['throughput']:>14.0f} {r['median']['p50_us']:>14.1f}" if r else f"{'-':>14} {'-':>14}")
    print(f"{target + ' ' + case:<28} " + " ".join(cells))
errors = sum(r["errors"] for d in docs.values() for r in d["rows"])
print(f"failed requests: {errors}")
PY
