#!/usr/bin/env bash
# L2 forwarding benchmark: vswitch against the Linux bridge, in the same run, interleaved.
#
#   generator ns            switch ns                         sink ns
#   gen0 ══ vgen ─ [vswitch | Linux bridge br0] ─ vsink ══ sink0
#
# vswitch-pktgen sends 64-byte IPv4/UDP frames into gen0 through the kernel's live-frame XDP
# runner, as fast as it can; the sink drops them in a native XDP program and counts them. The
# worker is pinned to core 0 and the generator to core 1 (the veth receive work of vgen runs on
# the generator's core, the sink's on the worker's). Prints delivered packets per second (median
# and range of RUNS runs), the ratio, the worker's processing cycles per packet, and writes JSON
# to bench/results/.
#
# --sink stack lets the sink's kernel stack take the frames instead (IP receive, then dropped
# for want of a socket): closer to a pod, and the sink's cost lands on whichever core delivers.
#
#   scripts/bench.sh [--runs N] [--duration SECS] [--size BYTES] [--flows N] [--sink xdp-drop|stack]
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "bench.sh needs root (network namespaces, XDP)" >&2; exit 1; }
runs=3 duration=5 size=64 flows=1 sink=xdp-drop
while [ $# -gt 0 ]; do
	case $1 in
	--runs) runs=$2; shift 2 ;;
	--duration) duration=$2; shift 2 ;;
	--size) size=$2; shift 2 ;;
	--flows) flows=$2; shift 2 ;;
	--sink) sink=$2; shift 2 ;;
	*) echo "bench.sh: unknown argument $1" >&2; exit 2 ;;
	esac
done
scripts/install-deps.sh
echo "== building release binaries"
cargo build --release -q -p switch -p bench
bin=target/release

P="vsb$$"
GEN=${P}gen SW=${P}sw SINK=${P}sink
cleanup() {
	for ns in $GEN $SW $SINK; do
		ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
		ip netns del "$ns" 2>/dev/null || true
	done
}
trap cleanup EXIT
trap 'exit 130' INT TERM
for ns in $GEN $SW $SINK; do ip netns add "$ns"; ip -n "$ns" link set lo up; done
ip -n $GEN link add gen0 type veth peer name vgen netns $SW
ip -n $SINK link add sink0 type veth peer name vsink netns $SW
ip -n $GEN link set gen0 address 02:00:00:00:0a:01
ip -n $SINK link set sink0 address 02:00:00:00:0b:01
ip -n $GEN link set gen0 up; ip -n $SINK link set sink0 up
ip -n $SW link set vgen up; ip -n $SW link set vsink up
ip -n $GEN addr add 198.18.0.1/24 dev gen0
ip -n $SINK addr add 198.18.0.2/24 dev sink0
for ns in $GEN $SW $SINK; do ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1; done

# One frame from the sink so both switches learn where its MAC is.
announce_sink() {
	ip netns exec $SINK python3 scripts/rawframe.py send sink0 ff:ff:ff:ff:ff:ff 02:00:00:00:0b:01 1
	sleep 0.2
}

# Runs the generator for $duration s; prints "delivered_pps offered_pps".
measure() {
	local sink_out gen_out
	sink_out=$(mktemp)
	local drop=()
	[ "$sink" = xdp-drop ] && drop=(--xdp-drop)
	ip netns exec $SINK $bin/vswitch-pktgen count --dev sink0 "${drop[@]}" --duration "$((duration + 2))" >"$sink_out" &
	local sink=$!
	sleep 0.5
	gen_out=$(ip netns exec $GEN $bin/vswitch-pktgen send --dev gen0 --core 1 \
		--src-mac 02:00:00:00:0a:01 --dst-mac 02:00:00:00:0b:01 \
		--size "$size" --flows "$flows" --duration "$duration" | tail -1)
	wait $sink
	local received seconds sent
	received=$(tail -1 "$sink_out" | sed -E 's/.*received=([0-9]+).*/\1/')
	rm -f "$sink_out"
	seconds=$(echo "$gen_out" | sed -E 's/.*seconds=([0-9.]+).*/\1/')
	sent=$(echo "$gen_out" | sed -E 's/.*sent=([0-9]+).*/\1/')
	python3 -c "print(round($received / $seconds), round($sent / $seconds))"
}

run_vswitch() {
	local log
	log=$(mktemp)
	ip netns exec $SW $bin/vswitch --ports vgen,vsink --cores 0 --poll busy >"$log" 2>&1 &
	local vs=$!
	for _ in $(seq 100); do ip -n $SW -d link show vsink | grep -q prog/xdp && break; sleep 0.1; done
	announce_sink
	local result
	result=$(measure)
	kill -TERM $vs
	wait $vs
	local cpp
	cpp=$(sed -nE 's/.*processing_cycles_per_packet=([0-9]+).*/\1/p' "$log" | head -1)
	rm -f "$log"
	echo "$result ${cpp:-0}"
}

run_bridge() {
	ip -n $SW link add br0 type bridge
	ip -n $SW link set vgen master br0
	ip -n $SW link set vsink master br0
	ip -n $SW link set br0 up
	# Frames sent by XDP into a veth need NAPI on its peer: GRO gives it without XDP.
	ip netns exec $SW ethtool -K vgen gro on >/dev/null
	announce_sink
	local result
	result=$(measure)
	ip netns exec $SW ethtool -K vgen gro off >/dev/null
	ip -n $SW link del br0
	echo "$result 0"
}

# Generator ceiling: straight into an XDP drop on the next veth.
ceiling() {
	local out
	ip netns exec $SW $bin/vswitch-pktgen count --dev vgen --xdp-drop --duration "$((duration + 2))" >/tmp/$P.ceiling &
	local c=$!
	sleep 0.5
	out=$(ip netns exec $GEN $bin/vswitch-pktgen send --dev gen0 --core 1 --src-mac 02:00:00:00:0a:01 \
		--dst-mac 02:00:00:00:0b:01 --size "$size" --flows "$flows" --duration "$duration" | tail -1)
	wait $c
	local received seconds
	received=$(tail -1 /tmp/$P.ceiling | sed -E 's/.*received=([0-9]+).*/\1/')
	rm -f /tmp/$P.ceiling
	seconds=$(echo "$out" | sed -E 's/.*seconds=([0-9.]+).*/\1/')
	python3 -c "print(round($received / $seconds))"
}

echo "== generator ceiling (into an XDP drop on the next core's veth)"
gen_ceiling=$(ceiling)
echo "   ${gen_ceiling} pps"

declare -a vs_runs br_runs vs_cpp
for r in $(seq "$runs"); do
	read -r d o c < <(run_vswitch)
	vs_runs+=("$d"); vs_cpp+=("$c")
	echo "run $r vswitch:      delivered $d pps (offered $o), worker ${c} cycles/packet"
	read -r d o c < <(run_bridge)
	br_runs+=("$d")
	echo "run $r linux-bridge: delivered $d pps (offered $o)"
done

mkdir -p bench/results
stamp=$(date -u +%Y%m%dT%H%M%SZ)
out=bench/results/l2-$sink-$stamp.json
SINK=$sink python3 - "$out" "$size" "$flows" "$duration" "$gen_ceiling" "${vs_runs[*]}" "${br_runs[*]}" "${vs_cpp[*]}" <<'PY'
import json, platform, statistics, sys, os
out, size, flows, duration, ceiling = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
vs = [int(x) for x in sys.argv[6].split()]
br = [int(x) for x in sys.argv[7].split()]
cpp = [int(x) for x in sys.argv[8].split()]
med = statistics.median
result = {
    "scenario": "l2-forwarding", "sink": os.environ["SINK"], "frame_size": size, "flows": flows, "duration_s": duration,
    "machine": f"{platform.node()} {os.cpu_count()} cores {platform.machine()} kernel {platform.release()}",
    "generator_ceiling_pps": ceiling,
    "vswitch": {"runs_pps": vs, "median_pps": med(vs), "cycles_per_packet": cpp},
    "linux_bridge": {"runs_pps": br, "median_pps": med(br)},
    "ratio_vswitch_to_bridge": round(med(vs) / med(br), 3) if med(br) else None,
}
json.dump(result, open(out, "w"), indent=2)
print()
print(f"{'scenario':<14} {'median pps':>12} {'min-max pps':>24} {'vs. bridge':>11}")
for name, runs in (("vswitch", vs), ("linux-bridge", br)):
    ratio = med(runs) / med(br) if med(br) else float("nan")
    print(f"{name:<14} {med(runs):>12,.0f} {min(runs):>11,}-{max(runs):<12,} {ratio:>10.2f}x")
print(f"vswitch worker: {med(cpp):,.0f} processing cycles per packet (median)")
print(f"sink: {os.environ['SINK']}; generator ceiling: {ceiling:,} pps; written {out}")
PY
