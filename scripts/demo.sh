#!/usr/bin/env bash
# The demo: one Kubernetes node whose pod dataplane is vswitch.
#
#   pod1 10.244.1.2 ─ vp1 ┐                                      ┌ n2 ── node-2 pod 10.244.2.5
#   pod2 10.244.1.3 ─ vp2 ├─ vswitch ── vup ═══ up ─ router ──────┤       (behind node 2, 198.18.0.2)
#   pod3 10.244.1.4 ─ vp3 ┘  gateway 10.244.1.1  198.18.0.254     └ ext ─ external host 198.19.0.10
#                            node 198.18.0.1
#
# Service "web" 10.96.0.10:80 → pod1, pod2 and the node-2 pod on 8080; NodePort 30080.
# Builds a release binary, makes the namespaces, runs vswitch --config, shows pods talking on
# their segment, load-balanced service traffic, NodePort from outside, masquerade to the
# outside, the inbound policy, a host-gw route, a 20 MB transfer; shows the switch's tables with
# `vswitch ctl`, prints its counters and cleans up (also on failure).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "demo.sh needs root (network namespaces, XDP)" >&2; exit 1; }
scripts/install-deps.sh
echo "== building"
cargo build --release -q -p switch
P="vsdemo$$"
tmp=$(mktemp -d)
. scripts/netns.sh
cleanup() {
	local status=$?
	# A demo that failed shows what the switch said (its log goes with $tmp).
	if [ "$status" -ne 0 ] && [ -s "$tmp/vswitch.log" ]; then
		echo "== the demo failed (status $status); vswitch's log:" >&2
		cat "$tmp/vswitch.log" >&2
	fi
	# Our background servers first, waited for quietly (else the shell reports each one).
	local jobs
	jobs=$(jobs -p)
	[ -z "$jobs" ] || { kill $jobs; wait $jobs; } 2>/dev/null || true
	netns_cleanup
	rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
ns() { netns_add "$P$1"; }
in_ns() { local n=$1; shift; ip netns exec "$P$n" "$@"; }

echo "== building the node in network namespaces (prefix $P)"
ns sw
ns rt
for i in 1 2 3; do
	ns "p$i"
	ip -n "${P}p$i" link add eth0 type veth peer name "vp$i" netns "${P}sw"
	ip -n "${P}p$i" link set eth0 address "02:00:00:00:01:0$i"
	ip -n "${P}p$i" addr add "10.244.1.$((i + 1))/24" dev eth0
	ip -n "${P}p$i" link set eth0 up
	ip -n "${P}p$i" route add default via 10.244.1.1
	# GRO gives the pod's end NAPI: frames the switch's XDP fast path redirects to it need it.
	in_ns "p$i" ethtool -K eth0 gro on >/dev/null
	ip -n "${P}sw" link set "vp$i" up
done
ip -n "${P}sw" link add vup type veth peer name up netns "${P}rt"
ip -n "${P}sw" link set vup up
ip -n "${P}rt" addr add 198.18.0.254/24 dev up
ip -n "${P}rt" addr add 198.18.0.2/24 dev up
ip -n "${P}rt" link set dev up up
in_ns rt ethtool -K up gro on >/dev/null
in_ns rt sysctl -qw net.ipv4.ip_forward=1
ip -n "${P}rt" route add 10.244.1.0/24 via 198.18.0.1
for side in "n2 10.244.2" "ex 198.19.0"; do
	set -- $side
	ns "$1"
	ip -n "${P}rt" link add "$1" type veth peer name eth0 netns "$P$1"
	ip -n "${P}rt" addr add "$2.1/24" dev "$1"
	ip -n "${P}rt" link set "$1" up
	ip -n "$P$1" addr add "$2.$([ "$1" = n2 ] && echo 5 || echo 10)/24" dev eth0
	ip -n "$P$1" link set eth0 up
	ip -n "$P$1" route add default via "$2.1"
done

cat >"$tmp/node.toml" <<'TOML'
[pods]
ports = ["vp1", "vp2", "vp3"]
gateway = "10.244.1.1/24"

[uplink]
port = "vup"
address = "198.18.0.1/24"
next_hop = "198.18.0.254"
masquerade = true
cluster_cidrs = ["10.244.0.0/16", "10.96.0.0/12"]

[[route]]
cidr = "10.244.2.0/24"
via = "198.18.0.2"

[[service]]
name = "web"
cluster_ip = "10.96.0.10"
port = 80
protocol = "tcp"
node_port = 30080
backends = ["10.244.1.2:8080", "10.244.1.3:8080", "10.244.2.5:8080"]
TOML

echo "== starting vswitch --config node.toml in ${P}sw"
# Not through a shell function: $! must be vswitch itself, to signal and wait for it.
ip netns exec "${P}sw" target/release/vswitch --config "$tmp/node.toml" --ctl "$tmp/vswitch.sock" \
	--stats-interval 2 >"$tmp/vswitch.log" 2>&1 &
switch=$!
for _ in $(seq 100); do ip -n "${P}sw" -d link show vup | grep -q prog/xdp && break; sleep 0.1; done
kill -0 "$switch" 2>/dev/null || { echo "vswitch exited at start" >&2; exit 1; }
ip -n "${P}sw" -d link show vup | grep -q prog/xdp || { echo "vswitch did not attach within 10 s" >&2; exit 1; }
head -1 "$tmp/vswitch.log"

serve() { in_ns "$1" python3 scripts/http_probe.py serve 8080 "$2" 120 >"$tmp/serve-$1" & }
serve p1 pod1
serve p2 pod2
serve n2 node-2-pod
serve ex client-ip
for s in p1 p2 n2 ex; do
	for _ in $(seq 50); do grep -q ready "$tmp/serve-$s" 2>/dev/null && break; sleep 0.1; done
done
get() { in_ns "$1" python3 scripts/http_probe.py get "$2" "$3" 2; }
tally() { sort | uniq -c | sed 's/^/      /'; }

echo "== pods on the pod segment, and the gateway"
for target in 10.244.1.3 10.244.1.1; do
	printf '   pod1 -> %-11s ' "$target"
	in_ns p1 ping -c 3 -i 0.2 -q "$target" | grep -o '[0-9]* received.*loss'
done
echo "== 30 requests from pod3 to the service 10.96.0.10:80 (Maglev over three backends)"
get p3 http://10.96.0.10:80/ 30 | tally
echo "== 6 requests from the external host to the NodePort 198.18.0.1:30080"
get ex http://198.18.0.1:30080/ 6 | tally
echo "== pod3 -> external host: the address the external host saw (masquerade)"
echo "      $(get p3 http://198.19.0.10:8080/ 1)"
echo "== external host -> pod1 directly (must be dropped)"
echo "      $(get ex http://10.244.1.2:8080/ 1)"
echo "== pod3 -> the pod on node 2 (host-gw route via 198.18.0.2)"
echo "      $(get p3 http://10.244.2.5:8080/ 1)"

echo "== 20 MB over TCP, pod1 -> pod3, checksum compared"
in_ns p3 python3 scripts/tcp_transfer.py serve 5001 >"$tmp/rx" &
server=$!
sleep 0.3
start=$(date +%s%N)
sent=$(in_ns p1 python3 scripts/tcp_transfer.py send 10.244.1.4 5001 20000000)
wait "$server"
ms=$((($(date +%s%N) - start) / 1000000))
received=$(cat "$tmp/rx")
echo "   sent:     $sent"
echo "   received: $received  (${ms} ms)"
[ "$sent" = "$received" ] || { echo "TRANSFER CORRUPTED"; exit 1; }

ctl() { target/release/vswitch ctl --socket "$tmp/vswitch.sock" "$@" | sed 's/^/   /'; }
echo "== the switch's tables (vswitch ctl)"
for what in ports fdb neigh routes services; do
	echo "-- vswitch ctl show $what"
	ctl show "$what"
done
echo "-- vswitch ctl show conntrack --limit 5"
ctl show conntrack --limit 5
echo "-- vswitch ctl show stats"
ctl show stats

echo "== stopping vswitch (SIGTERM); what it printed"
kill -TERM "$switch"
wait "$switch"
cat "$tmp/vswitch.log"
