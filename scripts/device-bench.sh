#!/usr/bin/env bash
# Benchmarks on a machine that has neither cargo nor a network (a lent many-core machine): the
# binaries are built and the Debian tools downloaded here, carried there as one folder, and
# bench.sh runs there on them (BENCH_BIN).
#
#   scripts/device-bench.sh pack              here: release build, stripped binaries and the
#                                             tools' packages into .kit/ (ignored by git)
#   scripts/device-bench.sh run 'ARGS' ...    there, from the checkout with .kit/: unpacks the
#                                             tools under /tmp/kit, then runs
#                                             `scripts/bench.sh ARGS` once per quoted argument
#                                             (ARGS may begin with NAME=VALUE settings); the
#                                             log and each result JSON copied to $OUT when set
#
# For example: scripts/device-bench.sh run '--scenario scale --workers "1 2 4 8"' '--scenario search'
set -euo pipefail
cd "$(dirname "$0")/.."
kit=.kit
case ${1:-} in
pack)
	mkdir -p $kit/bin
	apt-get update -qq
	# iproute2 (ip), ethtool, ping, sysctl (procps), nft and iptables, bpftool, and their libraries.
	(cd $kit && rm -f ./*.deb && apt-get download -qq iproute2 ethtool iputils-ping procps libproc2-0 \
		nftables iptables bpftool libbpf1 libbsd0 libcap2 libelf1 libmnl0 libtirpc3 libtirpc-common \
		libxtables12 libmd0 libgssapi-krb5-2 libk5crypto3 libkrb5-3 libkrb5support0 libkeyutils1 \
		libidn2-0 libunistring2 libnftables1 libnftnl11 libgmp10 libedit2 libjansson4 libip4tc2 \
		libip6tc2 libnetfilter-conntrack3 libnfnetlink0 libdb5.3 libselinux1 libpcre2-8-0 libxdp1 \
		libcom-err2 libtinfo6 libsystemd0 zlib1g >/dev/null)
	cargo build --release -q -p switch -p bench
	for b in vswitch vswitch-pktgen; do strip -o $kit/bin/$b target/release/$b; done
	du -sh $kit
	;;
run)
	shift
	[ -x $kit/bin/vswitch ] || { echo "device-bench.sh: no $kit/bin/vswitch: run 'pack' first and carry $kit" >&2; exit 1; }
	root=/tmp/kit
	mkdir -p $root
	for f in $kit/*.deb; do dpkg -x "$f" $root; done
	ln -sf xtables-nft-multi $root/usr/sbin/iptables
	ln -sf xtables-nft-multi $root/usr/sbin/iptables-nft
	export PATH=$root/usr/sbin:$root/sbin:$root/usr/bin:$root/bin:$PATH
	export LD_LIBRARY_PATH=$root/usr/lib/x86_64-linux-gnu:$root/lib/x86_64-linux-gnu
	export BENCH_BIN=$kit/bin
	echo "== $(uname -r), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
	status=0
	for args in "$@"; do
		log=${OUT:-/tmp}/device-bench.log
		echo "== scripts/bench.sh $args" | tee -a "$log"
		before=$(ls bench/results/)
		# One argument holds bench.sh's arguments, quoted as in a shell, after any NAME=VALUE
		# settings for its environment.
		eval "words=($args)"
		settings=()
		while [ ${#words[@]} -gt 0 ] && [[ ${words[0]} =~ ^[A-Z_][A-Z0-9_]*= ]]; do
			settings+=("${words[0]}")
			words=("${words[@]:1}")
		done
		env "${settings[@]}" scripts/bench.sh "${words[@]}" 2>&1 | tee -a "$log" || status=1
		if [ -n "${OUT:-}" ]; then
			for f in $(ls bench/results/); do
				[ -f "bench/results/$f" ] && ! grep -qx "$f" <<<"$before" && cp "bench/results/$f" "$OUT/"
			done
		fi
	done
	exit $status
	;;
*)
	echo "usage: scripts/device-bench.sh pack | run 'BENCH ARGS' ..." >&2
	exit 2
	;;
esac
