#!/usr/bin/env bash
# Throughput benchmarks of vswitch against the kernel path, in the same run, interleaved.
#
#   generator ns               switch ns                                   sink ns
#   gen0 10.244.1.4 ══ vgen ─ [vswitch | Linux bridge (+ nftables)] ─ vsink ══ sink0 10.244.1.2
#
# vswitch-pktgen sends 64-byte IPv4/UDP frames into gen0 through the kernel's live-frame XDP
# runner, as fast as it can; the sink counts what arrives (by default dropping it in a native
# XDP program, the cheapest sink; --sink stack lets the sink's kernel stack take it). The
# vswitch worker is pinned to core 0 and the generator to core 1 (vgen's receive work runs on
# the generator's core, the sink's on whichever core transmits to it).
#
# Scenarios:
#   l2    frames to the sink's MAC and address: vswitch --ports (and with --fast-path xdp) vs. a
#         Linux bridge, the kernel's bare XDP redirect vgen -> vsink (the limit of the path), Open vSwitch
#         3.1's userspace datapath with afxdp ports (datapath_type=netdev, PMD on core 0) and
#         DPDK testpmd io forwarding over two net_af_xdp vdevs (--no-huge, forwarding lcore 0):
#         the AF_XDP ceiling. The peers are installed from Debian packages when missing
#         (--peers none leaves them out). --rate PPS offers that rate to every plane (recorded
#         as offered_rate_pps; such results stay out of the chart).
#   dnat  frames to the gateway's MAC and a service VIP (10.96.0.10:80/udp) that is DNATed to
#         the sink pod (10.244.1.2:8080): vswitch --config vs. a Linux bridge with the gateway
#         address, IP forwarding and an nftables DNAT rule as kube-proxy writes them. With
#         --services N, N services exist and the measured one is the last (kube-proxy's
#         iptables mode matches rules in order). Also vswitch with --fast-path xdp (the flow's
#         packets after its first rewritten and redirected by the ports' XDP programs), and the
#         bridge with the same DNAT as kube-proxy's iptables mode writes it (iptables-nft,
#         installed from Debian when missing).
#   search  RFC 2544 / CSIT-style: binary search of the offered rate for NDR (no loss) and PDR
#         (0.5 % loss), then latency p50/p99/p99.9 at 10/50/90 % of PDR, L2, vswitch and the
#         Linux bridge, and vswitch with --fast-path xdp (scripts/rfc2544.py; receiver:
#         vswitch-pktgen recv on an AF_XDP socket, on its own core where there is one; latency
#         from the send stamp to the arrival at the sink interface, latency trials offered at
#         most 16 frames at once).
#   connrate  connection setup: the dnat scenario with TCP services and every frame a SYN of a
#         new connection (--conn-rate per second, offered for 2 s), with 1 and with 10,000
#         services: kube-proxy-style rules are matched for each new connection, in order.
#   scale  L2 with 1, 2 and 4 workers (--workers LIST) over multi-queue veth pairs: worker w
#         owns queue w of both ports; one generator process (vswitch-pktgen send --cores) with a
#         sending thread per queue, each pinned to its own core (veth picks the receive queue
#         from the sending CPU), so W workers need 2W cores; counts that do not fit are skipped
#         with a note.
#   ctscale  the dnat scenario on vswitch twice: with --fill N connections tracked before the
#         measurement (N distinct flows sent to the service first; UDP entries live 30 s) and
#         with an empty table: the cost of a big connection table.
#   vxlan  cross-node pod to pod over a flannel-style VXLAN overlay (VNI 1, UDP 4789): the switch
#         namespace becomes node 1 (pod gen0 10.244.1.4), a second node namespace node 2 (pod
#         sink0, moved there, 10.244.2.2), the nodes joined by an underlay veth pair vup ══ vup
#         (198.18.0.1, 198.18.0.2); frames to the gateway MAC and 10.244.2.2. vswitch --config
#         with [vxlan] on both nodes (node 1's worker on core 0, node 2's on core 1 with the
#         generator) vs. the kernel as flannel sets a node up (bridge cni0, flannel.1 with static
#         fdb/neigh/route entries). Pods' MTU 1450; transmit checksum offload off on the veth
#         ends that transmit into vswitch ports. Also vswitch with --fast-path xdp on both
#         nodes (encapsulation and decapsulation in XDP; workers polling adaptively). Every
#         plane's generator restores its headers; --rate PPS offers that rate to every plane
#         (recorded as offered_rate_pps, out of the chart). Runs last: it rewires the topology.
#         VS2_CORES=LIST moves node 2's worker.
#   tcp   pod to pod TCP on one node (issue 12): iperf3 from pod A (gen0 10.244.1.4, client) to
#         pod B (sink0 10.244.1.2, `iperf3 -s -1`), 1 and 4 streams, both directions (-R),
#         MTU 1500 (--mtu 9000: jumbo frames on both pods' veths), --duration seconds each (-J): vswitch
#         --ports vs. a Linux bridge, interleaved. The pods keep the kernel's default offloads
#         (vswitch finishes partial checksums). Gbit/s, retransmits and busy CPU (all cores,
#         /proc/stat) per Gbit/s. iperf3 is installed from Debian when missing. Not in `all`.
#   live  ports attached and detached under load (issue 8): L2 gen0 -> sink0 at --rate pps
#         (default 1,000,000) while nothing else happens, then while `vswitch ctl port add/del`
#         cycles 8 other pods' ports (each command's wall time, client process included);
#         frames lost between the two pods in each case. Then `port add` to the first frame
#         forwarded from the new pod (it streams a frame every 100 us to the sink before its
#         port exists; the sink's AF_PACKET socket stamps the first) and `port del`; then
#         unlimited-rate L2 with and without `vswitch ctl show stats` every 100 ms. Not in `all`.
#
#   scripts/bench.sh [--scenario l2|dnat|search|ctscale|vxlan|tcp|live|all] [--runs N] [--duration SECS]
#                    [--size BYTES] [--flows N] [--sink xdp-drop|stack] [--services N] [--fill N]
#                    [--peers ovs,testpmd,busypoll|none] [--workers "1 2 4"] [--conn-rate N]
#                    [--rate PPS] [--mtu BYTES]
#
# --peers busypoll adds vswitch --busy-poll to l2: preferred busy polling, the worker running
# its ports' receive NAPI itself. L2_PLANES="label:function ..." runs only those l2 planes;
# BENCH_SHOW_PORTS=1 prints each switch's port table (traffic and drops by reason) at its stop;
# VS_ARGS="--busy-poll" adds options to every vswitch started, SINK_NAPI=threaded moves the
# sink's receive NAPI to a kernel thread (both recorded in search results).
# BENCH_BIN=DIR uses the vswitch binaries in DIR and neither installs nor builds anything (a
# machine without cargo or network: scripts/device-bench.sh); the tools must be on PATH.
#
# Prints delivered packets per second (median and range), the ratio to the kernel path, the
# worker's processing cycles per packet, and writes JSON to bench/results/.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "bench.sh needs root (network namespaces, XDP)" >&2; exit 1; }
scenario=all runs=3 duration=5 size=64 flows=1 sink=xdp-drop services=1 fill=1000000 peers=ovs,testpmd
workers_list="1 2 4"
conn_rate=100000
live_rate=1000000 rate_given=
mtu=1500
# Service protocol and extra generator options (the connrate scenario changes them).
svc_proto=udp
gen_extra=()
while [ $# -gt 0 ]; do
	case $1 in
	--scenario) scenario=$2; shift 2 ;;
	--runs) runs=$2; shift 2 ;;
	--duration) duration=$2; shift 2 ;;
	--size) size=$2; shift 2 ;;
	--flows) flows=$2; shift 2 ;;
	--sink) sink=$2; shift 2 ;;
	--services) services=$2; shift 2 ;;
	--fill) fill=$2; shift 2 ;;
	--peers) peers=$2; shift 2 ;;
	--workers) workers_list=$2; shift 2 ;;
	--conn-rate) conn_rate=$2; shift 2 ;;
	--rate) live_rate=$2 rate_given=1; shift 2 ;;
	--mtu) mtu=$2; shift 2 ;;
	*) echo "bench.sh: unknown argument $1" >&2; exit 2 ;;
	esac
done
case $scenario in l2 | dnat | connrate | search | scale | ctscale | vxlan | tcp | live | all) ;; *) echo "bench.sh: --scenario must be l2, dnat, connrate, search, scale, ctscale, vxlan, tcp, live or all" >&2; exit 2 ;; esac
case $sink in xdp-drop | stack) ;; *) echo "bench.sh: --sink must be xdp-drop or stack" >&2; exit 2 ;; esac
[ -n "${BENCH_BIN:-}" ] || scripts/install-deps.sh
with_ovs="" with_testpmd=""
case ",$peers," in *,ovs,*) with_ovs=1 ;; esac
case ",$peers," in *,testpmd,*) with_testpmd=1 ;; esac
with_busypoll=""
case ",$peers," in *,busypoll,*) with_busypoll=1 ;; esac
install_peer() {
	command -v "$1" >/dev/null 2>&1 && return
	[ -z "${BENCH_BIN:-}" ] || { echo "bench.sh: $1 is missing (BENCH_BIN: nothing is installed)" >&2; exit 1; }
	echo "== installing $2"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${@:2}" >/dev/null
}
if [ "$scenario" = l2 ] || [ "$scenario" = all ]; then
	[ -z "$with_ovs" ] || install_peer ovs-vswitchd openvswitch-switch
	[ -z "$with_testpmd" ] || install_peer dpdk-testpmd dpdk-dev librte-net-af-xdp23
fi
[ "$scenario" != tcp ] || install_peer iperf3 iperf3
case $scenario in dnat | connrate | all) install_peer iptables-nft iptables ;; esac
if [ -n "${BENCH_BIN:-}" ]; then
	bin=$BENCH_BIN
	for tool in ip ethtool ping sysctl python3 $bin/vswitch $bin/vswitch-pktgen; do
		command -v "$tool" >/dev/null || { echo "bench.sh: $tool is missing (BENCH_BIN=$bin)" >&2; exit 1; }
	done
else
	echo "== building release binaries"
	cargo build --release -q -p switch -p bench
	bin=target/release
fi

P="vsb$$"
GEN=${P}gen SW=${P}sw SINK=${P}sink N2=${P}n2
tmp=$(mktemp -d)
. scripts/netns.sh
cleanup() {
	netns_cleanup
	rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

GEN_MAC=02:00:00:00:01:04 SINK_MAC=02:00:00:00:01:02 GW_MAC=02:76:0a:f4:01:01
for ns in $GEN $SW $SINK; do netns_add "$ns"; done
# As many queues as the largest worker count asked for (one queue otherwise).
queues=1
[ "$scenario" = scale ] && for w in $workers_list; do [ "$w" -gt "$queues" ] && queues=$w; done
ip -n $GEN link add gen0 numtxqueues $queues numrxqueues $queues type veth peer name vgen \
	numtxqueues $queues numrxqueues $queues netns $SW
ip -n $SINK link add sink0 numtxqueues $queues numrxqueues $queues type veth peer name vsink \
	numtxqueues $queues numrxqueues $queues netns $SW
ip -n $GEN link set gen0 address $GEN_MAC
ip -n $SINK link set sink0 address $SINK_MAC
ip -n $GEN addr add 10.244.1.4/24 dev gen0
ip -n $SINK addr add 10.244.1.2/24 dev sink0
ip -n $GEN link set gen0 up
ip -n $SINK link set sink0 up
# NAPI on the sink's end, which frames redirected by XDP into vsink need (GRO gives it).
ip netns exec $SINK ethtool -K sink0 gro on >/dev/null
# SINK_NAPI=threaded: the sink's receive NAPI in a kernel thread of its own, on any core, instead
# of in softirq on the core that transmits to it (over AF_XDP, the switch worker's).
case ${SINK_NAPI:-softirq} in
softirq) ;;
threaded) ip netns exec $SINK sh -c 'echo 1 > /sys/class/net/sink0/threaded' ;;
*) echo "bench.sh: SINK_NAPI must be softirq or threaded" >&2; exit 2 ;;
esac
ip -n $GEN route add default via 10.244.1.1
ip -n $SINK route add default via 10.244.1.1
ip -n $SW link set vgen up
ip -n $SW link set vsink up

# The sink's gateway (the vxlan scenario moves the sink to node 2's pod subnet).
SINK_GW=10.244.1.1

# The sink speaks once, so switches learn its MAC and the gateway its address.
announce_sink() {
	# Forget the gateway's MAC first, so the sink ARPs for it (and so is learned) every time:
	# once the XDP-drop sink is attached it cannot answer ARP.
	ip -n $SINK neigh flush all
	ip netns exec $SINK ping -c 1 -W 1 $SINK_GW >/dev/null 2>&1 || true
	ip netns exec $SINK python3 scripts/rawframe.py send sink0 ff:ff:ff:ff:ff:ff $SINK_MAC 1
	sleep 0.2
}

# cpu_snapshot: busy:total jiffies of every CPU, then the switch processes' (SWITCH_PID, a
# comma-separated list) user + system time, all from /proc.
cpu_snapshot() {
	python3 - "${SWITCH_PID:-0}" <<'PY'
import sys
pids = [int(p) for p in sys.argv[1].split(",") if int(p)]
cpus = []
for line in open("/proc/stat"):
    if line.startswith("cpu") and line[3].isdigit():
        f = [int(x) for x in line.split()[1:9]]
        cpus.append(f"{sum(f) - f[3] - f[4]}:{sum(f)}")
proc = 0
for pid in pids:
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        proc += int(fields[11]) + int(fields[12])
    except OSError:
        pass
print(" ".join(cpus), proc)
PY
}

# start_sink_counter: counts what sink0 receives (behind an XDP drop with --sink xdp-drop) into
# $tmp/sink for the run plus 2 s; sets COUNTER to its pid. (Not in a command substitution: the
# caller must be able to wait for it.)
start_sink_counter() {
	local drop=()
	[ "$sink" = xdp-drop ] && drop=(--xdp-drop)
	ip netns exec $SINK $bin/vswitch-pktgen count --dev sink0 "${drop[@]}" --duration "$((duration + 2))" >"$tmp/sink" &
	COUNTER=$!
	sleep 0.5
}

# measure DST_MAC DST_IP DST_PORT: runs the generator; prints "delivered_pps offered_pps
# cpu0_busy cpu1_busy switch_process_cores" (busy: fraction of the CPU over the run, any work).
measure() {
	start_sink_counter
	local counter=$COUNTER gen_out before after
	before=$(cpu_snapshot)
	gen_out=$(ip netns exec $GEN $bin/vswitch-pktgen send --dev gen0 --core 1 --src-mac $GEN_MAC \
		--dst-mac "$1" --src-ip 10.244.1.4 --dst-ip "$2" --dst-port "$3" \
		--size "$size" --flows "$flows" --duration "$duration" "${gen_extra[@]}" | tail -1)
	after=$(cpu_snapshot)
	wait $counter
	python3 - "$(tail -1 "$tmp/sink")" "$gen_out" "$before" "$after" <<'PY'
import os, re, sys
received = int(re.search(r"received=(\d+)", sys.argv[1]).group(1))
sent = int(re.search(r"sent=(\d+)", sys.argv[2]).group(1))
secs = float(re.search(r"seconds=([0-9.]+)", sys.argv[2]).group(1))
b, a = sys.argv[3].split(), sys.argv[4].split()
busy = []
for x, y in zip(b[:-1], a[:-1]):
    (bb, bt), (ab, at) = map(int, x.split(":")), map(int, y.split(":"))
    busy.append((ab - bb) / max(at - bt, 1))
busy += [0.0] * (2 - len(busy))
proc = (int(a[-1]) - int(b[-1])) / os.sysconf("SC_CLK_TCK") / secs
if os.environ.get("COUNTS_TO"):
    open(os.environ["COUNTS_TO"], "w").write(f"{sent} {received}\n")
print(round(received / secs), round(sent / secs), f"{busy[0]:.2f}", f"{busy[1]:.2f}", f"{proc:.2f}")
PY
}

# start_vswitch ARGS...: runs vswitch in namespace VS_NS (default the switch namespace) until
# stop_vswitch, its output in VS_LOG; its workers on VS_CORES (default 0); waits for its program
# on VS_PORT (default vsink).
start_vswitch() {
	local ns=${VS_NS:-$SW}
	VS_LOG=$tmp/vswitch-$ns
	# Each switch its own control socket: two run at once in the vxlan scenario.
	# The AF_XDP planes are the switch without its (default) fast path: asked for where wanted.
	local plane=(--fast-path off) prev=
	for a in "$@"; do
		[ "$a" = --fast-path ] && plane=()
		[ "$prev" = --config ] && grep -q '^fast_path' "$a" && plane=()
		prev=$a
	done
	# shellcheck disable=SC2086 # VS_ARGS: extra switch options for an experiment, split on spaces
	ip netns exec "$ns" $bin/vswitch "$@" "${plane[@]}" ${VS_ARGS:-} --cores "${VS_CORES:-0}" --poll "${VS_POLL:-busy}" --ctl "$tmp/ctl-$ns.sock" >"$VS_LOG" 2>&1 &
	VS=$!
	SWITCH_PID=$VS
	for _ in $(seq 100); do ip -n "$ns" -d link show "${VS_PORT:-vsink}" | grep -q prog/xdp && break; sleep 0.1; done
	if ! kill -0 $VS 2>/dev/null; then
		echo "bench.sh: vswitch did not start:" >&2
		cat "$VS_LOG" >&2
		exit 1
	fi
}

# stop_vswitch: waits for the vswitch VS (output in VS_LOG) to detach and exit; sets CPP to the
# worker's processing cycles per packet. (Not in a command substitution: `wait` only works in
# the shell that started it.)
stop_vswitch() {
	# What the fast path carried (only when it was on).
	$bin/vswitch ctl --socket "$tmp/ctl-${VS_NS:-$SW}.sock" show stats --json 2>/dev/null | python3 -c '
import json, sys
w = json.load(sys.stdin)["workers"]
n = sum(x.get("fast_path_installed", 0) for x in w)
if n:
    print("   vswitch fast path: %d packets, %d flows installed, %d removed" % (sum(x["fast_path_packets"] for x in w), n, sum(x["fast_path_removed"] for x in w)), file=sys.stderr)
# Stalls: how long the rings went unserved (what tail latency and loss at moderate load cost).
for i, x in enumerate(w):
    print("   vswitch worker %d: longest gap %d us, gaps over 1 ms %d (%d working), longest pass %d us, housekeeping %d us, preempted %d times, waited %d us for its core, ksoftirqd on its core ran %d us and waited %d us for it, steal on its core %d ms, passes over 20/100 us %d/%d, kicks over 20/100 us %d/%d, full batches %d" % (i, x.get("longest_gap_us", 0), x.get("gaps_over_1ms", 0), x.get("gaps_over_1ms_working", 0), x.get("longest_pass_us", 0), x.get("longest_housekeeping_us", 0), x.get("preemptions", 0), x.get("waited_for_core_us", 0), x.get("core_softirq_thread_us", 0), x.get("core_softirq_thread_waited_us", 0), x.get("core_steal_ms", 0), x.get("passes_over_20us", 0), x.get("passes_over_100us", 0), x.get("kicks_over_20us", 0), x.get("kicks_over_100us", 0), x.get("full_batches", 0)), file=sys.stderr)
' || true
	kill -TERM $VS
	wait $VS
	SWITCH_PID=0
	CPP=$(sed -nE 's/.*processing_cycles_per_packet=([0-9]+).*/\1/p' "$VS_LOG" | head -1)
	grep -o 'conntrack: [0-9]* flows' "$VS_LOG" | sed 's/^/   vswitch at exit: /' >&2 || true
	# BENCH_SHOW_PORTS=1: where frames went and were dropped, per port.
	[ -z "${BENCH_SHOW_PORTS:-}" ] || sed -n '/^port /,/^bridge/p' "$VS_LOG" | sed 's/^/   /' >&2
}

bridge_up() {
	ip -n $SW link add br0 type bridge
	ip -n $SW link set br0 address $GW_MAC
	ip -n $SW link set vgen master br0
	ip -n $SW link set vsink master br0
	ip -n $SW link set br0 up
	# Frames sent by XDP into a veth need NAPI on its peer: GRO gives it without XDP.
	ip netns exec $SW ethtool -K vgen gro on >/dev/null
}

bridge_down() {
	ip netns exec $SW ethtool -K vgen gro off >/dev/null
	ip netns exec $SW nft flush ruleset 2>/dev/null || true
	ip -n $SW link del br0
}

l2_vswitch() {
	start_vswitch --ports vgen,vsink
	announce_sink
	local r
	r=$(measure $SINK_MAC 10.244.1.2 9)
	stop_vswitch
	echo "$r $CPP"
}

# The XDP fast path: the first frame learns and installs the flow, the rest never leave XDP.
l2_vswitch_fast() {
	start_vswitch --ports vgen,vsink --fast-path xdp
	announce_sink
	local r
	r=$(measure $SINK_MAC 10.244.1.2 9)
	stop_vswitch
	echo "$r $CPP"
}

# The kernel's bare XDP forwarding between the same veths (bpf_redirect in native XDP on vgen):
# what any XDP forwarder can reach at most.
l2_xdp_redirect() {
	ip netns exec $SW $bin/vswitch-pktgen redirect --dev vgen --to vsink --duration $((duration + 4)) >/dev/null &
	local rd=$! r
	for _ in $(seq 50); do ip -n $SW -d link show vgen | grep -q prog/xdp && break; sleep 0.1; done
	r=$(measure $SINK_MAC 10.244.1.2 9)
	kill $rd 2>/dev/null || true
	wait $rd 2>/dev/null || true
	echo "$r 0"
}

l2_vswitch_busypoll() {
	start_vswitch --ports vgen,vsink --busy-poll
	announce_sink
	local r
	r=$(measure $SINK_MAC 10.244.1.2 9)
	stop_vswitch
	echo "$r $CPP"
}

l2_kernel() {
	bridge_up
	announce_sink
	local r
	r=$(measure $SINK_MAC 10.244.1.2 9)
	bridge_down
	echo "$r 0"
}

# Open vSwitch, userspace datapath with afxdp ports, its PMD on core 0, in the switch namespace.
ovs_up() {
	OVSD=$tmp/ovs
	mkdir -p "$OVSD"
	export OVS_RUNDIR=$OVSD OVS_LOGDIR=$OVSD OVS_DBDIR=$OVSD OVS_SYSCONFDIR=$OVSD
	VSCTL=(ovs-vsctl --db="unix:$OVSD/db.sock")
	{
		ovsdb-tool create "$OVSD/conf.db" /usr/share/openvswitch/vswitch.ovsschema
		ip netns exec $SW ovsdb-server "$OVSD/conf.db" --remote="punix:$OVSD/db.sock" \
			--pidfile="$OVSD/ovsdb.pid" --detach --log-file="$OVSD/ovsdb.log"
		"${VSCTL[@]}" --no-wait init
		"${VSCTL[@]}" --no-wait set Open_vSwitch . other_config:pmd-cpu-mask=0x1
		ip netns exec $SW ovs-vswitchd "unix:$OVSD/db.sock" --pidfile="$OVSD/vswitchd.pid" --detach \
			--log-file="$OVSD/vswitchd.log"
		"${VSCTL[@]}" add-br br0 -- set bridge br0 datapath_type=netdev
		"${VSCTL[@]}" add-port br0 vgen -- set interface vgen type=afxdp options:xdp-mode=native
		"${VSCTL[@]}" add-port br0 vsink -- set interface vsink type=afxdp options:xdp-mode=native
	} >>"$tmp/ovs.out" 2>&1
	for _ in $(seq 100); do ip -n $SW -d link show vsink | grep -q xdp && break; sleep 0.1; done
	sleep 1
	SWITCH_PID=$(cat "$OVSD/vswitchd.pid")
}

ovs_appctl() { ip netns exec $SW ovs-appctl -t "$OVSD/ovs-vswitchd.$(cat "$OVSD/vswitchd.pid").ctl" "$@"; }

ovs_down() {
	ovs_appctl exit --cleanup || true
	ip netns exec $SW ovs-appctl -t "$OVSD/ovsdb-server.$(cat "$OVSD/ovsdb.pid").ctl" exit || true
	for _ in $(seq 100); do ip -n $SW -d link show vsink | grep -q xdp || break; sleep 0.1; done
	rm -rf "$OVSD"
	SWITCH_PID=0
}

l2_ovs() {
	ovs_up
	announce_sink
	ovs_appctl dpif-netdev/pmd-stats-clear >/dev/null
	local r cpp
	r=$(measure $SINK_MAC 10.244.1.2 9)
	cpp=$(ovs_appctl dpif-netdev/pmd-stats-show | sed -nE 's/.*avg processing cycles per packet: ([0-9]+).*/\1/p' | head -1)
	ovs_down
	echo "$r ${cpp:-0}"
}

# DPDK testpmd io forwarding between two net_af_xdp vdevs: forwarding lcore 0, main lcore 1.
l2_testpmd() {
	ip netns exec $SW dpdk-testpmd -l 0,1 --main-lcore 1 --no-huge -m 1024 --no-pci --file-prefix "$P" \
		--vdev net_af_xdp0,iface=vgen --vdev net_af_xdp1,iface=vsink -- \
		--forward-mode=io --auto-start --stats-period 1 --nb-cores=1 >"$tmp/testpmd" 2>&1 &
	local tp=$! r
	SWITCH_PID=$tp
	for _ in $(seq 100); do ip -n $SW -d link show vsink | grep -q xdp && break; sleep 0.1; done
	sleep 1
	announce_sink
	r=$(measure $SINK_MAC 10.244.1.2 9)
	kill -INT $tp
	wait $tp || true
	SWITCH_PID=0
	for _ in $(seq 100); do ip -n $SW -d link show vsink | grep -q xdp || break; sleep 0.1; done
	echo "$r 0"
}

# The measured service is the last of $services (10.96.0.10); the others take 10.97.x.y.
service_vip() { echo 10.96.0.10; }
other_vip() { echo "10.97.$(($1 / 250)).$(($1 % 250 + 1))"; }

# dnat_vswitch [FILL]: with FILL, that many flows are tracked before the measurement.
# DNAT_FAST=1: with the XDP fast path (established flows rewritten and redirected by XDP).
dnat_vswitch() {
	local fill_flows=${1:-0}
	{
		printf '[node]\nconntrack_capacity = %d\n' $((fill_flows * 2 + 262144))
		printf '[pods]\nports = ["vgen", "vsink"]\ngateway = "10.244.1.1/24"\n'
		for i in $(seq 1 $((services - 1))); do
			printf '[[service]]\nname = "s%d"\ncluster_ip = "%s"\nport = 80\nprotocol = "%s"\nbackends = ["10.244.1.3:8080"]\n' "$i" "$(other_vip "$i")" "$svc_proto"
		done
		printf '[[service]]\nname = "web"\ncluster_ip = "10.96.0.10"\nport = 80\nprotocol = "%s"\nbackends = ["10.244.1.2:8080"]\n' "$svc_proto"
	} >"$tmp/node.toml"
	if [ "${DNAT_FAST:-0}" = 1 ]; then
		start_vswitch --config "$tmp/node.toml" --fast-path xdp
	else
		start_vswitch --config "$tmp/node.toml"
	fi
	announce_sink
	if [ "$fill_flows" -gt 0 ]; then
		# Source addresses from 10.244.100.0 on: never the measured flow's.
		ip netns exec $GEN $bin/vswitch-pktgen send --dev gen0 --core 1 --src-mac $GEN_MAC \
			--dst-mac $GW_MAC --src-ip 10.244.100.0 --dst-ip "$(service_vip)" --dst-port 80 \
			--flows "$fill_flows" --burst 1 --count "$fill_flows" --rate 500000 --duration 60 >/dev/null
		sleep 1
	fi
	local r
	r=$(measure $GW_MAC "$(service_vip)" 80)
	stop_vswitch
	echo "$r $CPP"
}

dnat_vswitch_fast() { DNAT_FAST=1 dnat_vswitch; }
ctscale_vswitch() { dnat_vswitch "$fill"; }
ctscale_kernel() { dnat_vswitch 0; }

# kernel_dnat RULES: the Linux bridge as the pods' gateway (its address, IP forwarding) with
# the DNAT rules the function RULES loads, measured; undone after (bridge_down flushes every
# nftables table, iptables-nft's too).
kernel_dnat() {
	bridge_up
	ip -n $SW addr add 10.244.1.1/24 dev br0
	ip netns exec $SW sysctl -qw net.ipv4.ip_forward=1
	"$1"
	announce_sink
	local r
	r=$(measure $GW_MAC "$(service_vip)" 80)
	ip netns exec $SW sysctl -qw net.ipv4.ip_forward=0
	ip -n $SW addr flush dev br0
	bridge_down
	echo "$r 0"
}

# The DNAT as kube-proxy's nftables mode writes it.
nft_dnat_rules() {
	{
		echo "table ip kube-proxy {"
		echo "  chain prerouting { type nat hook prerouting priority dstnat; policy accept; jump services; }"
		echo "  chain services {"
		for i in $(seq 1 $((services - 1))); do
			echo "    ip daddr $(other_vip "$i") $svc_proto dport 80 dnat to 10.244.1.3:8080"
		done
		echo "    ip daddr 10.96.0.10 $svc_proto dport 80 dnat to 10.244.1.2:8080"
		echo "  }"
		echo "}"
	} >"$tmp/rules.nft"
	ip netns exec $SW nft -f "$tmp/rules.nft"
}

# The same DNAT as kube-proxy's iptables mode writes it (KUBE-SERVICES from nat PREROUTING,
# a rule per service matched in order), loaded with iptables-nft-restore: the backend
# kube-proxy's iptables mode uses on current distributions, and one whose tables `nft flush
# ruleset` removes (iptables-legacy's nat table, once made, stays registered in the namespace
# with conntrack until the namespace goes, which would slow every later kernel plane).
ipt_dnat_rules() {
	{
		echo "*nat"
		echo ":KUBE-SERVICES - [0:0]"
		echo "-A PREROUTING -j KUBE-SERVICES"
		for i in $(seq 1 $((services - 1))); do
			echo "-A KUBE-SERVICES -d $(other_vip "$i")/32 -p $svc_proto --dport 80 -j DNAT --to-destination 10.244.1.3:8080"
		done
		echo "-A KUBE-SERVICES -d 10.96.0.10/32 -p $svc_proto --dport 80 -j DNAT --to-destination 10.244.1.2:8080"
		echo "COMMIT"
	} >"$tmp/rules.ipt"
	ip netns exec $SW iptables-nft-restore <"$tmp/rules.ipt"
	echo "   kernel-ipt-dnat: $(iptables-nft --version)" >&2
}

dnat_kernel() { kernel_dnat nft_dnat_rules; }
dnat_kernel_ipt() { kernel_dnat ipt_dnat_rules; }

# The VXLAN overlay as flannel's vxlan backend sets it up: VNI 1, UDP port 4789; node i's VTEP
# (flannel.1) MAC 0e:00:00:00:00:0i, its uplink 198.18.0.i, its pod subnet 10.244.i.0/24.
VNI=1 VXLAN_PORT=4789 POD_MTU=1450

# vxlan_topology: the switch namespace becomes node 1, a new namespace node 2; the sink's switch
# end moves to node 2 and the sink becomes pod 10.244.2.2 there; an underlay veth pair joins the
# nodes' uplinks vup. Pods get the overlay MTU on both veth ends (as the CNI plugin does).
vxlan_topology() {
	netns_add $N2
	ip -n $SW link set vsink netns $N2
	ip -n $SW link add vup type veth peer name vup netns $N2
	local i ns
	for i in 1 2; do
		ns=$SW
		[ $i = 1 ] || ns=$N2
		ip -n $ns link set vup address 02:00:c6:12:00:0$i
		ip -n $ns link set vup up
	done
	ip -n $SINK addr flush dev sink0
	ip -n $SINK addr add 10.244.2.2/24 dev sink0
	ip -n $SINK route replace default via 10.244.2.1
	SINK_GW=10.244.2.1
	ip -n $GEN link set gen0 mtu $POD_MTU
	ip -n $SW link set vgen mtu $POD_MTU
	ip -n $N2 link set vsink mtu $POD_MTU
	ip -n $SINK link set sink0 mtu $POD_MTU
	ip -n $N2 link set vsink up
	# veth leaves checksums to offload and AF_XDP never completes them: every end that transmits
	# into a vswitch port computes its own (the pods, and each uplink into the other node's).
	ip netns exec $GEN ethtool -K gen0 tx off >/dev/null
	ip netns exec $SINK ethtool -K sink0 tx off >/dev/null
	ip netns exec $SW ethtool -K vup tx off >/dev/null
	ip netns exec $N2 ethtool -K vup tx off >/dev/null
}

# vxlan_toml I PEER PORT: vswitch's config for node I, its pod on PORT, its one peer node PEER.
vxlan_toml() {
	local i=$1 p=$2
	printf '[pods]\nports = ["%s"]\ngateway = "10.244.%d.1/24"\n' "$3" "$i"
	printf '[uplink]\nport = "vup"\naddress = "198.18.0.%d/24"\nnext_hop = "198.18.0.%d"\n' "$i" "$p"
	printf 'cluster_cidrs = ["10.244.0.0/16", "10.96.0.0/12"]\n'
	printf '[vxlan]\nvni = %d\nudp_port = %d\nmac = "0e:00:00:00:00:%02x"\n' $VNI $VXLAN_PORT "$i"
	printf '[[vxlan.peer]]\ncidr = "10.244.%d.0/24"\nvtep = "198.18.0.%d"\nmac = "0e:00:00:00:00:%02x"\n' "$p" "$p" "$p"
}

# vswitch on both nodes: node 1's worker on core 0, node 2's on core 1 (with the generator).
# Prints both workers' processing cycles per packet, summed. VXLAN_FAST=1: with the XDP fast
# path (node 2 first: its uplink's program gives node 1's uplink NAPI to redirect into), the
# workers polling adaptively (the traffic is not theirs once the flow is installed).
vxlan_vswitch() {
	vxlan_toml 1 2 vgen >"$tmp/node1.toml"
	vxlan_toml 2 1 vsink >"$tmp/node2.toml"
	local fast=() poll=busy
	[ -n "${VXLAN_FAST:-}" ] && fast=(--fast-path xdp) poll=adaptive
	VS_POLL=$poll VS_NS=$N2 VS_CORES=${VS2_CORES:-1} start_vswitch --config "$tmp/node2.toml" "${fast[@]}"
	local vs2=$VS log2=$VS_LOG r cpp
	VS_POLL=$poll VS_PORT=vup start_vswitch --config "$tmp/node1.toml" "${fast[@]}"
	SWITCH_PID=$VS,$vs2
	announce_sink
	r=$(measure $GW_MAC 10.244.2.2 9)
	stop_vswitch
	cpp=${CPP:-0}
	VS_NS=$N2 VS=$vs2 VS_LOG=$log2 stop_vswitch
	echo "$r $((cpp + ${CPP:-0}))"
}

# flannel_up NS I PEER PORT: node I (namespace NS, its pod on PORT) as flannel's vxlan backend
# and the bridge CNI plugin set it up: bridge cni0 with the gateway address (and vswitch's
# gateway MAC, so the generator's frames fit both), IP forwarding, flannel.1 over vup, and for
# the peer a static FDB entry, a permanent neighbour and an onlink route.
vxlan_vswitch_fast() { VXLAN_FAST=1 vxlan_vswitch; }

flannel_up() {
	local ns=$1 i=$2 p=$3 port=$4
	ip -n "$ns" addr add "198.18.0.$i/24" dev vup
	ip -n "$ns" link add cni0 type bridge
	ip -n "$ns" link set cni0 address "02:76:0a:f4:0$i:01"
	ip -n "$ns" link set "$port" master cni0
	ip -n "$ns" addr add "10.244.$i.1/24" dev cni0
	ip -n "$ns" link set cni0 up
	ip netns exec "$ns" sysctl -qw net.ipv4.ip_forward=1
	ip -n "$ns" link add flannel.1 type vxlan id $VNI dstport $VXLAN_PORT local "198.18.0.$i" dev vup nolearning
	ip -n "$ns" link set flannel.1 address "0e:00:00:00:00:0$i" mtu $POD_MTU
	ip -n "$ns" link set flannel.1 up
	bridge -n "$ns" fdb append "0e:00:00:00:00:0$p" dev flannel.1 dst "198.18.0.$p"
	ip -n "$ns" neigh replace "10.244.$p.0" lladdr "0e:00:00:00:00:0$p" dev flannel.1 nud permanent
	ip -n "$ns" route add "10.244.$p.0/24" via "10.244.$p.0" dev flannel.1 onlink
}

flannel_down() {
	ip -n "$1" link del flannel.1
	ip -n "$1" link del cni0
	ip netns exec "$1" sysctl -qw net.ipv4.ip_forward=0
	ip -n "$1" addr flush dev vup
	ip -n "$1" neigh flush all
}

vxlan_kernel() {
	flannel_up $SW 1 2 vgen
	flannel_up $N2 2 1 vsink
	# Frames sent by XDP into a veth need NAPI on its peer: GRO gives it without XDP.
	ip netns exec $SW ethtool -K vgen gro on >/dev/null
	# The generator's live frames sit in pages that the kernel recycles without restoring their
	# data, and a routed kernel path rewrites them in place (MACs and TTL, on both nodes): all
	# but a page's first frame would reach the bridge addressed to the peer's VTEP and be dropped.
	# Put the generator's headers back where they enter, in an nftables netdev ingress chain on
	# vgen (vswitch copies frames into its UMEM and never writes the pages).
	ip netns exec $SW nft -f - <<-EOF
		table netdev restore {
		  chain in { type filter hook ingress device "vgen" priority 0;
		    ether daddr set $GW_MAC ether saddr set $GEN_MAC ip ttl set 64; }
		}
	EOF
	announce_sink
	# The XDP-drop sink cannot answer ARP: node 2 keeps its address, as the pod's answers would.
	ip -n $N2 neigh replace 10.244.2.2 lladdr $SINK_MAC dev cni0 nud permanent
	local r
	r=$(measure $GW_MAC 10.244.2.2 9)
	ip netns exec $SW nft delete table netdev restore
	ip netns exec $SW ethtool -K vgen gro off >/dev/null
	flannel_down $SW
	flannel_down $N2
	echo "$r 0"
}

# TCP between two pods on one node (--scenario tcp): pod A is gen0 (client), pod B sink0
# (server). Both keep the kernel's default offloads (no `ethtool -K ... tx off` here).
# tcp_one STREAMS REVERSE: one bounded iperf3 run; prints "gbps retransmits busy_cores
# switch_process_cores" (busy: all CPUs from /proc/stat over the client's run).
tcp_one() {
	local rev=() srv out before after
	[ "$2" = 1 ] && rev=(-R)
	ip netns exec $SINK timeout $((duration + 20)) iperf3 -s -1 -B 10.244.1.2 >"$tmp/iperf-s" 2>&1 &
	srv=$!
	for _ in $(seq 50); do ip netns exec $SINK ss -ltn | grep -q ':5201 ' && break; sleep 0.1; done
	out=$tmp/iperf-c
	before=$(cpu_snapshot)
	ip netns exec $GEN timeout $((duration + 15)) iperf3 -c 10.244.1.2 -B 10.244.1.4 -t "$duration" \
		-P "$1" "${rev[@]}" -J >"$out" || true
	after=$(cpu_snapshot)
	wait $srv || true
	python3 - "$out" "$before" "$after" "$duration" <<'PY'
import json, os, sys
try:
    end = json.load(open(sys.argv[1]))["end"]
    gbps = end["sum_received"]["bits_per_second"] / 1e9
    retr = end["sum_sent"].get("retransmits", 0)
except (ValueError, KeyError):
    gbps, retr = 0.0, -1
b, a = sys.argv[2].split(), sys.argv[3].split()
busy = 0.0
for x, y in zip(b[:-1], a[:-1]):
    (bb, bt), (ab, at) = map(int, x.split(":")), map(int, y.split(":"))
    busy += (ab - bb) / max(at - bt, 1)
proc = (int(a[-1]) - int(b[-1])) / os.sysconf("SC_CLK_TCK") / float(sys.argv[4])
print(f"{gbps:.3f}", retr, f"{busy:.2f}", f"{proc:.2f}")
PY
}

tcp_vswitch() {
	start_vswitch --ports vgen,vsink
	local r
	r=$(tcp_one "$@")
	stop_vswitch
	echo "$r"
}

tcp_vswitch_fast() {
	start_vswitch --ports vgen,vsink --fast-path xdp
	local r
	r=$(tcp_one "$@")
	stop_vswitch
	echo "$r"
}

# The same pods behind the node gateway (--config), with the fast path: pod to pod on the
# segment, untracked, carried by the XDP programs as the gateway offered it.
tcp_vswitch_gw_fast() {
	printf '[node]\nfast_path = "xdp"\n[pods]\nports = ["vgen", "vsink"]\ngateway = "10.244.1.1/24"\n' >"$tmp/node-tcp.toml"
	start_vswitch --config "$tmp/node-tcp.toml"
	local r
	r=$(tcp_one "$@")
	stop_vswitch
	echo "$r"
}

# The Linux bridge as the bridge CNI plugin leaves it: no offload changes anywhere.
tcp_bridge() {
	ip -n $SW link add br0 type bridge
	ip -n $SW link set vgen master br0
	ip -n $SW link set vsink master br0
	ip -n $SW link set br0 up
	local r
	r=$(tcp_one "$@")
	ip -n $SW link del br0
	echo "$r"
}

# Generator ceiling: straight into an XDP drop on the next veth (not for tcp: no generator).
gen_ceiling=0
[ "$scenario" = tcp ] || {
echo "== generator ceiling (into an XDP drop on the next veth)"
ip netns exec $SW $bin/vswitch-pktgen count --dev vgen --xdp-drop --duration "$((duration + 2))" >"$tmp/ceiling" &
c=$!
sleep 0.5
gen_out=$(ip netns exec $GEN $bin/vswitch-pktgen send --dev gen0 --core 1 --src-mac $GEN_MAC --dst-mac $SINK_MAC \
	--size "$size" --flows "$flows" --duration "$duration" | tail -1)
wait $c
gen_ceiling=$(python3 -c "import re,sys; r=int(re.search(r'received=(\d+)', sys.argv[1]).group(1)); s=float(re.search(r'seconds=([0-9.]+)', sys.argv[2]).group(1)); print(round(r/s))" "$(tail -1 "$tmp/ceiling")" "$gen_out")
echo "   $gen_ceiling pps"
}

mkdir -p bench/results
stamp=$(date -u +%Y%m%dT%H%M%SZ)

# run_scenario NAME LABEL:FUNCTION...: interleaved runs of each dataplane (the first is the one
# the ratios are of), a table and JSON. Each FUNCTION prints "delivered offered cycles".
run_scenario() {
	local name=$1 r pair label fn d o c
	shift
	local -A pps_of cycles_of cpu_of
	local b0 b1 pc
	echo "== scenario $name ($runs runs of ${duration}s, ${size}-byte frames, sink $sink, ${services} service(s), $flows flow(s))"
	for r in $(seq "$runs"); do
		for pair in "$@"; do
			label=${pair%%:*} fn=${pair#*:}
			read -r d o b0 b1 pc c < <("$fn")
			pps_of[$label]+="$d "
			cycles_of[$label]+="${c:-0} "
			cpu_of[$label]+="$b0,$b1,$pc "
			printf 'run %s %-16s delivered %s pps (offered %s); cpu0 %s cpu1 %s busy, switch process %s cores%s\n' \
				"$r" "$label:" "$d" "$o" "$b0" "$b1" "$pc" "$([ "${c:-0}" != 0 ] && echo ", $c cycles/packet")"
		done
	done
	local out=bench/results/$name-$sink-$stamp.json spec=()
	[ "$services" = 1 ] || out=bench/results/$name-$sink-${services}svc-$stamp.json
	[ "$name" != vxlan ] || out=bench/results/$name-$sink-${size}B-${flows}flows-$stamp.json
	for pair in "$@"; do
		label=${pair%%:*}
		spec+=("$label" "${pps_of[$label]}" "${cycles_of[$label]}" "${cpu_of[$label]}")
	done
	SINK=$sink python3 - "$out" "$name" "$size" "$flows" "$duration" "$services" "$gen_ceiling" "${spec[@]}" <<'PY'
import json, os, platform, statistics, sys
out, name, size, flows, duration, services, ceiling = sys.argv[1:8]
rest = sys.argv[8:]
planes, cpu = [], {}
for i in range(0, len(rest), 4):
    runs = [int(x) for x in rest[i + 1].split()]
    cycles = [int(x) for x in rest[i + 2].split()]
    cpu[rest[i]] = [[float(v) for v in run.split(",")] for run in rest[i + 3].split()]
    planes.append((rest[i], runs, cycles))
med = statistics.median
first = med(planes[0][1])
result = {
    "scenario": name, "sink": os.environ["SINK"], "frame_size": int(size), "flows": int(flows),
    "services": int(services), "duration_s": float(duration),
    # --rate: what every plane was offered (None: as fast as the generator goes).
    "offered_rate_pps": int(os.environ["OFFERED_RATE"]) if os.environ.get("OFFERED_RATE") else None,
    "machine": f"{platform.node()} {os.cpu_count()} cores {platform.machine()} kernel {platform.release()}",
    "generator_ceiling_pps": int(ceiling),
    "dataplanes": {label: {
        "runs_pps": runs, "median_pps": med(runs), "cycles_per_packet": cycles,
        "cpu0_busy": [c[0] for c in cpu[label]], "cpu1_busy": [c[1] for c in cpu[label]],
        "switch_process_cores": [c[2] for c in cpu[label]],
        "pps_per_busy_core_system_wide": [round(r / max(c[0] + c[1], 0.01)) for r, c in zip(runs, cpu[label])],
    } for label, runs, cycles in planes},
    "ratios": {f"{planes[0][0]}/{label}": round(first / med(runs), 3) if med(runs) else None
               for label, runs, _ in planes[1:]},
}
json.dump(result, open(out, "w"), indent=2)
print()
print(f"{'dataplane':<18} {'median pps':>12} {'min-max pps':>24} {planes[0][0] + ' is':>14} {'cpu0+cpu1 busy':>15} {'pps/busy core':>14}")
for label, runs, cycles in planes:
    ratio = first / med(runs) if med(runs) else float("nan")
    busy = med([c[0] + c[1] for c in cpu[label]])
    print(f"{label:<18} {med(runs):>12,.0f} {min(runs):>11,}-{max(runs):<12,} {ratio:>13.2f}x {busy:>15.2f} {med(runs) / max(busy, 0.01):>14,.0f}")
for label, runs, cycles in planes:
    if any(cycles):
        print(f"{label}: {med(cycles):,.0f} processing cycles per packet (median)")
print(f"generator ceiling: {int(ceiling):,} pps; written {out}")
print()
PY
}

l2_planes=(vswitch:l2_vswitch linux-bridge:l2_kernel vswitch-fastpath:l2_vswitch_fast kernel-xdp-redirect:l2_xdp_redirect)
[ -n "$with_ovs" ] && l2_planes+=(ovs-afxdp:l2_ovs)
[ -n "$with_testpmd" ] && l2_planes+=(testpmd-af_xdp:l2_testpmd)
[ -n "$with_busypoll" ] && l2_planes+=(vswitch-busy-poll:l2_vswitch_busypoll)
# L2_PLANES="label:function ...": only these (quick comparisons while changing one of them).
[ -z "${L2_PLANES:-}" ] || read -ra l2_planes <<<"$L2_PLANES"
if [ "$scenario" = l2 ] || [ "$scenario" = all ]; then
	# --rate: every plane offered that rate (stalls show at moderate load too).
	[ -z "$rate_given" ] || gen_extra=(--rate "$live_rate")
	OFFERED_RATE=${rate_given:+$live_rate} run_scenario l2 "${l2_planes[@]}"
	gen_extra=()
fi
if [ "$scenario" = dnat ] || [ "$scenario" = all ]; then
	# The fast path rewrites frames in place and the generator's pages come back as they
	# left: every plane gets the same header-restoring generator.
	gen_extra=(--restore-headers)
	run_scenario dnat vswitch:dnat_vswitch kernel-nft-dnat:dnat_kernel vswitch-fastpath:dnat_vswitch_fast kernel-ipt-dnat:dnat_kernel_ipt
	gen_extra=()
fi
[ "$scenario" = ctscale ] && run_scenario ctscale vswitch:ctscale_vswitch vswitch-empty-ct:ctscale_kernel
if [ "$scenario" = connrate ]; then
	# Every frame a SYN of a new connection, offered at conn_rate for 2 s (fits the kernel's
	# default 262,144-entry conntrack table, which is global and left alone).
	svc_proto=tcp duration=2 flows=$((conn_rate * 2))
	gen_extra=(--transport tcp-syn --burst 1 --rate "$conn_rate")
	for services in 1 10000; do
		run_scenario connrate vswitch:dnat_vswitch kernel-nft-dnat:dnat_kernel vswitch-fastpath:dnat_vswitch_fast kernel-ipt-dnat:dnat_kernel_ipt
	done
fi
# Last: it rewires the topology.
if [ "$scenario" = vxlan ] || [ "$scenario" = all ]; then
	vxlan_topology
	# The fast path rewrites the generator's pages in place (see the dnat scenario).
	gen_extra=(${VXLAN_GEN_EXTRA---restore-headers})
	# --rate: every plane offered that rate (else as fast as the generator goes, which on 2
	# cores starves node 2's worker, sharing the generator's core).
	[ -z "$rate_given" ] || gen_extra+=(--rate "$live_rate")
	OFFERED_RATE=${rate_given:+$live_rate} run_scenario vxlan vswitch:vxlan_vswitch kernel-vxlan:vxlan_kernel vswitch-fastpath:vxlan_vswitch_fast
	gen_extra=()
fi
# Multi-core scaling: W workers, W generators on cores W..2W-1, each feeding its own queue.
scale_run() {
	local w=$1 cores
	cores=$(seq -s, 0 $((w - 1)))
	ip -n $GEN link set gen0 down
	ip netns exec $GEN ethtool -L gen0 rx "$w" tx "$w" >/dev/null 2>&1 || true
	ip netns exec $SW ethtool -L vgen rx "$w" tx "$w" >/dev/null 2>&1 || true
	ip netns exec $SW ethtool -L vsink rx "$w" tx "$w" >/dev/null 2>&1 || true
	ip netns exec $SINK ethtool -L sink0 rx "$w" tx "$w" >/dev/null 2>&1 || true
	ip -n $GEN link set gen0 up
	VS_CORES=$cores start_vswitch --ports vgen,vsink
	announce_sink
	start_sink_counter
	local counter=$COUNTER
	# One generator process, one program held once, a sending thread on each of cores W..2W-1
	# (veth picks the receive queue from the sending CPU). It refuses when it cannot hold the
	# program: unheld, every send rewrites the XDP dispatcher and the generators stall.
	ip netns exec $GEN $bin/vswitch-pktgen send --dev gen0 --cores "$(seq -s, "$w" $((2 * w - 1)))" \
		--src-mac $GEN_MAC --dst-mac $SINK_MAC --src-ip 10.244.1.4 --dst-ip 10.244.1.2 --dst-port 9 \
		--size "$size" --flows "$flows" --duration "$duration" | tail -1 >"$tmp/gen"
	wait $counter
	stop_vswitch
	python3 - "$(tail -1 "$tmp/sink")" "$(cat "$tmp/gen")" <<'PY'
import re, sys
received = int(re.search(r"received=(\d+)", sys.argv[1]).group(1))
secs = float(re.search(r"seconds=([0-9.]+)", sys.argv[2]).group(1))
print(round(received / secs))
PY
}

if [ "$scenario" = scale ]; then
	ncpu=$(nproc)
	declare -A scaled
	echo "== scenario scale (workers: $workers_list; $queues queues per port; $runs runs of ${duration}s)"
	for r in $(seq "$runs"); do
		for w in $workers_list; do
			if [ $((2 * w)) -gt "$ncpu" ]; then
				[ "$r" = 1 ] && echo "   $w workers skipped: needs $((2 * w)) cores (workers and generators), this machine has $ncpu"
				continue
			fi
			d=$(scale_run "$w")
			scaled[$w]+="$d "
			echo "run $r $w worker(s): delivered $d pps"
		done
	done
	out=bench/results/scale-$sink-$stamp.json
	spec=()
	for w in $workers_list; do [ -n "${scaled[$w]:-}" ] && spec+=("$w" "${scaled[$w]}"); done
	python3 - "$out" "${spec[@]}" <<'PY'
import json, os, platform, statistics, sys
out, rest = sys.argv[1], sys.argv[2:]
rows = {int(rest[i]): [int(x) for x in rest[i + 1].split()] for i in range(0, len(rest), 2)}
machine = f"{platform.node()} {os.cpu_count()} cores {platform.machine()} kernel {platform.release()}"
base = statistics.median(rows[min(rows)]) if rows else None
json.dump({"scenario": "scale-l2", "machine": machine,
           "workers": {w: {"runs_pps": r, "median_pps": statistics.median(r)} for w, r in rows.items()}},
          open(out, "w"), indent=2)
print(f"\n{'workers':>8} {'median pps':>12} {'vs. fewest':>11}")
for w, r in sorted(rows.items()):
    print(f"{w:>8} {statistics.median(r):>12,.0f} {statistics.median(r) / base if base else float('nan'):>10.2f}x")
print(f"written {out}")
PY
fi

if [ "$scenario" = tcp ]; then
	declare -A tcp_of
	for dev in gen0:$GEN vgen:$SW sink0:$SINK vsink:$SW; do ip -n "${dev#*:}" link set "${dev%%:*}" mtu "$mtu"; done
	# Both pods with GRO, as vswitch-cni leaves them (NAPI for the fast path's redirects).
	ip netns exec $GEN ethtool -K gen0 gro on >/dev/null
	echo "== scenario tcp (iperf3, $runs run(s) of ${duration}s per case, MTU $mtu, pods' default offloads)"
	for r in $(seq "$runs"); do
		for streams in 1 4; do
			for rev in 0 1; do
				for pair in vswitch:tcp_vswitch vswitch-fastpath:tcp_vswitch_fast vswitch-gw-fastpath:tcp_vswitch_gw_fast linux-bridge:tcp_bridge; do
					label=${pair%%:*} fn=${pair#*:}
					read -r g re b pc < <("$fn" "$streams" "$rev")
					tcp_of[$streams,$rev,$label]+="$g,$re,$b,$pc "
					printf 'run %s P=%s %-7s %-13s %s Gbit/s, %s retransmits, %s cores busy, switch process %s cores\n' \
						"$r" "$streams" "$([ $rev = 1 ] && echo B-to-A || echo A-to-B)" "$label:" "$g" "$re" "$b" "$pc"
				done
			done
		done
	done
	out=bench/results/tcp-mtu$mtu-$stamp.json
	spec=()
	for k in "${!tcp_of[@]}"; do spec+=("$k" "${tcp_of[$k]}"); done
	MTU=$mtu python3 - "$out" "$duration" "${spec[@]}" <<'PY'
import json, os, platform, statistics, sys
out, duration, rest = sys.argv[1], sys.argv[2], sys.argv[3:]
med = statistics.median
cases = {}
for i in range(0, len(rest), 2):
    streams, rev, label = rest[i].split(",")
    runs = [[float(v) for v in run.split(",")] for run in rest[i + 1].split()]
    case = f"{streams} stream(s), {'B to A (-R)' if rev == '1' else 'A to B'}"
    cases.setdefault(case, {})[label] = {
        "runs_gbps": [r[0] for r in runs], "median_gbps": med([r[0] for r in runs]),
        "retransmits": [int(r[1]) for r in runs], "busy_cores": [r[2] for r in runs],
        "switch_process_cores": [r[3] for r in runs],
        "busy_cores_per_gbps": [round(r[2] / r[0], 3) if r[0] else None for r in runs],
    }
for planes in cases.values():
    b = planes["linux-bridge"]["median_gbps"]
    for label in ("vswitch", "vswitch-fastpath", "vswitch-gw-fastpath"):
        planes[f"ratio_{label}/linux-bridge"] = round(planes[label]["median_gbps"] / b, 3) if b else None
result = {"scenario": "tcp", "tool": "iperf3", "mtu": int(os.environ["MTU"]), "duration_s": float(duration),
          "machine": f"{platform.node()} {os.cpu_count()} cores {platform.machine()} kernel {platform.release()}",
          "cases": dict(sorted(cases.items()))}
json.dump(result, open(out, "w"), indent=2)
print(f"\n{'case':<26} {'dataplane':<17} {'Gbit/s':>8} {'retr':>7} {'busy':>6} {'cores/Gbit/s':>13} {'of bridge':>10}")
for case, planes in sorted(cases.items()):
    for label in ("vswitch", "vswitch-fastpath", "vswitch-gw-fastpath", "linux-bridge"):
        p = planes[label]
        busy = med(p["busy_cores"])
        r = planes.get(f"ratio_{label}/linux-bridge")
        ratio = f"{r:.2f}x" if r else ""
        print(f"{case:<26} {label:<17} {p['median_gbps']:>8.2f} {int(med(p['retransmits'])):>7} {busy:>6.2f} "
              f"{busy / p['median_gbps'] if p['median_gbps'] else float('nan'):>13.3f} {ratio:>11}")
print(f"written {out}")
PY
fi

[ "$scenario" = search ] || [ "$scenario" = scale ] || [ "$scenario" = tcp ] || [ "$scenario" = live ] || python3 scripts/chart.py

# RFC 2544 search, L2: vswitch, vswitch with the fast path, then the Linux bridge
# (SEARCH_PLANES="vswitch linux-bridge" runs only those).
search_one() {
	local ctl=()
	[ "$1" = linux-bridge ] || ctl=(--switch-ctl "$tmp/ctl-$SW.sock")
	python3 scripts/rfc2544.py --gen-ns $GEN --sink-ns $SINK --switch-ns $SW --src-mac $GEN_MAC --dst-mac $SINK_MAC \
		--dst-ip 10.244.1.2 --dst-port 9 --label "$1" --bin $bin "${ctl[@]}" | tee "$tmp/search-$1"
}
if [ "$scenario" = search ]; then
	searched=()
	for plane in ${SEARCH_PLANES:-vswitch vswitch-fastpath linux-bridge}; do
		case $plane in
		vswitch) start_vswitch --ports vgen,vsink ;;
		vswitch-fastpath) start_vswitch --ports vgen,vsink --fast-path xdp ;;
		linux-bridge) bridge_up ;;
		*) echo "bench.sh: SEARCH_PLANES: no plane $plane" >&2; exit 2 ;;
		esac
		announce_sink
		search_one "$plane"
		searched+=("$tmp/search-$plane")
		if [ "$plane" = linux-bridge ]; then bridge_down; else stop_vswitch; fi
	done
	out=bench/results/search-$stamp.json
	python3 - "$out" "${searched[@]}" <<'PY'
import json, os, platform, sys
runs = [json.loads(open(f).read().strip().splitlines()[-1]) for f in sys.argv[2:]]
machine = f"{platform.node()} {os.cpu_count()} cores {platform.machine()} kernel {platform.release()}"
json.dump({"scenario": "search-l2", "machine": machine, "switch_args": os.environ.get("VS_ARGS", ""),
           "sink_napi": os.environ.get("SINK_NAPI", "softirq"),
           "results": runs}, open(sys.argv[1], "w"), indent=2)
print(f"\n{'dataplane':<14} {'NDR pps':>12} {'PDR pps':>12}   latency p50/p99/p99.9 us at 10 %, 50 %, 90 % of PDR")
for r in runs:
    lat = "  ".join(f"{k}: {v['p50']}/{v['p99']}/{v['p999']}" for k, v in r["latency_us_at_pdr_share"].items())
    print(f"{r['label']:<14} {r['ndr_pps']:>12,} {r['pdr_pps']:>12,}   {lat}")
print(f"written {sys.argv[1]}")
PY
fi
# Ports attached and detached under load (--scenario live).

# loss_points: counters of the places a frame between gen0 and sink0 can be lost, as JSON.
loss_points() {
	python3 - "$SW" "$GEN" "$SINK" $bin/vswitch "$tmp/ctl-$SW.sock" <<'PY'
import json, subprocess, sys
sw, gen, sink, vswitch, sock = sys.argv[1:]
def ethtool(ns, dev):
    out = subprocess.run(["ip", "netns", "exec", ns, "ethtool", "-S", dev], capture_output=True, text=True).stdout
    return {k.strip(): int(v) for k, v in (l.split(":") for l in out.splitlines()[1:]) if v.strip().isdigit()}
stats = json.loads(subprocess.run([vswitch, "ctl", "--socket", sock, "show", "stats", "--json"], capture_output=True, text=True).stdout)
ports = stats["ports"]
worker = {f"worker {k}": v for k, v in stats["workers"][0].items() if k in ("gaps_over_1ms", "longest_gap_us", "longest_commands_us")}
drops = {f"vswitch {p['name']} {k}": v for p in ports if p["name"] in ("vgen", "vsink") for k, v in p["drops"].items()}
g, v, k = ethtool(gen, "gen0"), ethtool(sw, "vgen"), ethtool(sink, "sink0")
print(json.dumps({"gen0 xdp_xmit_errors (vgen's ring full)": g.get("tx_queue_0_xdp_xmit_errors", 0),
                  "vgen rx drops": v.get("rx_queue_0_drops", 0) + v.get("rx_queue_0_xdp_drops", 0),
                  "vgen xdp redirect to the switch": v.get("rx_queue_0_xdp_redirect", 0),
                  "sink0 rx drops": k.get("rx_queue_0_drops", 0), **drops, **worker}))
PY
}

# loss_delta BEFORE AFTER: the counters that grew between two loss_points.
loss_delta() {
	python3 -c '
import json, sys
a, b = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(", ".join(f"{k} +{b[k] - a.get(k, 0)}" for k in b if b[k] != a.get(k, 0)) or "none grew")
' "$1" "$2"
}

# lost: frames the generator sent that the sink did not count, in the last measure.
lost() { read -r sent received <"$tmp/counts"; echo $((sent - received)); }

# live_churn SECONDS: cycles port add / port del over vp1..vp8 until SECONDS pass; each command's
# wall time in ms (client process included) appended to $tmp/churn-add and $tmp/churn-del.
live_churn() {
	$spare python3 - "$1" "$tmp" $bin/vswitch "$tmp/ctl-$SW.sock" $SW <<'PY'
import subprocess, sys, time
secs, tmp, vswitch, sock, ns = float(sys.argv[1]), *sys.argv[2:]
end = time.monotonic() + secs
adds, dels = open(f"{tmp}/churn-add", "a"), open(f"{tmp}/churn-del", "a")
i = 0
while time.monotonic() < end:
    port = f"vp{i % 8 + 1}"
    for op, log in (("add", adds), ("del", dels)):
        t = time.monotonic()
        subprocess.run([vswitch, "ctl", "--socket", sock, "port", op, port],
                       check=True, stdout=subprocess.DEVNULL)
        log.write(f"{(time.monotonic() - t) * 1000:.1f}\n")
    i += 1
PY
}

# live_first: prints "add_ms first_frame_ms del_ms" for pod newp attached as vnew.
live_first() {
	ip netns exec $SINK python3 scripts/rawframe.py first sink0 02:00:00:00:01:99 5 >"$tmp/first" &
	local rx=$!
	for _ in $(seq 50); do grep -q ready "$tmp/first" && break; sleep 0.1; done
	ip netns exec $NEW python3 scripts/rawframe.py stream newp $SINK_MAC 02:00:00:00:01:99 4 &
	local tx=$!
	sleep 0.3
	local times
	times=$(python3 - $bin/vswitch "$tmp/ctl-$SW.sock" $SW <<'PY'
import subprocess, sys, time
vswitch, sock, ns = sys.argv[1:]
t0 = time.monotonic_ns()
subprocess.run([vswitch, "ctl", "--socket", sock, "port", "add", "vnew"], check=True, stdout=subprocess.DEVNULL)
print(t0, time.monotonic_ns())
PY
)
	wait $rx
	wait $tx
	local t
	t=$(python3 - $bin/vswitch "$tmp/ctl-$SW.sock" $SW <<'PY'
import subprocess, sys, time
vswitch, sock, ns = sys.argv[1:]
t0 = time.monotonic_ns()
subprocess.run([vswitch, "ctl", "--socket", sock, "port", "del", "vnew"], check=True, stdout=subprocess.DEVNULL)
print((time.monotonic_ns() - t0) / 1e6)
PY
)
	python3 -c '
import sys
t0, t1 = map(int, sys.argv[1].split())
first = sys.argv[2].strip()
print(f"{(t1 - t0) / 1e6:.1f}", f"{(int(first) - t0) / 1e6:.1f}" if first.isdigit() else "none", f"{float(sys.argv[3]):.1f}")
' "$times" "$(tail -1 "$tmp/first")" "$t"
}

# live_show: unlimited-rate L2 with `show stats` every 100 ms beside it.
live_show() {
	# Bounded (a measurement that fails leaves it behind): the run, and some to spare.
	(for _ in $(seq $(((duration + 30) * 10))); do $spare $bin/vswitch ctl --socket "$tmp/ctl-$SW.sock" show stats >/dev/null; sleep 0.1; done) &
	local loop=$!
	measure $SINK_MAC 10.244.1.2 9
	kill $loop
	wait $loop 2>/dev/null || true
}

if [ "$scenario" = live ]; then
	# The control clients run off the worker's core (as kubelet and CNI do on a node whose
	# dataplane cores are reserved): on the generator's core, which has room to spare.
	spare="taskset -c 1"
	PODS=${P}pods NEW=${P}new
	netns_add $PODS
	netns_add $NEW
	for i in $(seq 8); do
		ip -n $SW link add vp$i type veth peer name p$i netns $PODS
		ip -n $SW link set vp$i up
		ip -n $PODS link set p$i up
	done
	ip -n $SW link add vnew type veth peer name newp netns $NEW
	ip -n $SW link set vnew up
	ip -n $NEW link set newp address 02:00:00:00:01:99 up
	echo "== scenario live ($runs runs; L2 at $live_rate pps for ${duration}s each; 8 ports cycled)"
	start_vswitch --ports vgen,vsink
	announce_sink
	base_lost="" churn_lost="" firsts="" show_on="" show_off=""
	for r in $(seq "$runs"); do
		gen_extra=(--rate "$live_rate")
		p0=$(loss_points)
		read -r d o _ < <(COUNTS_TO=$tmp/counts measure $SINK_MAC 10.244.1.2 9)
		base_lost+="$(lost) "
		echo "run $r quiet:           delivered $d pps of $o offered"
		echo "   counters that grew: $(loss_delta "$p0" "$(loss_points)")"
		p0=$(loss_points)
		live_churn "$duration" &
		churn=$!
		read -r d o _ < <(COUNTS_TO=$tmp/counts measure $SINK_MAC 10.244.1.2 9)
		wait $churn
		churn_lost+="$(lost) "
		echo "run $r ports churning:  delivered $d pps of $o offered"
		echo "   counters that grew: $(loss_delta "$p0" "$(loss_points)")"
		gen_extra=()
		read -r d _ < <(measure $SINK_MAC 10.244.1.2 9)
		show_off+="$d "
		read -r s _ < <(live_show)
		show_on+="$s "
		echo "run $r unlimited:       $d pps without show, $s pps with show stats every 100 ms"
		read -r a f x < <(live_first)
		firsts+="$a,$f,$x "
		echo "run $r new pod:         port add $a ms, first frame forwarded $f ms after it began, port del $x ms"
	done
	stop_vswitch
	out=bench/results/live-$stamp.json
	python3 - "$out" "$live_rate" "$duration" "$base_lost" "$churn_lost" "$show_off" "$show_on" "$firsts" "$tmp" <<'PY'
import json, os, platform, statistics, sys
out, rate, duration, base, churn, off, on, firsts, tmp = sys.argv[1:]
ints = lambda s: [int(x) for x in s.split()]
med = statistics.median
adds = [float(x) for x in open(f"{tmp}/churn-add")]
dels = [float(x) for x in open(f"{tmp}/churn-del")]
first = [f.split(",") for f in firsts.split()]
num = lambda v: float(v) if v != "none" else None
result = {
    "scenario": "live", "offered_pps": int(rate), "duration_s": float(duration),
    "machine": f"{platform.node()} {os.cpu_count()} cores {platform.machine()} kernel {platform.release()}",
    "frames_lost_quiet": ints(base), "frames_lost_while_ports_churn": ints(churn),
    "churn_port_add_ms": {"count": len(adds), "median": med(adds), "max": max(adds)},
    "churn_port_del_ms": {"count": len(dels), "median": med(dels), "max": max(dels)},
    "new_pod": [{"port_add_ms": num(a), "first_frame_ms": num(f), "port_del_ms": num(x)} for a, f, x in first],
    "unlimited_pps_without_show": ints(off), "unlimited_pps_with_show": ints(on),
    "show_ratio": round(med(ints(on)) / med(ints(off)), 4),
}
json.dump(result, open(out, "w"), indent=2)
print()
print(f"frames lost at {int(rate):,} pps: quiet {base.split()}, while ports churn {churn.split()}")
print(f"port add (client wall time): median {med(adds):.1f} ms, max {max(adds):.1f} ms over {len(adds)}")
print(f"port del (client wall time): median {med(dels):.1f} ms, max {max(dels):.1f} ms over {len(dels)}")
print("new pod: port add / first frame / port del ms:", "; ".join("/".join(f) for f in first))
print(f"show stats every 100 ms: {result['show_ratio']:.3f}x the rate without it")
print(f"written {out}")
PY
fi
exit 0
