#!/usr/bin/env bash
# Builds Twill's binaries statically linked (glibc, -C target-feature=+crt-static: a
# static-pie ELF with no PT_INTERP), so twill-cni, which `twill install-cni` copies onto
# the node, runs whatever libc the node has (or none).
#
#   scripts/build-static.sh [--cni-only] [OUT_DIR]      (OUT_DIR default: target/static)
#
# Builds twill-cni, twill and twilld (what scripts/image.sh puts in the image, FROM
# scratch); --cni-only builds twill-cni alone (what CI checks:
# crates/twill-cni/tests/static.rs). The binaries are copied to OUT_DIR and their paths
# printed, one a line. Cargo's own output stays in
# target/x86_64-unknown-linux-gnu/release/ (--target keeps build scripts and proc macros
# dynamic, so the host build's artifacts are not rebuilt).
set -euo pipefail
cd "$(dirname "$0")/.."
all=true
if [ "${1:-}" = "--cni-only" ]; then all=false; shift; fi
out=${1:-target/static}
target=x86_64-unknown-linux-gnu
pkgs=(-p twill-cni)
bins=(twill-cni)
if $all; then pkgs+=(-p twill -p twilld); bins+=(twill twilld); fi
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
  cargo build --release --locked --target "$target" "${pkgs[@]}"
mkdir -p "$out"
for b in "${bins[@]}"; do
  src="target/$target/release/$b"
  if readelf -l "$src" | grep -q 'Requesting program interpreter'; then
    echo "$src is dynamically linked (PT_INTERP): the static build failed" >&2
    exit 1
  fi
  install -m 0755 "$src" "$out/$b.tmp" && mv -f "$out/$b.tmp" "$out/$b"
  echo "$out/$b"
done
