#!/usr/bin/env bash
# Bounded coverage-guided fuzzing of twill-bgp's wire codec (crates/bgp/fuzz) and
# twill-rip's decoder (crates/rip/fuzz) and twill-netlink's NFLOG decoder (crates/netlink/fuzz),
# and twill-datapath's filter and ctl codec (crates/datapath/fuzz), with libFuzzer. CI runs it from scripts/test.sh
# after the unit tests; crates/bgp/fuzz/README.md explains the targets, the corpus and why
# there is no cargo-fuzz here.
#
#   scripts/fuzz.sh [TARGET...]        every target (or those named), FUZZ_SECONDS each
#   scripts/fuzz.sh --list             the targets
#
# Knobs (environment):
#   FUZZ_SECONDS=20   time per target (CI: 20; try 600 or more for a local hunt)
#   FUZZ_JOBS=2       targets fuzzed at once (the machine has 2 cores)
#   FUZZ_MERGE=1      afterwards, fold what the run found into the checked-in corpus,
#                     minimised (libFuzzer -merge=1); review and commit it
#
# A crash fails the script (and so CI): the log names the input, which stays in
# <package>/artifacts/<target>/, and the command that reproduces it. Bounded: every
# target stops after FUZZ_SECONDS, each input after 10 s.
set -euo pipefail
cd "$(dirname "$0")/.."
# Every fuzz package, one a line (its targets are the [[bin]]s of its Cargo.toml; target
# names are unique across packages).
packages=(
  crates/bgp/fuzz
  crates/rip/fuzz
  crates/netlink/fuzz
  crates/datapath/fuzz
)
triple=x86_64-unknown-linux-gnu
targets_of() { sed -n 's/^name = "\(.*\)"$/\1/p' "$1/Cargo.toml" | grep -v -- '-fuzz$'; }
targets_all=$(for p in "${packages[@]}"; do targets_of "$p"; done)
# The package holding target $1.
package_of() {
  local p
  for p in "${packages[@]}"; do
    if targets_of "$p" | grep -qx "$1"; then echo "$p"; fi
  done
}

if [ "${1:-}" = --list ]; then
  echo "$targets_all"
  exit 0
fi
targets=${*:-$targets_all}
for t in $targets; do
  grep -qx "$t" <<<"$targets_all" || { echo "fuzz.sh: no target '$t' (have: $(echo $targets_all))" >&2; exit 2; }
done
seconds=${FUZZ_SECONDS:-20}
jobs=${FUZZ_JOBS:-2}

# The flags cargo-fuzz 0.13 passes for `cargo fuzz build -s none --debug-assertions`:
# libFuzzer's coverage counters and comparison tracing, --cfg fuzzing, one codegen unit
# (sancov otherwise blocks inlining), and overflow/debug assertions so an arithmetic overflow
# on a length field is a crash, not a silent wrap. No sanitizer: twill-bgp has no unsafe
# code, and ASan would halve the executions per second for nothing.
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares -Cllvm-args=-sanitizer-coverage-stack-depth \
-Cllvm-args=-simplifycfg-branch-fold-threshold=0 --cfg fuzzing -Cdebug-assertions \
-Ccodegen-units=1"
# Nightly when there is one (the issue's toolchain); these flags need no -Z, so stable
# builds the same binaries where it is the only toolchain.
toolchain=()
if rustup run nightly rustc --version >/dev/null 2>&1; then toolchain=(+nightly); fi
# --target keeps RUSTFLAGS off build scripts and proc macros.
for fuzz in $(for t in $targets; do package_of "$t"; done | sort -u); do
  echo "fuzz.sh: building $fuzz ($(cargo "${toolchain[@]}" --version))"
  cargo "${toolchain[@]}" build --locked --release --manifest-path "$fuzz/Cargo.toml" \
    --target "$triple" --bins
done

work=$(mktemp -d /tmp/twl-fuzz.XXXXXX)
trap 'rm -rf "$work"' EXIT

# One target: new inputs go to $work (the checked-in corpus is only read), crashes to
# artifacts/<target>/. Prints one summary line; exit status is libFuzzer's.
run_one() {
  local t=$1 fuzz bin_dir
  fuzz=$(package_of "$t")
  bin_dir=$fuzz/target/$triple/release
  local art=$fuzz/artifacts/$1 max_len=4096
  [ "$t" = frame ] && max_len=12288 # several messages back to back
  mkdir -p "$work/$t" "$art"
  local log=$art/fuzz.log
  local rc=0 seeds=("$fuzz/corpus/$t")
  [ -d "$fuzz/regressions/$t" ] && seeds+=("$fuzz/regressions/$t")
  "$bin_dir/$t" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
    -max_len="$max_len" -print_final_stats=1 -artifact_prefix="$art/" \
    "$work/$t" "${seeds[@]}" >"$log" 2>&1 || rc=$?
  local runs execs cov corp
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
  execs=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
  cov=$(grep -o "cov: [0-9]*" "$log" | tail -1 || true)
  corp=$(grep -o "corp: [0-9]*" "$log" | tail -1 || true)
  if [ "$rc" = 0 ]; then
    printf 'fuzz %-14s ok   %ss, %s runs, %s exec/s, %s, %s (new: %s)\n' "$t" "$seconds" \
      "${runs:-?}" "${execs:-?}" "$cov" "$corp" "$(ls "$work/$t" | wc -l)"
  else
    local input
    input=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -1)
    {
      echo "fuzz $t FAILED (libFuzzer exit $rc); log: $log"
      grep -m1 -B2 -A12 -E "panicked at|ERROR: libFuzzer|SUMMARY" "$log" || tail -30 "$log"
      echo "the input: ${input:-see the log}"
      echo "reproduce: scripts/fuzz.sh builds it, then $bin_dir/$t ${input:-INPUT}"
      echo "after the fix, copy the input into $fuzz/regressions/$t/ under a name that says what it"
      echo "caught, so crates/bgp/tests/fuzz_corpus.rs replays it in every test run"
    } >&2
  fi
  return "$rc"
}

pids=() names=()
failed=()
reap() {
  if ! wait "${pids[0]}"; then failed+=("${names[0]}"); fi
  pids=("${pids[@]:1}") names=("${names[@]:1}")
}
for t in $targets; do
  [ "${#pids[@]}" -ge "$jobs" ] && reap
  run_one "$t" &
  pids+=($!) names+=("$t")
done
while [ "${#pids[@]}" -gt 0 ]; do reap; done

if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzz.sh: crashes in: ${failed[*]} (inputs under each package's artifacts/)" >&2
  exit 1
fi

if [ "${FUZZ_MERGE:-0}" = 1 ]; then
  for t in $targets; do
    fuzz=$(package_of "$t")
    bin_dir=$fuzz/target/$triple/release
    rm -rf "$work/merged" && mkdir -p "$work/merged"
    "$bin_dir/$t" -merge=1 -max_len=12288 "$work/merged" "$fuzz/corpus/$t" "$work/$t" \
      >"$work/merge.log" 2>&1 || { cat "$work/merge.log" >&2; exit 1; }
    rm -rf "${fuzz:?}/corpus/$t" && mv "$work/merged" "$fuzz/corpus/$t"
    echo "fuzz $t: corpus now $(ls "$fuzz/corpus/$t" | wc -l) files"
  done
fi
