#!/usr/bin/env bash
# The mesh benchmark of issue 9: BGP meshes of namespaces on one segment, the reference
# (BIRD 2 configured as Calico's confd templates configure it) and Twill side by side in
# one run, interleaved round by round, medians and ratios to BIRD:
#   (a) a 20-node mesh, cold start: from the last node's start until every kernel has
#       every block (goal <= 0.5 s; BIRD here 2.0 s median);
#   (b) one node joining the running 20-node mesh: until all kernels route to it and it to
#       them (goal <= 0.3 s; BIRD 1.04 s);
#   (c) 100 nodes with 2 route reflectors, cold start (goal <= 2 s);
#   (d) cost: one daemon with 100 peers and 10,000 routes: time, CPU, idle CPU, RSS.
# Kernels are watched over netlink (route events), not polled. Above 30 nodes every node
# holds permanent neighbour entries for the others (no host sysctl is changed).
# Run as root; needs bird2. Options are passed on, e.g.
#   scripts/bench-mesh.sh [--rounds 5] [--nodes 20] [--rr-nodes 100] [--cost-peers 100]
#                         [--implementations bird,speaker,twilld] [-o json]
# After a killed run: target/release/twill-bench mesh --cleanup
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run as root: the benchmark builds network namespaces" >&2; exit 1; }
command -v bird >/dev/null || { echo "bird is not installed: scripts/install-deps.sh" >&2; exit 1; }
# Only the binaries the benchmark runs, so a broken unrelated crate cannot stop it.
cargo build --release --bins -p twill -p twilld -p twill-bench
exec target/release/twill-bench mesh "$@"
