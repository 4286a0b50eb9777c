#!/usr/bin/env bash
# Membership by one DNS name (the Kubernetes headless-Service pattern), in network
# namespaces this script makes and removes: a hub namespace holds a bridge and dnsmasq,
# which answers `sessync.test` with one A record per node; each node runs in its own
# namespace with `--join dns:sessync.test:7800`. Checked: three nodes started at once
# agree on three alive members; a fourth, added to DNS later, joins; a SIGKILLed one is
# declared dead by the others. No traffic leaves these namespaces. Needs root and `ip`
# (installs dnsmasq-base and iproute2 when missing). Every wait is bounded.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
  echo "membership-dns: needs root (network namespaces); not run here"
  exit 0
fi
if ! command -v dnsmasq >/dev/null || ! command -v ip >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dnsmasq-base iproute2 >/dev/null
fi
bin=target/debug/sessync
[ -x "$bin" ] || cargo build -q --bin sessync

tag="smd$$"
hub="${tag}hub"
net="10.214.$(($$ % 200 + 20))"
dir=$(mktemp -d)
pids=()
namespaces=()
passed=0
failed=0

cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  for ns in "${namespaces[@]}"; do
    ip netns del "$ns" 2>/dev/null || true
    rm -rf "/etc/netns/$ns"
  done
  rm -rf "$dir"
}
trap cleanup EXIT

ip netns add "$hub"
namespaces+=("$hub")
ip -n "$hub" link add br0 type bridge
ip -n "$hub" addr add "$net.254/24" dev br0
ip -n "$hub" link set br0 up
ip -n "$hub" link set lo up

# Node namespace i (1..4) at $net.i, a veth into the hub's bridge, DNS from the hub.
add_host() {
  local i=$1 ns="${tag}n$1"
  ip netns add "$ns"
  namespaces+=("$ns")
  ip link add "${tag}v$i" netns "$hub" type veth peer name eth0 netns "$ns"
  ip -n "$hub" link set "${tag}v$i" master br0 up
  ip -n "$ns" addr add "$net.$i/24" dev eth0
  ip -n "$ns" link set eth0 up
  ip -n "$ns" link set lo up
  mkdir -p "/etc/netns/$ns"
  echo "nameserver $net.254" >"/etc/netns/$ns/resolv.conf"
  # This machine's /etc/hosts has no sessync.test; an empty one makes that certain.
  echo "127.0.0.1 localhost" >"/etc/netns/$ns/hosts"
}

printf 'test-cluster-secret-0123456789ab' >"$dir/secret"
: >"$dir/hosts"
for i in 1 2 3; do echo "$net.$i sessync.test" >>"$dir/hosts"; done
ip netns exec "$hub" dnsmasq --keep-in-foreground --no-resolv --no-hosts --addn-hosts="$dir/hosts" \
  --listen-address="$net.254" --bind-interfaces --user=root --local-ttl=1 --log-facility="$dir/dnsmasq.log" &
dns_pid=$!
pids+=("$dns_pid")

start_node() {
  local i=$1
  ip netns exec "${tag}n$i" "$bin" node --client "$net.$i:7700" --peer "$net.$i:7800" \
    --secret-file "$dir/secret" --join dns:sessync.test:7800 --log info >"$dir/out$i" 2>"$dir/err$i" &
  node_pid[$i]=$!
  pids+=("$!")
}

# members I: node I's view as JSON.
members() {
  ip netns exec "${tag}n$1" "$bin" members --node "$net.$1:7700" --json 2>/dev/null || echo '{}'
}

# expect NAME SECONDS NODES ALIVE DEAD: every listed node sees ALIVE alive and DEAD dead
# members within SECONDS.
expect() {
  local name=$1 secs=$2 nodes=$3 alive=$4 dead=$5 start=$SECONDS ok
  while :; do
    ok=1
    for i in $nodes; do
      python3 -c 'import json,sys; d=json.loads(sys.argv[1]); sys.exit(0 if d.get("alive")==int(sys.argv[2]) and d.get("dead")==int(sys.argv[3]) else 1)' \
        "$(members "$i")" "$alive" "$dead" || ok=0
    done
    if [ "$ok" = 1 ]; then
      echo "ok: $name ($((SECONDS - start)) s)"
      passed=$((passed + 1))
      return
    fi
    if [ $((SECONDS - start)) -ge "$secs" ]; then
      echo "FAILED: $name: not within $secs s"
      for i in $nodes; do echo "node $i: $(members "$i")"; done
      failed=$((failed + 1))
      return
    fi
    sleep 0.5
  done
}

for i in 1 2 3; do add_host "$i"; done
for i in 1 2 3; do start_node "$i"; done
expect "three nodes started at once from one DNS name agree" 15 "1 2 3" 3 0

# Scale up: a fourth record in DNS (dnsmasq re-reads its hosts files on SIGHUP), and a
# fourth node with the same --join.
add_host 4
echo "$net.4 sessync.test" >>"$dir/hosts"
kill -HUP "$dns_pid"
start_node 4
expect "a fourth node added to the DNS name joins" 15 "1 2 3 4" 4 0

# A node killed without a goodbye is declared dead by the others.
kill -9 "${node_pid[2]}"
expect "a SIGKILLed node is declared dead by the others" 15 "1 3 4" 3 1

if [ "$failed" != 0 ] || [ -n "${MEMBERSHIP_DNS_DEBUG:-}" ]; then
  for f in "$dir"/err*; do echo "== $f"; grep -E "membership|WARN|ERROR" "$f" | tail -n 12; done
fi
echo "membership-dns: $passed passed, $failed failed"
[ "$failed" = 0 ]
