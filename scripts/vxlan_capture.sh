#!/usr/bin/env bash
# Captures one frame as the Linux kernel's VXLAN device (set up as flannel's vxlan backend does)
# sends it on the underlay, and writes pipeline/tests/fixtures/kernel_vxlan_icmp.hex: a header of
# '#' comment lines (the commands run, the kernel, the decoded fields) and the whole Ethernet
# frame as one hex string.
#
# Two kernel nodes, the same addressing as switch/tests/vxlan.rs:
#   n1p1 10.244.1.11 ── vp1 ─ cni0 10.244.1.1 │ n1 │ flannel.1 (VNI 1) ─ vup 198.18.0.1 ═╗
#   n2p1 10.244.2.11 ── vp1 ─ cni0 10.244.2.1 │ n2 │ flannel.1 (VNI 1) ─ vup 198.18.0.2 ═╝
# n1p1 pings n2p1 once; tcpdump on n2's vup keeps the first UDP/4789 frame (the echo request).
# Node 1's vup has transmit checksum offload off, so that the outer UDP checksum is complete, as
# a NIC would put it on the wire (veth otherwise hands the frame over with the checksum unfilled).
#
# Usage (root): scripts/vxlan_capture.sh [OUTPUT]   (default: the fixture path above)
# Everything lives in namespaces named vxcap<pid>*, deleted on exit, also on failure.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-pipeline/tests/fixtures/kernel_vxlan_icmp.hex}
command -v tcpdump >/dev/null || {
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tcpdump >/dev/null
}
P=vxcap$$
tmp=$(mktemp -d)
cmds=$tmp/commands
cleanup() {
	for ns in ${P}n1p1 ${P}n2p1 ${P}n1 ${P}n2; do
		ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
		ip netns del "$ns" 2>/dev/null || true
	done
	rm -rf "$tmp"
}
trap cleanup EXIT
run() {
	echo "$*" >>"$cmds"
	"$@"
}

for ns in ${P}n1 ${P}n2 ${P}n1p1 ${P}n2p1; do
	run ip netns add "$ns"
	run ip -n "$ns" link set lo up
	run ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
done
run ip -n ${P}n1 link add vup type veth peer name vup netns ${P}n2
for i in 1 2; do
	n=${P}n$i
	pod=${P}n${i}p1
	run ip -n "$n" link set vup address 02:00:c6:12:00:0$i
	run ip -n "$n" addr add 198.18.0.$i/24 dev vup
	run ip -n "$n" link set vup up
	# The pod, as the bridge CNI plugin cables it (MTU 1450 on both veth ends).
	run ip -n "$pod" link add eth0 type veth peer name vp1 netns "$n"
	run ip -n "$pod" link set eth0 address 02:00:0a:f4:0$i:0b
	run ip -n "$pod" link set eth0 mtu 1450
	run ip -n "$pod" addr add 10.244.$i.11/24 dev eth0
	run ip -n "$pod" link set eth0 up
	run ip -n "$pod" route add default via 10.244.$i.1
	run ip -n "$n" link set vp1 mtu 1450
	run ip -n "$n" link set vp1 up
	# The node, as flannel's vxlan backend sets it up.
	run ip -n "$n" link add cni0 type bridge
	run ip -n "$n" link set vp1 master cni0
	run ip -n "$n" addr add 10.244.$i.1/24 dev cni0
	run ip -n "$n" link set cni0 up
	run ip netns exec "$n" sysctl -qw net.ipv4.ip_forward=1
	run ip -n "$n" link add flannel.1 type vxlan id 1 dstport 4789 local 198.18.0.$i dev vup nolearning
	run ip -n "$n" link set flannel.1 address 0e:00:00:00:00:0$i mtu 1450
	run ip -n "$n" link set flannel.1 up
	p=$((3 - i))
	run bridge -n "$n" fdb append 0e:00:00:00:00:0$p dev flannel.1 dst 198.18.0.$p
	run ip -n "$n" neigh replace 10.244.$p.0 lladdr 0e:00:00:00:00:0$p dev flannel.1 nud permanent
	run ip -n "$n" route add 10.244.$p.0/24 via 10.244.$p.0 dev flannel.1 onlink
done
run ip netns exec ${P}n1 ethtool -K vup tx off >/dev/null
# No ARP for the node addresses on the wire first: the capture's first frame is the VXLAN one.
run ip netns exec ${P}n1 ping -c 1 -W 1 198.18.0.2 >/dev/null

echo "timeout 10 ip netns exec ${P}n2 tcpdump -i vup -w $tmp/vxlan.pcap -c 1 -U udp port 4789 &" >>"$cmds"
timeout 10 ip netns exec ${P}n2 tcpdump -i vup -w "$tmp/vxlan.pcap" -c 1 -U udp port 4789 2>"$tmp/tcpdump.err" &
dump=$!
for _ in $(seq 50); do
	grep -q listening "$tmp/tcpdump.err" && break
	sleep 0.1
done
run ip netns exec ${P}n1p1 ping -c 1 -W 2 10.244.2.11 >/dev/null
wait $dump

python3 - "$tmp/vxlan.pcap" "$cmds" "$(uname -r)" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$P" >"$tmp/fixture" <<'EOF'
import struct, sys

pcap, cmds, kernel, date, prefix = sys.argv[1:]
data = open(pcap, "rb").read()
incl = struct.unpack("<I", data[24 + 8 : 24 + 12])[0]
f = data[40 : 40 + incl]

def mac(b): return ":".join(f"{x:02x}" for x in b)
def ip4(b): return ".".join(str(x) for x in b)
o, u, v, e, i = f[14:34], f[34:42], f[42:50], f[50:64], f[64:84]
assert f[12:14] == b"\x08\x00" and o[9] == 17 and struct.unpack("!H", u[2:4])[0] == 4789
frag = struct.unpack("!H", o[6:8])[0]
ifrag = struct.unpack("!H", i[6:8])[0]
icmp = f[84:]
lines = [
    "Kernel VXLAN encapsulation, captured: one ICMP echo request from pod n1p1 (node 1) to pod",
    "n2p1 (node 2) as node 1's flannel.1 (a Linux vxlan device set up as flannel's vxlan",
    "backend does) sent it, captured on node 2's underlay port. Written by",
    "scripts/vxlan_capture.sh; the addressing is switch/tests/vxlan.rs's.",
    "",
    f"kernel (uname -r): {kernel}",
    f"captured: {date}",
    f"frame: {len(f)} bytes (Ethernet header to the end of the inner frame, no FCS)",
    "",
    "Topology parameters:",
    "  node 1: uplink vup 198.18.0.1/24 MAC 02:00:c6:12:00:01; flannel.1 VTEP MAC 0e:00:00:00:00:01;",
    "          cni0 10.244.1.1/24; pod n1p1 10.244.1.11/24 MAC 02:00:0a:f4:01:0b, MTU 1450",
    "  node 2: uplink vup 198.18.0.2/24 MAC 02:00:c6:12:00:02; flannel.1 VTEP MAC 0e:00:00:00:00:02;",
    "          cni0 10.244.2.1/24; pod n2p1 10.244.2.11/24 MAC 02:00:0a:f4:02:0b, MTU 1450",
    "  VNI 1, UDP destination port 4789, flannel.1 MTU 1450, underlay MTU 1500",
    "",
    "Decoded:",
    f"  outer Ethernet: dst {mac(f[0:6])} src {mac(f[6:12])} type 0x0800",
    f"  outer IPv4: src {ip4(o[12:16])} dst {ip4(o[16:20])} ihl {o[0] & 15} tos 0x{o[1]:02x} "
    f"total length {struct.unpack('!H', o[2:4])[0]} id 0x{struct.unpack('!H', o[4:6])[0]:04x}",
    f"              flags DF={(frag >> 14) & 1} MF={(frag >> 13) & 1} fragment offset {frag & 0x1fff} "
    f"ttl {o[8]} protocol {o[9]} header checksum 0x{struct.unpack('!H', o[10:12])[0]:04x}",
    f"  outer UDP: src port {struct.unpack('!H', u[0:2])[0]} dst port {struct.unpack('!H', u[2:4])[0]} "
    f"length {struct.unpack('!H', u[4:6])[0]} checksum 0x{struct.unpack('!H', u[6:8])[0]:04x}",
    f"  VXLAN: flags 0x{v[0]:02x} reserved {v[1:4].hex()} VNI {int.from_bytes(v[4:7], 'big')} reserved {v[7]:02x}",
    f"  inner Ethernet: dst {mac(e[0:6])} src {mac(e[6:12])} type 0x{e[12:14].hex()}",
    f"  inner IPv4: src {ip4(i[12:16])} dst {ip4(i[16:20])} total length {struct.unpack('!H', i[2:4])[0]} "
    f"id 0x{struct.unpack('!H', i[4:6])[0]:04x} DF={(ifrag >> 14) & 1} ttl {i[8]} protocol {i[9]} "
    f"header checksum 0x{struct.unpack('!H', i[10:12])[0]:04x}",
    f"  inner ICMP: type {icmp[0]} code {icmp[1]} checksum 0x{icmp[2:4].hex()} id 0x{icmp[4:6].hex()} "
    f"seq {struct.unpack('!H', icmp[6:8])[0]}, {len(icmp) - 8} bytes of data",
    "",
    f"Commands (run as root in the root namespace; namespaces prefixed {prefix}):",
]
lines += ["  " + l for l in open(cmds).read().splitlines()]
lines += ["  # then: the pcap's one record, as hex, is the line below"]
print("\n".join(("# " + l).rstrip() for l in lines))
print(f.hex())
EOF
mkdir -p "$(dirname "$out")"
cp "$tmp/fixture" "$out"
echo "wrote $out"
