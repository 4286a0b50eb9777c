#!/usr/bin/env bash
# A/B of two sessync builds on this machine: starts three nodes of each side by side and
# runs the same `sessync-bench load` against them in turn (a, b, a, b, ...), so both builds
# see the same background load. Prints one result line per run; compare a with b.
#
#   bash benches/ab.sh DIR_A DIR_B SCENARIO CONNECTIONS DEPTH ROUNDS DURATION [node flags]
#   bash benches/ab.sh /tmp/base target/release move 50 16 3 3s
#   XB="--replicas 1" bash benches/ab.sh target/release target/release mixed 1 1 2 2s
#
# DIR_A and DIR_B each hold a `sessync` binary; DIR_B's `sessync-bench` drives both.
# Extra node flags apply to both sets; XA / XB add flags to one of them.
#
# Each line ends with `cpu/req=` the CPU time (user + system) the side's three nodes used
# during the run (warm-up included), divided by its requests (req/s x (duration +
# warm-up)): microseconds of node CPU per request. On this shared 2-core machine that is
# steadier than throughput, which moves with whatever else runs. After the rounds, the
# per-pair ratios b/a of throughput and of CPU per request and their medians.
set -euo pipefail
A=$1; B=$2; scen=$3; conns=$4; depth=$5; rounds=$6; dur=$7; shift 7; extra=("$@")
tmp=$(mktemp -d)
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$tmp/secret"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT INT TERM
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
start() { # dir label flags -> $started (client addresses), $started_pids
  local dir=$1 label=$2 flags=$3 ports=() addrs=() i mine=()
  for i in 0 1 2; do ports+=("$(free_port)"); done
  local peers="127.0.0.1:${ports[0]},127.0.0.1:${ports[1]},127.0.0.1:${ports[2]}"
  for i in 0 1 2; do
    # shellcheck disable=SC2086
    "$dir/sessync" node --client 127.0.0.1:0 --peer "127.0.0.1:${ports[$i]}" --peers "$peers" \
      --secret-file "$tmp/secret" --max-sessions 50000000 --max-memory 200G --log warn \
      "${extra[@]}" $flags >"$tmp/$label$i.out" 2>"$tmp/$label$i.err" &
    pids+=($!)
    mine+=($!)
    for _ in $(seq 100); do
      grep -q '^ready ' "$tmp/$label$i.out" 2>/dev/null && break
      sleep 0.1
    done
    addrs+=("$(sed -n 's/^ready client=\([^ ]*\) .*/\1/p' "$tmp/$label$i.out")")
    [ -n "${addrs[-1]}" ] || { echo "node $label$i did not start:" >&2; cat "$tmp/$label$i.err" >&2; exit 1; }
  done
  started=$(IFS=,; echo "${addrs[*]}")
  started_pids="${mine[*]}"
}
ticks() { # CPU clock ticks (user + system) of the given pids
  local t=0 p f
  for p in "$@"; do
    f=$(cut -d' ' -f14,15 "/proc/$p/stat")
    t=$((t + ${f% *} + ${f#* }))
  done
  echo "$t"
}
secs() { # "3s", "500ms" -> seconds
  case $1 in *ms) python3 -c "print(${1%ms} / 1000)" ;; *s) echo "${1%s}" ;; *) echo "$1" ;; esac
}
hz=$(getconf CLK_TCK)
start "$A" a "${XA:-}"; na=$started; pa=$started_pids
start "$B" b "${XB:-}"; nb=$started; pb=$started_pids
for _ in $(seq "$rounds"); do
  for x in a b; do
    if [ "$x" = a ]; then nodes=$na; np=$pa; else nodes=$nb; np=$pb; fi
    # shellcheck disable=SC2086
    t0=$(ticks $np)
    line=$("$B/sessync-bench" load --nodes "$nodes" --scenario "$scen" --connections "$conns" \
      --depth "$depth" --duration "$dur" --warmup 1s --repeat 1 --slices 1 --no-echo --quiet 2>&1 |
      grep '^sessync ')
    # shellcheck disable=SC2086
    t1=$(ticks $np)
    rps=$(echo "$line" | awk '{print $3}')
    cpu=$(python3 -c "print(($t1 - $t0) / $hz * 1e6 / ($rps * ($(secs "$dur") + 1)))")
    printf '%s %s cpu/req=%.2fus\n' "$x" "$line" "$cpu" | tee -a "$tmp/lines"
  done
done
python3 - "$tmp/lines" <<'PY'
import re, statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
a = [r for r in rows if r[0] == "a"]
b = [r for r in rows if r[0] == "b"]
def cpu(r): return float(re.sub(r"[^0-9.]", "", r[-1]))
tp = [float(y[3]) / float(x[3]) for x, y in zip(a, b)]
cp = [cpu(y) / cpu(x) for x, y in zip(a, b)]
print("b/a throughput per pair:", " ".join(f"{v:.2f}" for v in tp), f"median {statistics.median(tp):.2f}x")
print("b/a node CPU per request per pair:", " ".join(f"{v:.2f}" for v in cp), f"median {statistics.median(cp):.2f}x")
PY
