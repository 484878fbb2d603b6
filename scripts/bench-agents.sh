#!/usr/bin/env bash
# The agents benchmark of issue 3: N real twilld against one etcd member (time until all
# hold a block), pod ADDs via twill-cni across them, then idle CPU and RSS per agent.
# Run as root; needs etcd-server. Options are passed on:
#   scripts/bench-agents.sh [--agents 100] [--pods 1000] [--idle-minutes 10] [--parallel 1] [-o json]
# After a killed run: target/release/twill-bench agents --cleanup
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run as root: the benchmark builds network namespaces" >&2; exit 1; }
# Only the binaries the benchmark runs, so a broken unrelated crate cannot stop it.
cargo build --release --bins -p twilld -p twill-cni -p twill-bench
exec target/release/twill-bench agents "$@"
