#!/usr/bin/env bash
# The network policy benchmarks of issue 10, each side by side in one run (figures and
# ratios, never a pass/fail on time):
#   (a) one policy change, and one pod joining a selected set, applied with 10,000
#       endpoints and 1,000 NetworkPolicies in place vs the same at 100 endpoints: from the
#       etcd put until `nft monitor` in the node shows it, plus twilld's own
#       twill_policy_apply_seconds / twill_policy_compile_seconds (goal <= 5 ms both, the
#       same at both sizes). Two one-node labs at once (real twilld --policy true, etcd,
#       2 real pods by twill-cni); the other endpoints are store entries of remote nodes.
#   (b) iperf3 (cubic, one stream) between two pods of a lab with 1,000 policies (the
#       flow allowed by one of them) vs a lab with none, A B A B (goal >= 0.95x).
# Run as root; needs etcd-server, nftables, iperf3. Options are passed on, e.g.
#   scripts/bench-policy.sh [--rounds 10] [--policies 1000] [--small 100] [--large 10000]
#                           [--iperf-rounds 3] [--iperf-seconds 5] [--no-iperf] [--json]
# After a killed run: target/release/twill-bench policy --cleanup
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run as root: the benchmark builds network namespaces" >&2; exit 1; }
for p in etcd nft iperf3; do
  command -v $p >/dev/null || { echo "$p is not installed: scripts/install-deps.sh" >&2; exit 1; }
done
cargo build --release --bins -p twill-cni -p twilld -p twill-bench
exec target/release/twill-bench policy "$@"
