#!/usr/bin/env bash
# The whole test suite: unit, property and doc tests of every crate, and the end-to-end tests
# that run vswitch over veth ports in network namespaces (these need root).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
if [ "$(id -u)" = 0 ]; then
	scripts/install-deps.sh
elif [ "${CI:-}" = true ]; then
	echo "test.sh: CI must run as root: the end-to-end tests need network namespaces" >&2
	exit 1
fi
cargo test --workspace --all-targets "$@"
cargo test --workspace --doc
if [ "$(id -u)" != 0 ]; then
	echo "test.sh: NOT ROOT: the end-to-end network tests (switch/tests) were SKIPPED, not run; run as root to run them" >&2
fi
