//! Config strings for the reference daemons with the suite's short timers, and the waits
//! every interop scenario shares.

use std::time::Duration;

use super::kernel;
use super::wait;

/// BIRD's timers: hold 9, keepalive 3, retry 1 s, no connect delay (BIRD's default is 5 s).
pub const BIRD_TIMERS: &str =
    "hold time 9; keepalive time 3; connect retry time 1; connect delay time 0; error wait time 1,2; debug { states, events };";

/// A BIRD config: router id, device, kernel export of BGP routes, the `statics` as
/// blackhole routes (protocol `st`), then `protocols`.
pub fn bird(router_id: &str, statics: &[&str], protocols: &str) -> String {
    let routes: String = statics
        .iter()
        .map(|p| format!("route {p} blackhole; "))
        .collect();
    let st = if statics.is_empty() {
        String::new()
    } else {
        format!("protocol static st {{ ipv4; {routes}}}\n")
    };
    format!(
        "router id {router_id};\nprotocol device {{ }}\n\
         protocol kernel {{ ipv4 {{ import none; export where source = RTS_BGP; }}; }}\n{st}{protocols}"
    )
}

/// One BIRD BGP protocol over a directly connected link: `extra` goes inside the protocol
/// (e.g. `password "x"; graceful restart on; rr client;`), the channel imports everything
/// and exports the statics.
pub fn bird_bgp(
    name: &str,
    local: &str,
    local_as: u32,
    neighbor: &str,
    peer_as: u32,
    extra: &str,
) -> String {
    bird_bgp_export(
        name,
        local,
        local_as,
        neighbor,
        peer_as,
        extra,
        "where source = RTS_STATIC",
    )
}

/// [`bird_bgp`] with another export filter (`all` for a route reflector).
pub fn bird_bgp_export(
    name: &str,
    local: &str,
    local_as: u32,
    neighbor: &str,
    peer_as: u32,
    extra: &str,
    export: &str,
) -> String {
    format!(
        "protocol bgp {name} {{\n  local {local} as {local_as}; neighbor {neighbor} as {peer_as}; direct;\n  \
         {BIRD_TIMERS}\n  {extra}\n  ipv4 {{ import all; export {export}; }};\n}}\n"
    )
}

/// An FRR bgpd config: `networks` announced (no import check), eBGP without policy allowed,
/// each neighbor `(address, as, extra lines in the ipv4 address family)` with timers 3/9
/// and connect 1, then `global` lines under `router bgp` (after the neighbors).
pub fn frr(
    asn: u32,
    router_id: &str,
    networks: &[&str],
    neighbors: &[(&str, u32, &str)],
    global: &str,
) -> String {
    let mut s = format!(
        "router bgp {asn}\n bgp router-id {router_id}\n no bgp ebgp-requires-policy\n \
         no bgp network import-check\n no bgp default ipv4-unicast\n"
    );
    for (a, r, _) in neighbors {
        s += &format!(" neighbor {a} remote-as {r}\n neighbor {a} timers 3 9\n neighbor {a} timers connect 1\n");
    }
    s += global;
    s += " address-family ipv4 unicast\n";
    for n in networks {
        s += &format!("  network {n}\n");
    }
    for (a, _, extra) in neighbors {
        s += &format!("  neighbor {a} activate\n");
        for l in extra.lines().filter(|l| !l.trim().is_empty()) {
            s += &format!("  {}\n", l.trim());
        }
    }
    s + " exit-address-family\n"
}

/// Waits until `ns`'s kernel routes `prefix` via exactly `gateways`; returns how long.
pub fn wait_kernel_route(ns: &str, prefix: &str, gateways: &[&str], timeout: Duration) -> Duration {
    wait::until(
        &format!("{prefix} via {gateways:?} in {ns}'s kernel"),
        timeout,
        || match kernel::route(ns, prefix) {
            Some(r) if r.gateways == gateways => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .1
}

/// Waits until `ns`'s kernel has no route for `prefix`.
pub fn wait_kernel_no_route(ns: &str, prefix: &str, timeout: Duration) -> Duration {
    wait::until(
        &format!("no {prefix} in {ns}'s kernel"),
        timeout,
        || match kernel::route(ns, prefix) {
            None => Ok(()),
            Some(r) => Err(format!("{r:?}")),
        },
    )
    .1
}
