#!/usr/bin/env bash
# The scale benchmark of issue 14: N real twilld, each in its own network namespace and
# kernel routing table (backend host-gw), against a 3-member etcd on this machine; one
# member SIGKILLed during the cold start; one node joins; then an idle window measuring
# etcd's request/write rates and db size, and each agent's CPU, RSS and probes per second.
# Run as root; needs etcd-server. Prints JSON.
#   scripts/bench-scale.sh [--agents 100] [--idle-seconds 60]
# After a killed run: target/release/twill-bench scale --cleanup
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run as root: the benchmark builds network namespaces" >&2; exit 1; }
cargo build --release --bins -p twilld -p twill-bench
exec target/release/twill-bench scale "$@"
