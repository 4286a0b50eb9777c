#!/usr/bin/env bash
# The node's own CPU per request, plain against a TLS client port: utime+stime of one node
# process over one `local` 50x16 run (4 s), alternating plain and TLS nodes, 3 pairs. The
# load generator's own TLS cost is not in these figures (see BENCHMARKS.md).
#
#   bash benches/tls_cpu.sh [DIR]      (DIR holds sessync and sessync-bench; default target/release)
set -euo pipefail
B=$(realpath "${1:-target/release}")
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj "/CN=bench CA" -keyout ca.key -out ca.crt 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=bench node" \
  -keyout node.key -out node.csr 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n' >ext
openssl x509 -req -in node.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
  -extfile ext -out node.crt 2>/dev/null
run() { # label flags...
  local label=$1; shift
  $B/sessync node --client 127.0.0.1:0 --peer 127.0.0.1:0 --log warn "$@" > $label.out 2>$label.err &
  local pid=$!
  for _ in $(seq 50); do grep -q '^ready' $label.out && break; sleep 0.1; done
  local addr; addr=$(sed -n 's/^ready client=\([^ ]*\) .*/\1/p' $label.out)
  local tls=(); [ "$label" = tls ] && tls=(--tls-ca ca.crt)
  local t0; t0=$(awk '{print $14+$15}' /proc/$pid/stat)
  local line; line=$($B/sessync-bench load --nodes $addr --scenario local --connections 50 --depth 16 --duration 4s --warmup 0s --repeat 1 --slices 1 --no-echo --quiet "${tls[@]}" 2>&1 | grep '^sessync ')
  local t1; t1=$(awk '{print $14+$15}' /proc/$pid/stat)
  kill $pid; wait $pid 2>/dev/null || true
  local rps; rps=$(echo "$line" | awk '{print $3}')
  # clock ticks are 1/100 s; requests = rps * 4 s (plus the setup, small)
  echo "$label rps=$rps node_cpu_s=$(echo "($t1-$t0)/100" | bc -l | cut -c1-5) us_cpu_per_req=$(echo "($t1-$t0)*10000/($rps*4)" | bc -l | cut -c1-5)"
}
for i in 1 2 3; do
  run plain
  run tls --client-tls-cert node.crt --client-tls-key node.key
done
