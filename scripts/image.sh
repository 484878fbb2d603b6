#!/usr/bin/env bash
# Builds Twill's node image with podman, no registry: FROM scratch, with twilld (the
# entrypoint), twill (`twill install-cni`, the DaemonSet's init step) and twill-cni, plus
# `nft` and the libraries it links (twilld runs nft for `policy: true`; nothing else: it
# talks netlink itself). deploy/image/Containerfile says what goes where.
#
#   scripts/image.sh [--bin-dir DIR] [--tag TAG]... [--archive FILE]
#
#   --bin-dir DIR   where twilld, twill and twill-cni are (default: $TWILL_IMAGE_BIN_DIR,
#                   else target/static, what scripts/build-static.sh writes). Static
#                   binaries need nothing more; a dynamically linked one (a debug build)
#                   gets the libraries `ldd` lists copied beside it, so the image runs
#                   either way, but only static twill-cni runs on any node's libc.
#                   Debug info is stripped from the copies (binutils' strip).
#   --tag TAG       image name (repeatable; default localhost/twill:<workspace version>)
#   --archive FILE  also `podman save --format oci-archive` to FILE (for `ctr image
#                   import` or `podman load` on a node: there is no registry)
#
# podman reads CONTAINERS_CONF / CONTAINERS_STORAGE_CONF as usual (the tests point them at
# a temp dir). Prints the image ID on the last line.
set -euo pipefail
cd "$(dirname "$0")/.."

die() { echo "image.sh: $*" >&2; exit 2; }

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
bin_dir=${TWILL_IMAGE_BIN_DIR:-target/static}
tags=()
archive=""
while [ $# -gt 0 ]; do
  case "$1" in
    --bin-dir) [ $# -ge 2 ] || die "--bin-dir needs a folder"; bin_dir=$2; shift 2 ;;
    --tag) [ $# -ge 2 ] || die "--tag needs a name (localhost/twill:1)"; tags+=("$2"); shift 2 ;;
    --archive) [ $# -ge 2 ] || die "--archive needs a file"; archive=$2; shift 2 ;;
    -h|--help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done
[ ${#tags[@]} -gt 0 ] || tags=("localhost/twill:$version")
command -v podman >/dev/null || die "podman is missing: apt-get install podman runc (scripts/install-deps.sh)"
for b in twilld twill twill-cni; do
  [ -x "$bin_dir/$b" ] || die "$bin_dir/$b is missing: run scripts/build-static.sh, or pass --bin-dir with twilld, twill and twill-cni"
done
nft=$(command -v nft || true)
[ -n "$nft" ] || die "nft is missing: apt-get install nftables (the image carries the host's nft)"

ctx=$(mktemp -d /tmp/twl-image.XXXXXX)
trap 'rm -rf "$ctx"' EXIT
root=$ctx/rootfs
mkdir -p "$root/usr/local/bin" "$root/usr/sbin" "$root/etc" "$root/tmp" \
  "$root/run/twill" "$root/var/lib/twill" "$root/proc" "$root/sys" "$root/dev"
chmod 1777 "$root/tmp"

# Copies the shared libraries (and the loader) that `ldd FILE` names, at their own paths.
copy_libs() {
  ldd "$1" 2>/dev/null | grep -o '/[^ ]*' | while read -r lib; do
    [ -e "$root$lib" ] && continue
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
}
# Debug info is no use at run time (a debug build's binaries shrink to a third).
for b in twilld twill twill-cni; do
  if command -v strip >/dev/null; then
    strip --strip-debug -o "$root/usr/local/bin/$b" "$bin_dir/$b"
  else
    cp "$bin_dir/$b" "$root/usr/local/bin/$b"
  fi
  copy_libs "$bin_dir/$b"
done
cp "$nft" "$root/usr/sbin/nft"
copy_libs "$nft"
for f in /etc/protocols /etc/services; do [ -f "$f" ] && cp "$f" "$root$f"; done

args=()
for t in "${tags[@]}"; do args+=(--tag "$t"); done
podman build --quiet --pull=never --label "org.opencontainers.image.version=$version" \
  --label "org.opencontainers.image.title=twill" "${args[@]}" -f deploy/image/Containerfile "$ctx" >"$ctx/id"
id=$(tail -1 "$ctx/id")
if [ -n "$archive" ]; then
  podman save --quiet --format oci-archive -o "$archive" "${tags[0]}"
fi
echo "$id"
