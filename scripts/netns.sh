# Network namespaces for the demo and the benchmarks. Source it. Names carry the caller's
# per-process prefix; nothing is ever created in the root namespace. Callers run
# netns_cleanup from their EXIT trap, so namespaces go also on failure.

NETNS_CREATED=()

# netns_add NAME: a namespace with loopback up and IPv6 off (no chatter on the wire).
netns_add() {
	ip netns add "$1"
	NETNS_CREATED+=("$1")
	ip -n "$1" link set lo up
	ip netns exec "$1" sysctl -qw net.ipv6.conf.all.disable_ipv6=1
}

# netns_cleanup: kills what runs in each namespace made here, then deletes it.
netns_cleanup() {
	local ns
	for ns in "${NETNS_CREATED[@]}"; do
		ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
		ip netns del "$ns" 2>/dev/null || true
	done
	NETNS_CREATED=()
}
