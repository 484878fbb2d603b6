#!/usr/bin/env bash
# The udp benchmark of issue 11: `twill lab bench --udp` on a two-node lab. Twill's userspace
# datapath side by side in one run with a hand-built kernel-VXLAN twin and a hand-built twin
# running the flannel-style baseline (a port of flannel's run_proxy: one read/sendto and one
# recv/write per packet), interleaved A B C A B C, iperf3 -C cubic -P 1 and -P 4, pinned
# (node 1's client and datapath on CPU 0, node 2's server and datapath on CPU 1). Prints
# Gbit/s and CPU s/Gbit medians, the ratios against the goals (one stream: >= 0.8x kernel
# VXLAN, >= 3x the baseline) and the load average at the start and the end.
# The lab runs --backend udp once the lab has it (Twill's variant is then the lab's pods);
# before, Twill's variant is a twin running twill-datapath fed a hand-written table.
# Run as root; needs iperf3. Options are passed on to `twill lab bench`, e.g.
#   scripts/bench-udp.sh [--rounds 3] [--seconds 10] [--streams 1,4] [-o json]   (those are the defaults)
# Set TWILL_BENCH_UDP_BACKEND to choose the lab's backend (default: udp if the lab has it), and
# TWILL_BENCH_UDP_PARTIAL=1 for the udp backend's partialChecksums (lab up --partial-checksums).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run as root: the benchmark builds network namespaces" >&2; exit 1; }
command -v iperf3 >/dev/null || { echo "iperf3 is not installed: scripts/install-deps.sh" >&2; exit 1; }
# Release binaries: a debug datapath would be measured, not the design.
cargo build --release --bins -p twill -p twilld -p twill-cni
T=target/release/twill
NAME=twlbudp
if [ -z "${TWILL_BENCH_UDP_BACKEND:-}" ]; then
  # The help is read whole first: `grep -q` quits at the first match, and under pipefail the
  # SIGPIPE it leaves `twill` with made the probe answer vxlan.
  help=$("$T" lab up --help)
  if grep -Eq 'possible values: .*host-gw.*\budp\b' <<<"$help"; then TWILL_BENCH_UDP_BACKEND=udp; else TWILL_BENCH_UDP_BACKEND=vxlan; fi
fi
"$T" lab down --name "$NAME" >/dev/null 2>&1 || true
trap '"$T" lab down --name "$NAME" >/dev/null 2>&1 || true' EXIT
extra=()
[ -n "${TWILL_BENCH_UDP_PARTIAL:-}" ] && extra=(--partial-checksums)
"$T" lab up --name "$NAME" --nodes 2 --pods-per-node 1 --backend "$TWILL_BENCH_UDP_BACKEND" "${extra[@]}" >&2
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
"$T" lab bench --name "$NAME" --udp "$@"
