#!/usr/bin/env bash
# The ovs benchmark of issue 12, in one run: `twill lab bench --ovs --join` on a 20-node
# `--backend ovs` lab (GRE, one pod per node, one segment).
#  1. The lab's pods n1 -> n2 through both nodes' ovs-vswitchd (the userspace datapath)
#     against a hand-built kernel-VXLAN twin, interleaved A B A B, iperf3 -C cubic -P 1 and
#     -P 4, pinned (node 1's iperf3 and vswitchd on CPU 0, node 2's on CPU 1): Gbit/s, the
#     ratio, CPU s/Gbit (both iperf3 and both vswitchd) and the machine's busy s/Gbit.
#  2. A 21st node joins: from its agent ready to every node's flows keeping a tunnel to it
#     (and its to every node), against the walk-through's way scripted at its fastest (one
#     ovs-vsctl add-port on every node, one call with a port per peer on the new node, on a
#     bridge of their own), and the ports/bridges/interfaces of the 20 that changed (0).
# 21 nodes on one segment need 21*20 neighbour entries in the machine's one ARP table
# (RUNBOOK "Many namespaces", cap 1024 here): within the cap, so plain ARP is kept.
# Run as root; needs iperf3 and openvswitch-switch. Options go to `twill lab bench`, e.g.
#   scripts/bench-ovs.sh [--rounds 3] [--seconds 10] [--streams 1,4] [-o json]
# TWILL_BENCH_OVS_NODES (default 20) and TWILL_BENCH_OVS_TUNNEL (gre|vxlan) change the lab.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run as root: the benchmark builds network namespaces" >&2; exit 1; }
command -v iperf3 >/dev/null || { echo "iperf3 is not installed: scripts/install-deps.sh" >&2; exit 1; }
command -v ovs-vswitchd >/dev/null || { echo "Open vSwitch is not installed: apt-get install openvswitch-switch (scripts/install-deps.sh)" >&2; exit 1; }
cargo build --release --bins -p twill -p twilld -p twill-cni
T=target/release/twill
NAME=twlbovs
"$T" lab down --name "$NAME" >/dev/null 2>&1 || true
trap '"$T" lab down --name "$NAME" >/dev/null 2>&1 || true' EXIT
start=$(date +%s.%N)
"$T" lab up --name "$NAME" --nodes "${TWILL_BENCH_OVS_NODES:-20}" --pods-per-node 1 \
  --backend ovs --tunnel-type "${TWILL_BENCH_OVS_TUNNEL:-gre}" >&2
echo "lab up: $(echo "$(date +%s.%N) - $start" | bc) s; load average: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
"$T" lab bench --name "$NAME" --ovs --join "$@"
