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
start() { # dir label flags -> $started (client addresses)
  local dir=$1 label=$2 flags=$3 ports=() addrs=() i
  for i in 0 1 2; do ports+=("$(free_port)"); done
  local peers="127.0.0.1:${ports[0]},127.0.0.1:${ports[1]},127.0.0.1:${ports[2]}"
  for i in 0 1 2; do
    # shellcheck disable=SC2086
    "$dir/sessync" node --client 127.0.0.1:0 --peer "127.0.0.1:${ports[$i]}" --peers "$peers" \
      --secret-file "$tmp/secret" --max-sessions 50000000 --max-memory 200G --log warn \
      "${extra[@]}" $flags >"$tmp/$label$i.out" 2>"$tmp/$label$i.err" &
    pids+=($!)
    for _ in $(seq 100); do
      grep -q '^ready ' "$tmp/$label$i.out" 2>/dev/null && break
      sleep 0.1
    done
    addrs+=("$(sed -n 's/^ready client=\([^ ]*\) .*/\1/p' "$tmp/$label$i.out")")
    [ -n "${addrs[-1]}" ] || { echo "node $label$i did not start:" >&2; cat "$tmp/$label$i.err" >&2; exit 1; }
  done
  started=$(IFS=,; echo "${addrs[*]}")
}
start "$A" a "${XA:-}"; na=$started
start "$B" b "${XB:-}"; nb=$started
for _ in $(seq "$rounds"); do
  for x in a b; do
    if [ "$x" = a ]; then nodes=$na; else nodes=$nb; fi
    line=$("$B/sessync-bench" load --nodes "$nodes" --scenario "$scen" --connections "$conns" \
      --depth "$depth" --duration "$dur" --warmup 1s --repeat 1 --slices 1 --no-echo --quiet 2>&1 |
      grep '^sessync ')
    echo "$x $line"
  done
done
