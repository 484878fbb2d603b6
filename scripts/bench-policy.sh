#!/usr/bin/env bash
# The network policy benchmarks of issue 10, each side by side in one run (figures and
# ratios, never a pass/fail on time):
#   (a) one policy change, and one pod joining a selected set, applied with 10,000
#       endpoints and 1,000 NetworkPolicies in place vs the same at 100 endpoints: from the
#       start of the etcd put (one open client) until the kernel holds it, polled every
#       100 us over nfnetlink (GETRULE of the policy's chain, GETSETELEM of the peer set);
#       on the same clock: the put's answer, the store's watch event, twilld's watch event
#       and its kernel answer, and twilld's split (event->kernel, compile, encode, apply)
#       (goal <= 5 ms both, the same at both sizes). Two one-node labs at once (real
#       twilld --policy true, etcd, 2 real pods by twill-cni); the other endpoints are
#       store entries of remote nodes.
#       Sizes alternate which goes first, after --warmup rounds not counted; etcd's own
#       WAL fsync and backend commit means over the counted rounds are reported per lab.
#   (b) iperf3 (-C cubic, one stream, client and server pinned by --iperf-cpus) between two
#       pods of a lab with 1,000 policies (the flow allowed by one of them) vs a lab with
#       none, pairs in A B then B A order, each pair's ratio kept: median and IQR of the
#       pair ratios of throughput and of CPU seconds per Gbit (goal >= 0.95x). The A/A
#       control, the same two labs both without policies, shows the machine's own noise:
#         scripts/bench-policy.sh --no-apply --policies 0
# Run as root; needs etcd-server, nftables, iperf3. Options are passed on, e.g.
#   scripts/bench-policy.sh [--rounds 10] [--policies 1000] [--small 100] [--large 10000]
#                           [--warmup 2] [--iperf-rounds 12] [--iperf-seconds 3] [--iperf-cpus 1,0] [--no-iperf] [--json]
# After a killed run: target/release/twill-bench policy --cleanup
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run as root: the benchmark builds network namespaces" >&2; exit 1; }
for p in etcd nft iperf3; do
  command -v $p >/dev/null || { echo "$p is not installed: scripts/install-deps.sh" >&2; exit 1; }
done
cargo build --release --bins -p twill-cni -p twilld -p twill-bench
exec target/release/twill-bench policy "$@"
