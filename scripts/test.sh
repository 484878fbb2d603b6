#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit tests and the root-gated tests that build
# real namespaces, links and nftables rules. Run as root on Debian 12.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run as root: the tests build network namespaces" >&2; exit 1; }
scripts/install-deps.sh
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
# twill-cni, run for every pod, depends on no YAML parser (twill-api's `yaml` feature is
# for the CLI); tests/about.rs checks its binary links none.
if cargo tree -p twill-cni -e normal --prefix none | grep -i yaml; then
  echo "twill-cni depends on a YAML parser (above): keep twill-api's yaml feature off for it" >&2
  exit 1
fi
# Root-gated tests fail (never pass) when they cannot run: twill_testkit::require_root.
cargo nextest run --workspace --no-fail-fast "$@"
# Bounded coverage-guided fuzzing of the BGP codec (about 20 s a target, two at a time; a
# crash fails the run and its input stays under crates/bgp/fuzz/artifacts/).
scripts/fuzz.sh
