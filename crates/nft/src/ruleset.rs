//! The rule set of Twill's nftables table, as `nft -f` script text. Pure: no I/O.
//!
//! Per-pod state (which pods are masqueraded, which host ports map where) lives only in
//! set and map elements, so the rules never change when pods come and go, and adding one
//! pod's elements costs the same with 10 or 10,000 present (hash lookups, no rule walk).

use std::fmt::{self, Write as _};
use std::net::Ipv4Addr;
use std::str::FromStr;

use ipnet::Ipv4Net;

/// The table's family and name: `table ip twill`.
pub const FAMILY: &str = "ip";
pub const TABLE: &str = "twill";

/// Addresses of pods whose network has `ipMasq`.
pub const SET_MASQ_PODS: &str = "masq_pods";
/// Destinations never masqueraded: pod-to-pod traffic keeps its source.
pub const SET_CLUSTER_CIDRS: &str = "cluster_cidrs";
/// This node's pod subnets, for hairpin masquerade.
pub const SET_LOCAL_SUBNETS: &str = "local_subnets";
/// Marker: `network . block address . block netmask` for each block of each network whose
/// elements are installed. Keyed by the network (its [`network_key`]) and the block, not by
/// a gateway address: in `l3` wiring every network's gateway is 169.254.1.1, and a network
/// gains blocks over time (twilld hands over another when few addresses are left).
/// (Before issue 7 this was `networks { gateway }`; a table made then keeps that set,
/// unused.)
pub const SET_NETWORK_BLOCKS: &str = "network_blocks";
/// `hostIP . proto . hostPort : podIP . podPort`, mappings bound to one host address.
pub const MAP_HOSTPORTS_IP: &str = "hostports_ip";
/// `proto . hostPort : podIP . podPort`, mappings on every local address.
pub const MAP_HOSTPORTS_ANY: &str = "hostports_any";

/// A transport protocol a host port can be mapped for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// The IP protocol number (`meta l4proto`).
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }

    /// The name nft and CNI use: `tcp`, `udp`, `sctp`.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The protocol name was none of tcp, udp, sctp.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown port-mapping protocol {0:?}: use tcp, udp or sctp")]
pub struct UnknownProtocol(pub String);

impl FromStr for Protocol {
    type Err = UnknownProtocol;

    /// Case-insensitive, as CNI's `portMappings[].protocol` is in practice.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            "sctp" => Ok(Protocol::Sctp),
            _ => Err(UnknownProtocol(s.to_string())),
        }
    }
}

/// One host port forwarded to a pod (Docker's `-p`, CNI's `portMappings`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortMapping {
    /// `None` (or 0.0.0.0 in CNI terms): every local address of the node.
    pub host_ip: Option<Ipv4Addr>,
    pub host_port: u16,
    pub container_ip: Ipv4Addr,
    pub container_port: u16,
    pub protocol: Protocol,
}

impl fmt::Display for PortMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.host_ip {
            Some(ip) => write!(f, "{ip}:{}/{}", self.host_port, self.protocol)?,
            None => write!(f, "*:{}/{}", self.host_port, self.protocol)?,
        }
        write!(f, " -> {}:{}", self.container_ip, self.container_port)
    }
}

/// What one pod network needs in the table besides per-pod elements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkRules {
    /// The CNI network's name (`name` in its config): with each block, the key of the
    /// markers in `network_blocks`.
    pub network: String,
    /// This node's pod blocks on the network that must be in `local_subnets` (at least
    /// one; each gets its own marker, so a block handed over later is installed by the
    /// first pod that gets an address in it).
    pub subnets: Vec<Ipv4Net>,
    /// Destinations pods reach without NAT (the cluster's pod CIDRs).
    pub cluster_cidrs: Vec<Ipv4Net>,
    /// Whether the network masquerades its pods' outgoing traffic (`ipMasq`); the per-pod
    /// `masq_pods` element is what applies it, this only documents the intent.
    pub masquerade: bool,
}

/// Longest network key: an nft `ifname` holds 15 bytes and a NUL.
pub const NETWORK_KEY_MAX: usize = 15;

/// The string that stands for `network` in `network_blocks` (an nft `ifname`, 15 bytes at
/// most): the name itself when it fits, which covers the usual names and keeps
/// `nft list set ip twill network_blocks` readable; otherwise its first 6 bytes, `~` and
/// 8 hex digits of a hash of the whole name. `~` cannot occur in a CNI network name
/// (`[a-zA-Z0-9_.-]`), so a shortened key never equals a real name; two long names share
/// a key only if their first 6 bytes and their 32-bit hashes agree.
pub fn network_key(network: &str) -> String {
    if network.len() <= NETWORK_KEY_MAX {
        return network.to_string();
    }
    // FNV-1a, 32 bit: stable across builds and platforms, unlike std's hasher.
    let mut h: u32 = 0x811c9dc5;
    for b in network.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x01000193);
    }
    // CNI names are ASCII, so byte 6 is a char boundary; fall back to a char count.
    let head: String = network.chars().take(6).collect();
    format!("{head}~{h:08x}")
}

/// The table, its sets, maps and chains, and exactly one copy of each rule.
///
/// Idempotent and safe to run concurrently: `add` of an existing table, set or chain with
/// the same definition is a no-op and keeps set elements; each chain is flushed and refilled
/// inside the same script, and one script is one kernel transaction (transactions are
/// serialised), so any number of concurrent runs leave one copy of each rule.
///
/// No `forward` filter chain: NAT chains see only a connection's first packet and
/// conntrack translates the rest, and with no drop policy anywhere forwarding already
/// passes; an `accept` here could not override another table's `drop` anyway.
pub fn base_script() -> String {
    let t = format!("{FAMILY} {TABLE}");
    let mut s = String::new();
    let mut line = |l: String| {
        s.push_str(&l);
        s.push('\n');
    };
    line(format!("add table {t}"));
    line(format!("add set {t} {SET_MASQ_PODS} {{ type ipv4_addr; }}"));
    // auto-merge: networks sharing or nesting cluster CIDRs add overlapping intervals,
    // which a plain interval set rejects ("interval overlaps").
    line(format!(
        "add set {t} {SET_CLUSTER_CIDRS} {{ type ipv4_addr; flags interval; auto-merge; }}"
    ));
    line(format!(
        "add set {t} {SET_LOCAL_SUBNETS} {{ type ipv4_addr; flags interval; auto-merge; }}"
    ));
    line(format!(
        "add set {t} {SET_NETWORK_BLOCKS} {{ {MARKER_TYPE}; }}"
    ));
    line(format!(
        "add map {t} {MAP_HOSTPORTS_IP} {{ type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service; }}"
    ));
    line(format!(
        "add map {t} {MAP_HOSTPORTS_ANY} {{ type inet_proto . inet_service : ipv4_addr . inet_service; }}"
    ));
    line(format!(
        "add chain {t} prerouting {{ type nat hook prerouting priority dstnat; policy accept; }}"
    ));
    // Locally generated connections to a host port (curl node_ip:port, 127.0.0.1:port).
    line(format!(
        "add chain {t} output {{ type nat hook output priority -100; policy accept; }}"
    ));
    line(format!("add chain {t} hostports"));
    line(format!(
        "add chain {t} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}"
    ));
    for (chain, rules) in chain_rules() {
        line(format!("flush chain {t} {chain}"));
        for rule in rules {
            line(format!("add rule {t} {chain} {rule}"));
        }
    }
    s
}

/// Each of our chains with its rules, in order (what `base_script` installs).
pub fn chain_rules() -> [(&'static str, Vec<String>); 4] {
    [
        (
            "prerouting",
            vec!["fib daddr type local jump hostports".to_string()],
        ),
        ("output", vec!["fib daddr type local jump hostports".to_string()]),
        (
            "hostports",
            vec![
                format!("dnat ip to ip daddr . meta l4proto . th dport map @{MAP_HOSTPORTS_IP}"),
                format!("dnat ip to meta l4proto . th dport map @{MAP_HOSTPORTS_ANY}"),
            ],
        ),
        (
            "postrouting",
            vec![
                // 127.0.0.1:hostPort -> pod: the pod cannot answer 127.0.0.1 (needs
                // route_localnet=1, which the CNI plugin sets).
                "ct status dnat ip saddr 127.0.0.0/8 masquerade".to_string(),
                // Hairpin: the pod would answer a neighbour (or itself) straight over the
                // bridge, bypassing the reverse DNAT.
                format!(
                    "ct status dnat ip saddr @{SET_LOCAL_SUBNETS} ip daddr @{SET_LOCAL_SUBNETS} masquerade"
                ),
                format!(
                    "ip saddr @{SET_MASQ_PODS} ip daddr != @{SET_CLUSTER_CIDRS} masquerade fully-random"
                ),
            ],
        ),
    ]
}

/// `base_script` plus one network's interval elements and a marker per block, in one
/// transaction: a reader that sees a block's marker sees the rest.
pub fn network_script(net: &NetworkRules) -> String {
    let t = format!("{FAMILY} {TABLE}");
    let mut s = base_script();
    if !net.cluster_cidrs.is_empty() {
        let cidrs: Vec<String> = net
            .cluster_cidrs
            .iter()
            .map(|c| c.trunc().to_string())
            .collect();
        let _ = writeln!(
            s,
            "add element {t} {SET_CLUSTER_CIDRS} {{ {} }}",
            cidrs.join(", ")
        );
    }
    if !net.subnets.is_empty() {
        let blocks: Vec<String> = net.subnets.iter().map(|b| b.trunc().to_string()).collect();
        let _ = writeln!(
            s,
            "add element {t} {SET_LOCAL_SUBNETS} {{ {} }}",
            blocks.join(", ")
        );
        let key = network_key(&net.network);
        let markers: Vec<String> = net
            .subnets
            .iter()
            .map(|b| format!("\"{key}\" . {} . {}", b.network(), b.netmask()))
            .collect();
        let _ = writeln!(
            s,
            "add element {t} {SET_NETWORK_BLOCKS} {{ {} }}",
            markers.join(", ")
        );
    }
    s
}

/// For each interval set a network adds to, a script that adds only that: the table and
/// sets (`base_script`, idempotent) and the network's elements of that one set. Run with
/// `nft --check`, one that fails names the set that is broken.
pub fn interval_checks(net: &NetworkRules) -> Vec<(&'static str, String)> {
    let t = format!("{FAMILY} {TABLE}");
    let mut checks = Vec::new();
    for (set, items) in [
        (SET_CLUSTER_CIDRS, &net.cluster_cidrs),
        (SET_LOCAL_SUBNETS, &net.subnets),
    ] {
        if items.is_empty() {
            continue;
        }
        let list: Vec<String> = items.iter().map(|c| c.trunc().to_string()).collect();
        let mut s = base_script();
        let _ = writeln!(s, "add element {t} {set} {{ {} }}", list.join(", "));
        checks.push((set, s));
    }
    checks
}

/// The command that resets interval set `set`: it and every network's markers are
/// emptied in one transaction, so each network's next ADD reinstalls its elements. The
/// marker set is added first (a no-op if present), so the command also works on a table
/// that does not have it yet.
pub fn reset_set_command(set: &str) -> String {
    let t = format!("{FAMILY} {TABLE}");
    format!(
        "nft 'add set {t} {SET_NETWORK_BLOCKS} {{ {MARKER_TYPE}; }}; flush set {t} {set}; flush set {t} {SET_NETWORK_BLOCKS}'"
    )
}

/// The type of `network_blocks`.
const MARKER_TYPE: &str = "type ifname . ipv4_addr . ipv4_addr";

// ---- anti-spoofing of bridged pods: `table bridge twill` ----

/// Anti-spoofing's table: `table bridge twill`. The bridge family, because a bridged
/// pod's frames to its neighbours never reach the IP hooks (no br_netfilter needed), and
/// ARP is seen there too.
pub const BRIDGE_FAMILY: &str = "bridge";
/// Host veths of the pods anti-spoofing guards (`iifname` is a port of the bridge).
pub const SET_GUARDED: &str = "pods";
/// `host veth . pod MAC`: the only source MAC (Ethernet and ARP sender) a pod may use.
pub const SET_POD_MACS: &str = "pod_macs";
/// `host veth . pod IPv4`: the only source address (IPv4 and ARP sender) a pod may use.
pub const SET_POD_IPS: &str = "pod_ips";
/// What was dropped, by reason (`nft list counters table bridge twill`).
pub const COUNTER_SPOOFED_MAC: &str = "spoofed_mac";
pub const COUNTER_SPOOFED_IP: &str = "spoofed_ip";
pub const COUNTER_SPOOFED_ARP: &str = "spoofed_arp";
/// Frames that are neither IPv4, ARP nor IPv6 (VLAN-tagged ones among them, which could
/// carry any address past the checks).
pub const COUNTER_SPOOFED_OTHER: &str = "spoofed_other";

/// `table bridge twill`: every frame that enters the node's bridges from a guarded pod's
/// veth must carry the pod's MAC and, if IPv4 or ARP, the pod's address as its source
/// (ARP: as sender MAC and address too, so no pod can claim another's address); anything
/// else is counted and dropped before the bridge forwards or delivers it. Per-pod state
/// is three set elements keyed by the host veth's name, added by ADD before the veth
/// exists (so the pod's first frame is already checked) and removed by DEL and GC: the
/// rules never change. Idempotent, like [`base_script`].
pub fn antispoof_script() -> String {
    let t = format!("{BRIDGE_FAMILY} {TABLE}");
    let mut s = String::new();
    let mut line = |l: String| {
        s.push_str(&l);
        s.push('\n');
    };
    line(format!("add table {t}"));
    line(format!("add set {t} {SET_GUARDED} {{ type ifname; }}"));
    line(format!(
        "add set {t} {SET_POD_MACS} {{ type ifname . ether_addr; }}"
    ));
    line(format!(
        "add set {t} {SET_POD_IPS} {{ type ifname . ipv4_addr; }}"
    ));
    for c in [
        COUNTER_SPOOFED_MAC,
        COUNTER_SPOOFED_IP,
        COUNTER_SPOOFED_ARP,
        COUNTER_SPOOFED_OTHER,
    ] {
        line(format!("add counter {t} {c}"));
    }
    // Before any filter (-200) in the bridge family: policy sees only genuine sources.
    line(format!(
        "add chain {t} prerouting {{ type filter hook prerouting priority -250; policy accept; }}"
    ));
    line(format!("add chain {t} antispoof"));
    for (chain, rules) in antispoof_rules() {
        line(format!("flush chain {t} {chain}"));
        for rule in rules {
            line(format!("add rule {t} {chain} {rule}"));
        }
    }
    s
}

/// The anti-spoofing chains with their rules, in order.
pub fn antispoof_rules() -> [(&'static str, Vec<String>); 2] {
    [
        (
            "prerouting",
            vec![format!("iifname @{SET_GUARDED} jump antispoof")],
        ),
        (
            "antispoof",
            vec![
                format!("iifname . ether saddr != @{SET_POD_MACS} counter name {COUNTER_SPOOFED_MAC} drop"),
                format!("ether type ip iifname . ip saddr != @{SET_POD_IPS} counter name {COUNTER_SPOOFED_IP} drop"),
                format!("ether type arp iifname . arp saddr ether != @{SET_POD_MACS} counter name {COUNTER_SPOOFED_ARP} drop"),
                format!("ether type arp iifname . arp saddr ip != @{SET_POD_IPS} counter name {COUNTER_SPOOFED_ARP} drop"),
                format!("ether type != {{ ip, arp, ip6 }} counter name {COUNTER_SPOOFED_OTHER} drop"),
            ],
        ),
    ]
}

/// Script that removes the whole table (for tests and teardown); fails if it is absent.
pub fn delete_table_script() -> String {
    format!("delete table {FAMILY} {TABLE}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "\
add table ip twill
add set ip twill masq_pods { type ipv4_addr; }
add set ip twill cluster_cidrs { type ipv4_addr; flags interval; auto-merge; }
add set ip twill local_subnets { type ipv4_addr; flags interval; auto-merge; }
add set ip twill network_blocks { type ifname . ipv4_addr . ipv4_addr; }
add map ip twill hostports_ip { type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service; }
add map ip twill hostports_any { type inet_proto . inet_service : ipv4_addr . inet_service; }
add chain ip twill prerouting { type nat hook prerouting priority dstnat; policy accept; }
add chain ip twill output { type nat hook output priority -100; policy accept; }
add chain ip twill hostports
add chain ip twill postrouting { type nat hook postrouting priority srcnat; policy accept; }
flush chain ip twill prerouting
add rule ip twill prerouting fib daddr type local jump hostports
flush chain ip twill output
add rule ip twill output fib daddr type local jump hostports
flush chain ip twill hostports
add rule ip twill hostports dnat ip to ip daddr . meta l4proto . th dport map @hostports_ip
add rule ip twill hostports dnat ip to meta l4proto . th dport map @hostports_any
flush chain ip twill postrouting
add rule ip twill postrouting ct status dnat ip saddr 127.0.0.0/8 masquerade
add rule ip twill postrouting ct status dnat ip saddr @local_subnets ip daddr @local_subnets masquerade
add rule ip twill postrouting ip saddr @masq_pods ip daddr != @cluster_cidrs masquerade fully-random
";

    #[test]
    fn antispoof_script_is_exact() {
        assert_eq!(
            antispoof_script(),
            "\
add table bridge twill
add set bridge twill pods { type ifname; }
add set bridge twill pod_macs { type ifname . ether_addr; }
add set bridge twill pod_ips { type ifname . ipv4_addr; }
add counter bridge twill spoofed_mac
add counter bridge twill spoofed_ip
add counter bridge twill spoofed_arp
add counter bridge twill spoofed_other
add chain bridge twill prerouting { type filter hook prerouting priority -250; policy accept; }
add chain bridge twill antispoof
flush chain bridge twill prerouting
add rule bridge twill prerouting iifname @pods jump antispoof
flush chain bridge twill antispoof
add rule bridge twill antispoof iifname . ether saddr != @pod_macs counter name spoofed_mac drop
add rule bridge twill antispoof ether type ip iifname . ip saddr != @pod_ips counter name spoofed_ip drop
add rule bridge twill antispoof ether type arp iifname . arp saddr ether != @pod_macs counter name spoofed_arp drop
add rule bridge twill antispoof ether type arp iifname . arp saddr ip != @pod_ips counter name spoofed_arp drop
add rule bridge twill antispoof ether type != { ip, arp, ip6 } counter name spoofed_other drop
"
        );
    }

    #[test]
    fn base_script_is_exact() {
        assert_eq!(base_script(), BASE);
    }

    #[test]
    fn network_script_adds_intervals_and_a_marker_per_block() {
        let net = NetworkRules {
            network: "twltest".into(),
            // Host bits are dropped: nft rejects a prefix with host bits set.
            subnets: vec![
                "10.244.1.1/24".parse().unwrap(),
                "10.244.9.64/26".parse().unwrap(),
            ],
            cluster_cidrs: vec![
                "10.244.0.0/16".parse().unwrap(),
                "10.96.0.0/12".parse().unwrap(),
            ],
            masquerade: true,
        };
        let expected = format!(
            "{BASE}\
add element ip twill cluster_cidrs {{ 10.244.0.0/16, 10.96.0.0/12 }}
add element ip twill local_subnets {{ 10.244.1.0/24, 10.244.9.64/26 }}
add element ip twill network_blocks {{ \"twltest\" . 10.244.1.0 . 255.255.255.0, \"twltest\" . 10.244.9.64 . 255.255.255.192 }}
"
        );
        assert_eq!(network_script(&net), expected);
    }

    #[test]
    fn network_script_without_cluster_cidrs_skips_the_empty_element_list() {
        let net = NetworkRules {
            network: "k8s-pod-network".into(),
            subnets: vec!["10.244.2.0/24".parse().unwrap()],
            cluster_cidrs: vec![],
            masquerade: false,
        };
        let s = network_script(&net);
        assert!(!s.contains("cluster_cidrs {  }"));
        assert!(s.ends_with(
            "add element ip twill local_subnets { 10.244.2.0/24 }\nadd element ip twill network_blocks { \"k8s-pod-network\" . 10.244.2.0 . 255.255.255.0 }\n"
        ));
    }

    #[test]
    fn network_keys_fit_an_ifname_and_never_equal_a_real_name() {
        assert_eq!(network_key("twltest"), "twltest");
        assert_eq!(network_key("k8s-pod-network"), "k8s-pod-network");
        let long = "a-network-with-a-long-name";
        let key = network_key(long);
        assert_eq!(key.len(), NETWORK_KEY_MAX, "{key}");
        assert!(key.starts_with("a-netw~"), "{key}");
        assert_eq!(key, network_key(long), "stable");
        // Same first bytes, other name: another key.
        assert_ne!(key, network_key("a-network-with-a-long-name2"));
        assert_ne!(network_key(&"x".repeat(16)), network_key(&"x".repeat(17)));
    }

    #[test]
    fn interval_checks_add_one_set_each_and_the_reset_empties_the_markers_too() {
        let net = NetworkRules {
            network: "twltest".into(),
            subnets: vec!["10.244.1.0/24".parse().unwrap()],
            cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
            masquerade: true,
        };
        let checks = interval_checks(&net);
        assert_eq!(checks.len(), 2);
        assert_eq!(checks[0].0, "cluster_cidrs");
        assert_eq!(
            checks[0].1,
            format!("{BASE}add element ip twill cluster_cidrs {{ 10.244.0.0/16 }}\n")
        );
        assert_eq!(
            checks[1].1,
            format!("{BASE}add element ip twill local_subnets {{ 10.244.1.0/24 }}\n")
        );
        let none = NetworkRules {
            cluster_cidrs: vec![],
            ..net
        };
        assert_eq!(interval_checks(&none).len(), 1);
        assert_eq!(
            reset_set_command("local_subnets"),
            "nft 'add set ip twill network_blocks { type ifname . ipv4_addr . ipv4_addr; }; flush set ip twill local_subnets; flush set ip twill network_blocks'"
        );
    }

    #[test]
    fn protocol_parses_and_numbers() {
        assert_eq!("TCP".parse::<Protocol>().unwrap(), Protocol::Tcp);
        assert_eq!("udp".parse::<Protocol>().unwrap().number(), 17);
        assert_eq!("sctp".parse::<Protocol>().unwrap().number(), 132);
        let err = "icmp".parse::<Protocol>().unwrap_err();
        assert!(err.to_string().contains("use tcp, udp or sctp"));
    }

    #[test]
    fn port_mapping_displays_for_error_messages() {
        let m = PortMapping {
            host_ip: None,
            host_port: 8080,
            container_ip: "10.244.1.5".parse().unwrap(),
            container_port: 80,
            protocol: Protocol::Tcp,
        };
        assert_eq!(m.to_string(), "*:8080/tcp -> 10.244.1.5:80");
        let m = PortMapping {
            host_ip: Some("192.0.2.1".parse().unwrap()),
            ..m
        };
        assert_eq!(m.to_string(), "192.0.2.1:8080/tcp -> 10.244.1.5:80");
    }
}
