#!/usr/bin/env bash
# The CNI benchmark: twill-cni in both pod wirings (l3, bridge) vs the reference bridge +
# host-local (+ portmap with --mappings), side by side and interleaved in one run, each in
# a node namespace of its own. Run as root. Options are passed on:
#   scripts/bench-cni.sh [--pairs 200] [--concurrent 30] [--fill 1000] [--mappings] [--no-masq] [-o json]
# After a killed run: target/release/twill-bench cni --cleanup
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run as root: the benchmark builds network namespaces" >&2; exit 1; }
# Only the two binaries the benchmark runs, so a broken unrelated crate cannot stop it.
cargo build --release --bins -p twill-cni -p twill-bench
exec target/release/twill-bench cni "$@"
