#!/usr/bin/env bash
# The main job: builds Twill and runs the lab demo, a cluster built out of network
# namespaces on this machine, with pods talking to each other and to an outside host.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run as root: the lab builds network namespaces" >&2; exit 1; }
scripts/install-deps.sh
cargo build --release --bins
exec target/release/twill lab demo "$@"
