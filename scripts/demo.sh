#!/usr/bin/env bash
# The demo: three pods on one node, switched by vswitch over AF_XDP.
#
#   pod1 (10.244.1.11) ─ eth0══vp1 ┐
#   pod2 (10.244.1.12) ─ eth0══vp2 ├─ vswitch (switch namespace)
#   pod3 (10.244.1.13) ─ eth0══vp3 ┘
#
# Builds a release binary, makes the namespaces, runs the switch, pings every pair, moves
# 20 MB over TCP with a checksum check, prints the switch's counters and cleans up.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "demo.sh needs root (network namespaces, XDP)" >&2; exit 1; }
scripts/install-deps.sh
echo "== building"
cargo build --release -q -p switch
. scripts/topology.sh
topo_init "vsdemo$$"
for n in 1 2 3; do topo_add_pod "$n" "02:00:00:00:00:0$n" "10.244.1.1$n"; done
log=$(mktemp)
trap 'topo_cleanup; rm -f "$log"' EXIT

echo "== starting vswitch --ports vp1,vp2,vp3 in namespace $TOPO_SW"
ip netns exec "$TOPO_SW" target/release/vswitch --ports vp1,vp2,vp3 --stats-interval 1 >"$log" 2>&1 &
switch=$!
for _ in $(seq 100); do
	ip -n "$TOPO_SW" -d link show vp3 | grep -q prog/xdp && break
	sleep 0.1
done
head -1 "$log"

echo "== ping between every pair of pods"
for a in 1 2 3; do
	for b in 1 2 3; do
		[ "$a" = "$b" ] && continue
		printf 'pod%s -> pod%s: ' "$a" "$b"
		ip netns exec "$(topo_pod "$a")" ping -c 3 -i 0.2 -q "10.244.1.1$b" | grep -o '[0-9]* received.*loss'
	done
done

echo "== 20 MB over TCP, pod1 -> pod3"
ip netns exec "$(topo_pod 3)" python3 scripts/tcp_transfer.py serve 5001 >"$log.rx" &
server=$!
sleep 0.3
start=$(date +%s%N)
sent=$(ip netns exec "$(topo_pod 1)" python3 scripts/tcp_transfer.py send 10.244.1.13 5001 20000000)
wait "$server"
received=$(cat "$log.rx"); rm -f "$log.rx"
ms=$((($(date +%s%N) - start) / 1000000))
echo "sent:     $sent"
echo "received: $received  (${ms} ms)"
[ "$sent" = "$received" ] && echo "transfer intact" || { echo "TRANSFER CORRUPTED"; exit 1; }

echo "== stopping vswitch (SIGTERM)"
kill -TERM "$switch"
wait "$switch"
echo "== what vswitch printed"
cat "$log"
