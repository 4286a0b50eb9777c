#!/usr/bin/env bash
# TLS against plain, same build, same run: three plain nodes and three TLS nodes (mutual
# TLS between nodes, TLS on the client ports, certificates from a throw-away CA made with
# openssl) run side by side, and the same `sessync-bench load` alternates between them
# (plain, tls, plain, tls, ...), so both see the same background load. One result line per
# run; BENCHMARKS.md takes the ratio of the medians.
#
#   bash benches/tls.sh DIR SCENARIO CONNECTIONS DEPTH ROUNDS DURATION
#   bash benches/tls.sh target/release local 50 16 3 3s
set -euo pipefail
D=$1; scen=$2; conns=$3; depth=$4; rounds=$5; dur=$6
tmp=$(mktemp -d)
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$tmp/secret"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT INT TERM
# The CA and one certificate for 127.0.0.1 (every node here is on loopback).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj "/CN=bench CA" -keyout "$tmp/ca.key" -out "$tmp/ca.crt" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=bench node" \
  -keyout "$tmp/node.key" -out "$tmp/node.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n' >"$tmp/ext"
openssl x509 -req -in "$tmp/node.csr" -CA "$tmp/ca.crt" -CAkey "$tmp/ca.key" -CAcreateserial \
  -days 2 -extfile "$tmp/ext" -out "$tmp/node.crt" 2>/dev/null
tls_flags="--tls-cert $tmp/node.crt --tls-key $tmp/node.key --tls-ca $tmp/ca.crt \
  --client-tls-cert $tmp/node.crt --client-tls-key $tmp/node.key"
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
start() { # label flags -> $started (client addresses)
  local label=$1 flags=$2 ports=() addrs=() i
  for i in 0 1 2; do ports+=("$(free_port)"); done
  local peers="127.0.0.1:${ports[0]},127.0.0.1:${ports[1]},127.0.0.1:${ports[2]}"
  for i in 0 1 2; do
    # shellcheck disable=SC2086
    "$D/sessync" node --client 127.0.0.1:0 --peer "127.0.0.1:${ports[$i]}" --peers "$peers" \
      --secret-file "$tmp/secret" --max-sessions 50000000 --max-memory 200G --log warn \
      $flags >"$tmp/$label$i.out" 2>"$tmp/$label$i.err" &
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
start plain ""; np=$started
start tls "$tls_flags"; nt=$started
for _ in $(seq "$rounds"); do
  for x in plain tls; do
    if [ "$x" = plain ]; then nodes=$np; tls=(); else nodes=$nt; tls=(--tls-ca "$tmp/ca.crt"); fi
    line=$("$D/sessync-bench" load --nodes "$nodes" --scenario "$scen" --connections "$conns" \
      --depth "$depth" --duration "$dur" --warmup 1s --repeat 1 --slices 1 --no-echo --quiet \
      "${tls[@]}" 2>&1 | grep '^sessync ')
    echo "$x $line"
  done
done
