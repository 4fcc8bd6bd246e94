# Network-namespace topologies for the demo, tests and benchmarks. Source it; nothing here
# touches the root namespace: every link is created inside a namespace.
#
#   topo_init PREFIX        names: ${PREFIX}sw (switch) and ${PREFIX}p1.. (pods); sets a trap
#   topo_add_pod N MAC IP   pod namespace N with eth0 (MAC, IP/24) cabled to vpN in the switch ns
#   topo_cleanup            deletes every namespace topo_init made

TOPO_NAMESPACES=()

topo_init() {
	TOPO_PREFIX=$1
	TOPO_SW="${TOPO_PREFIX}sw"
	ip netns add "$TOPO_SW"
	TOPO_NAMESPACES+=("$TOPO_SW")
	ip -n "$TOPO_SW" link set lo up
	trap topo_cleanup EXIT
	trap 'exit 130' INT TERM
}

topo_pod() { echo "${TOPO_PREFIX}p$1"; }

topo_add_pod() {
	local n=$1 mac=$2 addr=$3 ns
	ns=$(topo_pod "$n")
	ip netns add "$ns"
	TOPO_NAMESPACES+=("$ns")
	ip -n "$ns" link set lo up
	ip -n "$ns" link add eth0 type veth peer name "vp$n" netns "$TOPO_SW"
	ip -n "$ns" link set eth0 address "$mac"
	# Quiet pods: no IPv6 chatter, so frames on the wire are the ones a test sends.
	ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
	ip -n "$ns" addr add "$addr/24" dev eth0
	ip -n "$ns" link set eth0 up
	# veth leaves TCP/UDP checksums to offload; a frame that crosses an AF_XDP switch is
	# never finished by the kernel, so the pod must compute checksums itself.
	ip netns exec "$ns" ethtool -K eth0 tx off >/dev/null
	ip netns exec "$TOPO_SW" sysctl -qw "net.ipv6.conf.all.disable_ipv6=1"
	ip -n "$TOPO_SW" link set "vp$n" up
}

topo_cleanup() {
	local ns
	for ns in "${TOPO_NAMESPACES[@]}"; do
		ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null
		ip netns del "$ns" 2>/dev/null
	done
	TOPO_NAMESPACES=()
}
