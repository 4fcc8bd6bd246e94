#!/usr/bin/env bash
# Measures `vswitch ctl import` of a large cluster (scripts/k8s_scale.py: SERVICES Services of
# ENDPOINTS endpoints each) into a running switch, while a pod pings the gateway every 2 ms
# through it: the import's wall time, and whether forwarding paused (lost pings, worst RTT).
#   scripts/import_bench.sh [SERVICES] [ENDPOINTS]      (as root; release build)
set -euo pipefail
cd "$(dirname "$0")/.."
services=${1:-10000}
per=${2:-10}
p="vsimp$$"
work=$(mktemp -d)
source scripts/netns.sh
cleanup() { [ -n "${sw_pid:-}" ] && kill "$sw_pid" 2>/dev/null; netns_cleanup; rm -rf "$work"; }
trap cleanup EXIT
cargo build -j1 --release -q -p switch
bin=target/release/vswitch
python3 scripts/k8s_scale.py "$services" "$per" "$work/cluster.json"
netns_add "${p}sw"
for i in 1 2; do
	netns_add "${p}p$i"
	ip -n "${p}p$i" link add name eth0 type veth peer name "vp$i" netns "${p}sw"
	ip -n "${p}p$i" addr add "10.244.1.$((i + 1))/24" dev eth0
	ip -n "${p}p$i" link set eth0 up
	ip -n "${p}sw" link set "vp$i" up
done
cat >"$work/node.toml" <<TOML
[pods]
ports = ["vp1", "vp2"]
gateway = "10.244.1.1/24"
TOML
ip netns exec "${p}sw" "$bin" --config "$work/node.toml" --ctl "$work/ctl.sock" >"$work/out" 2>"$work/err" &
sw_pid=$!
for _ in $(seq 100); do "$bin" ctl --socket "$work/ctl.sock" show ports >/dev/null 2>&1 && break; sleep 0.1; done
ip netns exec "${p}p1" ping -q -c 2 -W 1 10.244.1.1 >/dev/null
echo "input: $(stat -c %s "$work/cluster.json") bytes, $services Services, $((services * per)) endpoints"
ip netns exec "${p}p1" ping -q -i 0.002 -c 2500 -W 1 10.244.1.1 >"$work/ping" &
ping_pid=$!
sleep 1
for run in 1 2 3; do
	start=$(date +%s.%N)
	"$bin" ctl --socket "$work/ctl.sock" import "$work/cluster.json" --json | python3 -c "import json,sys; r=json.load(sys.stdin); print(\"switch: {services} services, {endpoints} endpoints; translate {translate_ms} ms, translate+apply {ms} ms\".format(**r))"
	end=$(date +%s.%N)
	echo "run $run: ctl import wall time $(echo "$end - $start" | bc) s"
done
wait "$ping_pid" || true
echo "pings to the gateway during the imports (every 2 ms):"
tail -n 2 "$work/ping"
grep -E "import received|services imported" "$work/err" | sed "s/^.*INFO //"
"$bin" ctl --socket "$work/ctl.sock" show services --json | python3 -c 'import json,sys; print("services in the switch:", len(json.load(sys.stdin)["services"]))'
