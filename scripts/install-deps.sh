#!/usr/bin/env bash
# Installs the tools the demo, tests and benchmarks use, when missing (Debian packages).
#   ethtool   queue counts and GRO in the benchmark (bench.sh)
#   ping      reachability checks;   bpftool   the netlink-attached-program test
#   nft       the kernel reference dataplane of the gateway tests (kube-proxy-like rules)
#   clang     builds the XDP fast path's program (pmd/bpf/fastpath.c) in pmd's build.rs
#   tcpdump   reads the capture files `vswitch ctl capture` writes (switch/tests/ctl.rs)
#   containernetworking-plugins   the reference CNI plugins in /usr/lib/cni (host-local,
#             bridge, portmap) that switch/tests/cni.rs runs beside vswitch-cni
set -euo pipefail
declare -A package=([ethtool]=ethtool [ping]=iputils-ping [bpftool]=bpftool [nft]=nftables [tcpdump]=tcpdump [clang]=clang)
missing=()
for tool in "${!package[@]}"; do
	command -v "$tool" >/dev/null 2>&1 || missing+=("${package[$tool]}")
done
[ -x /usr/lib/cni/host-local ] || missing+=(containernetworking-plugins)
if [ ${#missing[@]} -gt 0 ]; then
	echo "installing: ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq "${missing[@]}" >/dev/null
fi
