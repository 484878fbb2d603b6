#!/usr/bin/env bash
# The whole check matrix of `--backend ovs` (issue 12): gre and vxlan x bridge and l3
# wiring x 1 and 2 segments, each lab up, every check row, OVS read back (bridges, the
# flow-based tunnel port, the full mesh in flows, routes into twl.ovs), the trace's outer
# headers and the graph, then down with every OVS process gone; plus the churn and restart
# tests. CI (scripts/test.sh) runs every combination, but five of them only as quick rows
# (up, every check row, down); their full rows are #[ignore]d to keep CI's wall time, and
# this runs all of it. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run as root: the tests build network namespaces" >&2; exit 1; }
cargo nextest run -p twill --test lab_ovs --run-ignored all "$@"
