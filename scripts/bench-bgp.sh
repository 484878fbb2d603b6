#!/usr/bin/env bash
# The BGP benchmark of issue 8, both directions, Twill side by side with the references.
#
#   sudo scripts/bench-bgp.sh [N_ROUTES=100000] [R=3]
#
# 1. receive: ../shared/bench/bgp-feed-bench.sh (FEED_BENCH= to point elsewhere; it is not
#    part of this repository): a passive BIRD feeder announces N routes over eBGP; the
#    receivers BIRD, FRR and Twill (`twill bgp serve`, release build) each connect and put
#    them into their namespace's kernel. Per receiver: median time from Established to all N
#    in the kernel, peak RSS, CPU seconds; runs interleaved, median of R.
# 2. announce (this script): the sender, Twill or BIRD (the reference), holds N routes and
#    waits (passive); a BIRD receiver connects (`connect delay time 0`) and exports what it
#    learns to its kernel. Per sender: median time from Established (BIRD's `show protocols`
#    since-time, microseconds) to all N in the receiver's kernel table, polled every POLL_S
#    from /proc/PID/net/fib_triestat; peak RSS (VmHWM) and CPU (utime+stime) of the sender
#    and of the receiving BIRD at that moment. Runs interleaved (bird twill, bird twill, ...).
#
# Knobs: DIRECTIONS="receive announce"; SENDERS="bird twill"; TWILL=path to a twill binary
# (default: target/release/twill, built first); TIMEOUT_S=300; POLL_S=0.05; NUDGE=1 (poke a
# sending BIRD's control socket every poll, as the feed bench does its feeder); KEEP=1 keeps
# the work dir (configs and logs). Namespaces twlbgpa-tx / twlbgpa-rx (announce) and the
# feed bench's twlbgp-feed / twlbgp-rx; all removed at the end, failures included.
set -uo pipefail
cd "$(dirname "$0")/.."
N_ROUTES=${1:-100000}
R=${2:-3}
DIRECTIONS=${DIRECTIONS:-receive announce}
SENDERS=${SENDERS:-bird twill}
FEED_BENCH=${FEED_BENCH:-../shared/bench/bgp-feed-bench.sh}
TIMEOUT_S=${TIMEOUT_S:-300}
POLL_S=${POLL_S:-0.05}
die() { echo "bench-bgp: $*" >&2; exit 1; }
note() { echo "# $*" >&2; }

[ "$(id -u)" = 0 ] || die "run as root: the benchmark builds network namespaces"
[[ $N_ROUTES =~ ^[0-9]+$ ]] && [ "$N_ROUTES" -ge 1 ] && [ "$N_ROUTES" -le 524288 ] \
  || die "N_ROUTES must be 1..524288 (/27s of 10.0.0.0/8), got '$N_ROUTES'"
[[ $R =~ ^[0-9]+$ ]] && [ "$R" -ge 1 ] || die "R must be a positive integer, got '$R'"
command -v bird >/dev/null || die "bird is not installed: scripts/install-deps.sh"
if [ -z "${TWILL:-}" ]; then
  cargo build --release -p twill || die "cargo build --release -p twill failed"
  TWILL=$PWD/target/release/twill
fi
[ -x "$TWILL" ] || die "TWILL=$TWILL is not an executable"
TWILL=$(realpath "$TWILL")

rc=0
# ---- 1. receive: the shared feed bench, with Twill as its third receiver ----------------
if [[ " $DIRECTIONS " == *" receive "* ]]; then
  [ -f "$FEED_BENCH" ] || die "no feed bench at $FEED_BENCH (set FEED_BENCH=/path/to/bgp-feed-bench.sh)"
  echo "== receive: a BIRD feeder announces $N_ROUTES routes to BIRD, FRR and Twill =="
  # The feed bench runs this with: NS LOCAL_ADDR LOCAL_AS PEER_ADDR PEER_AS WORKDIR.
  # shellcheck disable=SC2016
  RECEIVER_CMD='printf "%s\n" "{\"routerId\":\"$2\",\"as\":$3,\"listen\":{\"address\":\"$2\"},
    \"controlSocket\":\"$6/bgp.sock\",\"peers\":[{\"address\":\"$4\",\"as\":$5,
    \"holdTime\":90,\"connectRetry\":1,\"import\":\"accept\",\"export\":\"reject\"}]}" > "$6/twill.json" &&
    exec ip netns exec "$1" "$TWILL_BIN" bgp serve --config "$6/twill.json"' \
  RECEIVER_NAME=twill TWILL_BIN=$TWILL bash "$FEED_BENCH" "$N_ROUTES" "$R" || rc=1
  echo
fi

# ---- 2. announce: Twill or BIRD sends N routes to a BIRD receiver ----------------------
if [[ " $DIRECTIONS " == *" announce "* ]]; then
  NS_T=twlbgpa-tx NS_R=twlbgpa-rx IF_T=a0 IF_R=b0
  ADDR_T=192.0.2.1 ADDR_R=192.0.2.2 AS_T=65100 AS_R=65200
  HZ=$(getconf CLK_TCK)
  for ns in $NS_T $NS_R; do
    [ -e "/run/netns/$ns" ] && die "netns $ns exists (a stale run?): stop what 'ip netns pids $ns' lists, then 'ip netns del $ns'"
  done
  W=$(mktemp -d /tmp/twlbgpa.XXXXXX) || die "mktemp failed"
  PIDS=()
  cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
    for p in "${PIDS[@]}"; do
      for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.05; done
      kill -KILL "$p" 2>/dev/null; wait "$p" 2>/dev/null
    done
    PIDS=()
    ip -n $NS_R -4 route flush table main >/dev/null 2>&1
    ip netns del $NS_T 2>/dev/null; ip netns del $NS_R 2>/dev/null
  }
  trap 'cleanup; [ "${KEEP:-0}" = 1 ] && note "kept $W" || rm -rf "$W"' EXIT
  trap 'exit 130' INT TERM

  awk -v n="$N_ROUTES" 'BEGIN{for (i = 0; i < n; i++) printf "10.%d.%d.%d/27\n", int(i/2048), int(i/8)%256, (i%8)*32}' > "$W/prefixes"
  sed 's/.*/route & blackhole;/' "$W/prefixes" > "$W/static.conf"
  { printf '{"routerId":"%s","as":%d,"listen":{"address":"%s"},"controlSocket":"%s/twill.sock",' \
      $ADDR_T $AS_T $ADDR_T "$W"
    printf '"kernel":{"install":false},"originate":['
    awk 'NR>1{printf ","} {printf "\"%s\"", $0}' "$W/prefixes"
    printf '],"peers":[{"address":"%s","as":%d,"passive":true,"holdTime":90,"import":"reject","export":"accept"}]}\n' $ADDR_R $AS_R
  } > "$W/twill.json"
  cat > "$W/tx-bird.conf" <<EOF
log "$W/tx-bird.log" { warning, error, fatal };
router id $ADDR_T;
protocol device {}
protocol static feed {
  ipv4;
include "$W/static.conf";
}
protocol bgp receiver { local $ADDR_T as $AS_T; neighbor $ADDR_R as $AS_R; passive on;
  ipv4 { import none; export where source = RTS_STATIC; }; }
EOF
  cat > "$W/rx.conf" <<EOF
log "$W/rx.log" { warning, error, fatal };
timeformat protocol "%s.%6f";
router id $ADDR_R;
protocol device {}
protocol kernel { ipv4 { import none; export all; }; }
protocol bgp sender { local $ADDR_R as $AS_R; neighbor $ADDR_T as $AS_T; connect delay time 0;
  ipv4 { import all; export none; }; }
EOF
  bird -p -c "$W/tx-bird.conf" && bird -p -c "$W/rx.conf" || die "a BIRD config does not parse"

  alive() { local s; read -r s 2>/dev/null < "/proc/$1/stat" || return 1; s=${s##*) }; [ "${s%% *}" != Z ]; }
  measure() { # $1 pid -> "RSS_MB CPU_S" (VmHWM; utime+stime)
    local k v _ h=0 s f
    while read -r k v _; do [ "$k" = VmHWM: ] && h=$v; done < "/proc/$1/status"
    read -r s < "/proc/$1/stat"; s=${s##*) }; read -ra f <<< "$s"
    awk -v h="$h" -v t="$((f[11] + f[12]))" -v hz="$HZ" 'BEGIN{printf "%.1f %.2f", h/1024, t/hz}'
  }
  fib_count() { # prefixes in the receiver's main table, one read of fib_triestat
    local l m=0 L n=0
    mapfile -t L < "/proc/$1/net/fib_triestat"
    for l in "${L[@]}"; do
      case $l in Main:*) m=1 ;; Local:*) m=0 ;; *Prefixes:*) [ $m = 1 ] && { l=${l##*:}; n=$((l)); } ;; esac
    done
    echo "$n"
  }
  run_announce() { # $1 sender (bird|twill), $2 iteration: appends to $W/announce.tsv
    local s=$1 it=$2 tx rx base n t_done= t_first= t_est deadline
    NF=
    ip netns add $NS_T && ip netns add $NS_R || die "netns add failed"
    ip -n $NS_T link add $IF_T type veth peer name $IF_R netns $NS_R
    ip -n $NS_T addr add $ADDR_T/24 dev $IF_T; ip -n $NS_R addr add $ADDR_R/24 dev $IF_R
    for ns in $NS_T $NS_R; do ip -n $ns link set lo up; done
    ip -n $NS_T link set $IF_T up; ip -n $NS_R link set $IF_R up
    if [ "$s" = bird ]; then
      ip netns exec $NS_T bird -f -c "$W/tx-bird.conf" -s "$W/tx.ctl" -P "$W/tx.pid" </dev/null >"$W/tx-$it.out" 2>&1 &
      tx=$!; PIDS+=($tx)
      for _ in $(seq 1200); do   # all N static routes loaded before the receiver starts
        [ "$(birdc -s "$W/tx.ctl" show route count 2>/dev/null | awk '/in table master4/ {print $1}')" = "$N_ROUTES" ] && break
        alive $tx || die "sender BIRD exited: $W/tx-$it.out"; sleep 0.05
      done
      # The feed bench's BIRD quirk holds for a sending BIRD too: its loop can sleep in poll()
      # with the last UPDATEs pending; control-socket traffic wakes it (NUDGE=0: off).
      if [ "${NUDGE:-1}" = 1 ]; then exec {NF}> >(exec birdc -s "$W/tx.ctl" >/dev/null 2>&1); PIDS+=($!); fi
    else
      rm -f "$W/twill.sock"
      ip netns exec $NS_T "$TWILL" bgp serve --config "$W/twill.json" </dev/null >"$W/tx-$it.out" 2>&1 &
      tx=$!; PIDS+=($tx)
      for _ in $(seq 1200); do   # listening (its control socket is up) before the receiver starts
        [ -S "$W/twill.sock" ] && ip netns exec $NS_T ss -Hltn "sport = :179" | grep -q . && break
        alive $tx || die "twill exited: $W/tx-$it.out"; sleep 0.05
      done
    fi
    rm -f "$W/rx.ctl"
    ip netns exec $NS_R bird -f -c "$W/rx.conf" -s "$W/rx.ctl" -P "$W/rx.pid" </dev/null >"$W/rx-$it.out" 2>&1 &
    rx=$!; PIDS+=($rx)
    for _ in $(seq 100); do [ "$(readlink /proc/$rx/ns/net)" = "$(ip netns exec $NS_R readlink /proc/self/ns/net)" ] && break; sleep 0.02; done
    base=$(fib_count $rx)
    deadline=$(( ${EPOCHREALTIME%.*} + TIMEOUT_S ))
    while :; do
      n=$(fib_count $rx)
      [ -z "$t_first" ] && [ "$n" -gt "$base" ] && t_first=$EPOCHREALTIME
      [ $((n - base)) -ge "$N_ROUTES" ] && { t_done=$EPOCHREALTIME; break; }
      alive $tx && alive $rx || break
      [ "${EPOCHREALTIME%.*}" -ge $deadline ] && break
      [ -n "$NF" ] && printf 'show status\n' >&"$NF" 2>/dev/null
      sleep "$POLL_S"
    done
    [ -n "$NF" ] && { exec {NF}>&-; NF=; }
    local mt mr; mt=$(measure $tx); mr=$(measure $rx)
    t_est=$(birdc -s "$W/rx.ctl" show protocols sender 2>/dev/null | awk '$1=="sender" && $4=="up" {print $5}')
    if [ -n "$t_done" ] && [ -n "$t_est" ]; then
      local aft fst; aft=$(awk -v a="$t_done" -v b="$t_est" 'BEGIN{printf "%.3f", a-b}')
      fst=$(awk -v a="$t_first" -v b="$t_est" 'BEGIN{printf "%.3f", a-b}')
      printf '%s\t%s\tok\t%s\t%s\t%s\n' "$s" "$it" "$aft" "$mt" "$mr" | tr ' ' '\t' >> "$W/announce.tsv"
      printf '  run %d/%d sender %-6s after-established %s s (first route +%s s) | sender RSS %s MB CPU %s s | receiver BIRD RSS %s MB CPU %s s\n' \
        "$it" "$R" "$s" "$aft" "$fst" $mt $mr
    else
      note "FAIL run $it sender $s: $((n - base))/$N_ROUTES in the receiver's kernel, session: $(birdc -s "$W/rx.ctl" show protocols sender 2>/dev/null | tail -1); logs in $W (KEEP=1)"
      printf '%s\t%s\tFAIL\n' "$s" "$it" >> "$W/announce.tsv"; rc=1
    fi
    cleanup
  }
  median() { sort -g | awk '{a[NR]=$1} END{if (!NR) {print "n/a"; exit} if (NR % 2) printf "%.2f", a[(NR+1)/2]; else printf "%.2f", (a[NR/2]+a[NR/2+1])/2}'; }

  echo "== announce: BIRD and Twill each announce $N_ROUTES routes to a BIRD receiver, R=$R =="
  : > "$W/announce.tsv"
  for ((it = 1; it <= R; it++)); do for s in $SENDERS; do run_announce "$s" "$it"; done; done
  printf '%-7s | %26s | %15s | %12s | %17s | %14s | %7s\n' sender "median after-established s" "sender RSS MB" "sender CPU s" "receiver RSS MB" "receiver CPU s" "runs ok"
  for s in $SENDERS; do
    col() { awk -F'\t' -v s="$s" -v c="$1" '$1==s && $3=="ok" {print $c}' "$W/announce.tsv"; }
    ok=$(col 4 | wc -l)
    printf '%-7s | %26s | %15s | %12s | %17s | %14s | %7s\n' "$s" "$(col 4 | median)" \
      "$(col 5 | sort -g | tail -1)" "$(col 6 | median)" "$(col 7 | sort -g | tail -1)" "$(col 8 | median)" "$ok/$R"
  done
  echo "(after-established: the receiving BIRD's session Established -> all $N_ROUTES in its kernel table;"
  echo " RSS: peak (VmHWM), max over runs; CPU: user+sys at that moment, median. Poll ${POLL_S}s.)"
fi
exit $rc
