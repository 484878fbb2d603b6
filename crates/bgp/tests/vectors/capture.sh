#!/usr/bin/env bash
# capture.sh: records the byte vectors in this directory from real BIRD 2 and FRR 8.4
# sessions, and writes them out with pcap2vectors.py (format: README.md).
#
#   sudo crates/bgp/tests/vectors/capture.sh [OUTDIR]     (default: this directory)
#
# Six speakers on one bridge, each in its own namespace (twlvec<pid>n0..n5, removed at the
# end, failures included); tcpdump on the bridge sees every session:
#   n0 BIRD AS4200000001  192.0.2.1 2001:db8::1  eBGP to n1 over IPv4 (IPv4 unicast:
#        communities, large communities, MED) and over IPv6 (IPv6 unicast, MP_REACH/UNREACH)
#   n1 FRR  AS65002       192.0.2.2 2001:db8::2  the hub; aggregate 10.244.0.0/16 (ATOMIC_AGGREGATE,
#        AGGREGATOR); route reflector for n5; client of n3
#   n2 BIRD AS65003       192.0.2.3  `enable as4 off`: a two-octet speaker, so FRR sends it
#        AS_TRANS and AS4_PATH (AS4200000001 is in the paths), and BIRD sends them back
#   n3 BIRD AS65002       192.0.2.4  route reflector, clients n1 (FRR) and n4
#   n4 BIRD AS65002       192.0.2.5  client of n3 (LOCAL_PREF 200, a community)
#   n5 BIRD AS65002       192.0.2.6  client of n1
# Every session has graceful restart (RFC 4724), route refresh and four-octet AS (but n2).
# Then, in order: route refresh both ways (birdc reload in; vtysh clear soft in), withdrawals
# (BIRD reconfigured without two statics; FRR `no network`), n0's BIRD SIGKILLed and
# restarted with -R (a graceful restart: the new OPEN has the R bit), and n2's session
# disabled (a Cease NOTIFICATION). About 25 s.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=${1:-$HERE}
[ "$(id -u)" = 0 ] || { echo "capture.sh: run as root (it builds namespaces)" >&2; exit 1; }
for p in bird birdc vtysh tcpdump python3; do
  command -v $p >/dev/null || { echo "capture.sh: $p missing: scripts/install-deps.sh" >&2; exit 1; }
done

P=twlvec$$
W=$(mktemp -d /tmp/twlvec.XXXXXX); chmod 711 "$W"
PIDS=()
NODES=(n0 n1 n2 n3 n4 n5)
cleanup() {
  local rc=$? p
  trap - EXIT
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do kill -TERM "${PIDS[i]}" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true
  done
  for n in "${NODES[@]}" sw; do ip netns del "$P$n" 2>/dev/null || true; done
  if [ "$rc" != 0 ]; then echo "capture.sh: failed (rc $rc); logs kept in $W" >&2; else rm -rf "$W"; fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ip netns add ${P}sw
ip -n ${P}sw link add twlvbr type bridge
ip -n ${P}sw link set twlvbr up
for i in 0 1 2 3 4 5; do
  n=$P${NODES[i]}
  ip netns add $n; ip -n $n link set lo up
  # no duplicate address detection: the link-local address FRR needs for IPv6 next hops
  # is usable at once
  ip netns exec $n sysctl -qw net.ipv6.conf.default.accept_dad=0 net.ipv6.conf.all.accept_dad=0
  ip -n ${P}sw link add twlvp$i type veth peer name eth0 netns $n
  ip -n ${P}sw link set twlvp$i master twlvbr up
  ip -n $n addr add 192.0.2.$((i + 1))/24 dev eth0
  ip -n $n addr add 2001:db8::$((i + 1))/64 dev eth0 nodad
  ip -n $n link set eth0 up
done

ip netns exec ${P}sw tcpdump -i twlvbr -s 0 -U -w "$W/bgp.pcap" tcp port 179 2>"$W/tcpdump.err" &
PIDS+=($!)
for _ in $(seq 100); do grep -q listening "$W/tcpdump.err" && break; sleep 0.05; done

T='hold time 9; keepalive time 3; connect retry time 1; connect delay time 0; graceful restart on;'
n0_conf() { # $1: "full" or "less" (two statics fewer: withdrawals)
  local more4='' more6=''
  [ "$1" = full ] && { more4='route 10.244.11.0/24 blackhole;'; more6='route 2001:db8:11::/48 blackhole;'; }
  cat <<EOC
log "$W/n0.log" all;
router id 192.0.2.1;
protocol device {}
protocol static s4 { ipv4; route 10.244.1.0/24 blackhole; route 10.244.21.0/24 blackhole; $more4 }
protocol static s6 { ipv6; route 2001:db8:1::/48 blackhole; $more6 }
filter out4 {
  if source != RTS_STATIC then reject;
  if net = 10.244.1.0/24 then {
    bgp_community.add((65001,100)); bgp_community.add((65535,65281));
    bgp_large_community.add((4200000001,1,2)); bgp_med = 50;
  }
  if net = 10.244.21.0/24 then bgp_large_community.add((4200000001,7,8));
  accept;
}
protocol bgp frr4 { local 192.0.2.1 as 4200000001; neighbor 192.0.2.2 as 65002; $T
  ipv4 { import all; export filter out4; }; }
protocol bgp frr6 { local 2001:db8::1 as 4200000001; neighbor 2001:db8::2 as 65002; $T
  ipv6 { import all; export where source = RTS_STATIC; }; }
EOC
}
n0_conf full > "$W/n0.conf"
cat > "$W/n2.conf" <<EOC
log "$W/n2.log" all;
router id 192.0.2.3;
protocol device {}
protocol static { ipv4; route 10.244.3.0/24 blackhole; }
protocol bgp frr { local 192.0.2.3 as 65003; neighbor 192.0.2.2 as 65002; enable as4 off; $T
  ipv4 { import all; export all; }; }
EOC
cat > "$W/n3.conf" <<EOC
log "$W/n3.log" all;
router id 192.0.2.4;
protocol device {}
protocol static { ipv4; route 10.244.4.0/24 blackhole; }
protocol bgp frr { local 192.0.2.4 as 65002; neighbor 192.0.2.2 as 65002; direct; rr client; rr cluster id 192.0.2.4; $T
  ipv4 { import all; export all; }; }
protocol bgp n4 { local 192.0.2.4 as 65002; neighbor 192.0.2.5 as 65002; direct; rr client; rr cluster id 192.0.2.4; $T
  ipv4 { import all; export all; }; }
EOC
cat > "$W/n4.conf" <<EOC
log "$W/n4.log" all;
router id 192.0.2.5;
protocol device {}
protocol static { ipv4; route 10.244.5.0/24 blackhole; }
protocol bgp hub { local 192.0.2.5 as 65002; neighbor 192.0.2.4 as 65002; direct; $T
  ipv4 { import all; export filter { if source != RTS_STATIC then reject;
    bgp_local_pref = 200; bgp_community.add((65002,500)); accept; }; }; }
EOC
cat > "$W/n5.conf" <<EOC
log "$W/n5.log" all;
router id 192.0.2.6;
protocol device {}
protocol static { ipv4; route 10.244.6.0/24 blackhole; }
protocol bgp hub { local 192.0.2.6 as 65002; neighbor 192.0.2.2 as 65002; direct; $T
  ipv4 { import all; export where source = RTS_STATIC; }; }
EOC

mkdir -p "$W/frr"
cat > "$W/frr/zebra.conf" <<EOC
hostname n1
log file $W/frr/zebra.log informational
EOC
{
  echo "hostname n1"
  echo "log file $W/frr/bgpd.log informational"
  echo "router bgp 65002"
  echo " bgp router-id 192.0.2.2"
  echo " no bgp ebgp-requires-policy"
  echo " no bgp network import-check"
  echo " no bgp default ipv4-unicast"
  echo " bgp graceful-restart"
  echo " bgp graceful-restart restart-time 30"
  for nb in 192.0.2.1:4200000001 2001:db8::1:4200000001 192.0.2.3:65003 192.0.2.4:65002 192.0.2.6:65002; do
    a=${nb%:*}; as=${nb##*:}
    echo " neighbor $a remote-as $as"
    echo " neighbor $a timers 3 9"
    echo " neighbor $a timers connect 1"
  done
  echo " address-family ipv4 unicast"
  echo "  network 10.244.2.0/24 route-map tag"
  echo "  network 10.244.12.0/24"
  echo "  aggregate-address 10.244.0.0/16"
  for a in 192.0.2.1 192.0.2.3 192.0.2.4 192.0.2.6; do echo "  neighbor $a activate"; done
  echo "  neighbor 192.0.2.6 route-reflector-client"
  echo " exit-address-family"
  echo " address-family ipv6 unicast"
  echo "  network 2001:db8:2::/48"
  echo "  network 2001:db8:12::/48"
  echo "  neighbor 2001:db8::1 activate"
  echo " exit-address-family"
  echo "route-map tag permit 10"
  echo " set community 65002:200 65002:300"
  echo " set large-community 65002:1:1 4200000001:0:7"
} > "$W/frr/bgpd.conf"
chown -R frr:frr "$W/frr"

bird_start() { # $1 node $2.. extra flags
  local n=$1; shift
  rm -f "$W/$n.ctl"
  ip netns exec $P$n bird -f "$@" -c "$W/$n.conf" -s "$W/$n.ctl" -P "$W/$n.pid" </dev/null >>"$W/$n.out" 2>&1 &
  PIDS+=($!); eval "PID_$n=$!"
}
for n in n2 n3 n4 n5; do bird_start $n; done
O="-u frr -g frr -P 0 -z $W/frr/zserv.api --vty_socket $W/frr"
ip netns exec ${P}n1 /usr/lib/frr/zebra $O -f "$W/frr/zebra.conf" -i "$W/frr/zebra.pid" </dev/null >"$W/frr/zebra.out" 2>&1 &
PIDS+=($!)
for _ in $(seq 200); do [ -S "$W/frr/zserv.api" ] && break; sleep 0.05; done
ip netns exec ${P}n1 /usr/lib/frr/bgpd $O -f "$W/frr/bgpd.conf" -i "$W/frr/bgpd.pid" </dev/null >"$W/frr/bgpd.out" 2>&1 &
PIDS+=($!)
bird_start n0

V() { vtysh --vty_socket "$W/frr" "$@"; }
established() { # every BIRD BGP protocol up, every FRR neighbor Established
  local n
  for n in n0 n2 n3 n4 n5; do
    birdc -s "$W/$n.ctl" show protocols 2>/dev/null | awk '$2=="BGP" && $6!="Established" {bad=1} END{exit bad}' || return 1
  done
  [ "$(V -c 'show bgp neighbors json' 2>/dev/null | python3 -c 'import json,sys; d=json.load(sys.stdin); print(sum(v.get("bgpState")=="Established" for v in d.values()))')" = 5 ]
}
wait_established() {
  for _ in $(seq 300); do established && return 0; sleep 0.1; done
  echo "capture.sh: sessions did not all come up:" >&2
  for n in n0 n2 n3 n4 n5; do birdc -s "$W/$n.ctl" show protocols >&2 || true; done
  V -c 'show bgp summary' >&2 || true
  return 1
}
wait_established
sleep 3                                   # updates, End-of-RIBs, a keepalive round

# Route refresh, both ways (and enhanced route refresh's BoRR/EoRR where both offer it).
birdc -s "$W/n0.ctl" reload in frr4 >/dev/null
birdc -s "$W/n0.ctl" reload in frr6 >/dev/null
V -c 'clear bgp 192.0.2.3 soft in' -c 'clear bgp 192.0.2.4 soft in' >/dev/null
sleep 2

# Withdrawals: BIRD (IPv4 withdrawn routes and IPv6 MP_UNREACH) and FRR.
n0_conf less > "$W/n0.conf"
birdc -s "$W/n0.ctl" configure >/dev/null
V -c 'conf t' -c 'router bgp 65002' -c 'address-family ipv4 unicast' -c 'no network 10.244.12.0/24' \
  -c 'exit-address-family' -c 'address-family ipv6 unicast' -c 'no network 2001:db8:12::/48' >/dev/null
sleep 2

# Graceful restart: n0's BIRD crashes and comes back with -R (restart bit, End-of-RIB).
kill -KILL "$PID_n0"; wait "$PID_n0" 2>/dev/null || true
bird_start n0 -R
wait_established
sleep 3

# A Cease NOTIFICATION: n2's session administratively shut down.
birdc -s "$W/n2.ctl" disable frr >/dev/null
sleep 1

kill -INT "${PIDS[0]}"; wait "${PIDS[0]}" 2>/dev/null || true
python3 "$HERE/pcap2vectors.py" "$W/bgp.pcap" "$OUT" \
  --source "Captured by capture.sh with tcpdump on a bridge: $(bird --version 2>&1 | tail -1), FRR $(V -c 'show version' | awk '/^FRRouting/ {print $2; exit}'), kernel $(uname -r), $(date -u +%Y-%m-%d)." \
  --label 192.0.2.1=bird-n0 --label 2001:db8::1=bird-n0 --label 192.0.2.2=frr-n1 --label 2001:db8::2=frr-n1 \
  --label 192.0.2.3=bird-n2-as2 --label 192.0.2.4=bird-n3-rr --label 192.0.2.5=bird-n4 --label 192.0.2.6=bird-n5 \
  --session 192.0.2.1-192.0.2.2=bird-frr-as4-ipv4 \
  --session 2001:db8::1-2001:db8::2=bird-frr-ipv6 \
  --session 192.0.2.2-192.0.2.3=frr-bird-two-octet-as \
  --session 192.0.2.2-192.0.2.4=bird-rr-frr-client \
  --session 192.0.2.4-192.0.2.5=bird-rr-bird-client \
  --session 192.0.2.2-192.0.2.6=frr-rr-bird-client
