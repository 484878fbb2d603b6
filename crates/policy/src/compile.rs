//! The policy dataplane's description, pure: a [`Cluster`] and this node's name become
//! Twill's own nftables table, `table inet twill-policy` ([`Ruleset`]), and two rule sets
//! become the smallest list of operations from one to the other ([`diff`], [`Op`]).
//!
//! # Where packets are judged
//! One `inet` table, hook `forward` (a node's own traffic with its pods is not judged:
//! host→pod is always allowed, as the semantics say, and pod→host too). Bridged pod
//! traffic reaches that hook through br_netfilter (`net.bridge.bridge-nf-call-iptables=1`,
//! a per-namespace sysctl twilld sets; the kernel here has no `nf_conntrack_bridge`, so a
//! `bridge`-family table could not use conntrack): there the input and output interface
//! are the bridge itself, so the dispatch key is the pair *interface . address*, the host
//! veth and the pod's address in l3 wiring, the bridge and the pod's address in bridge
//! wiring (the bridge's anti-spoofing keeps a pod to its own source address).
//!
//! ```text
//! chain forward (hook forward, priority filter, policy accept)
//!   ct state established,related accept          replies and related ICMP first
//!   iifgroup POD_GROUP jump from-pod              the source pod's egress
//!   oifgroup POD_GROUP jump to-pod                the destination pod's ingress
//! chain from-pod
//!   ct state invalid drop
//!   iifname . ip saddr vmap @from_pod              → goto prof/eg/<h> (per-pod profile)
//!   counter name drop/unknown drop                Calico's "unknown interface" drop
//! ```
//! twill-cni puts every pod's host veth (and, in bridge wiring, the bridge) in interface
//! group [`POD_GROUP`], so a pod interface whose pod is not (yet) in the dispatch map
//! passes nothing while the table exists.
//!
//! A profile chain (one per distinct list of policies selecting a pod in one direction,
//! shared by the pods with that list, so a pod joining needs no new chain) runs the global
//! tier then the namespaced tier:
//! ```text
//! chain prof/in/<h>                               (global policies G1, G2 select the pod)
//!   meta mark set meta mark & ~(ALLOW|PASS)
//!   jump gnp/in/G1 ; mark ALLOW? return ; mark PASS? goto prof/in/<h>/k8s
//!   jump gnp/in/G2 ; …
//!   counter name drop/gnp/G1 drop                  end-of-tier deny
//! chain prof/in/<h>/k8s                           (NetworkPolicies P1, P2 select it)
//!   jump np/in/ns/P1 ; mark ALLOW? return
//!   jump np/in/ns/P2 ; mark ALLOW? return
//!   counter name drop/np/ns/P1 drop                selected, nothing allowed
//! ```
//! A policy chain holds its rules: a matching Allow sets [`MARK_ALLOW`] and returns, Pass
//! sets [`MARK_PASS`] and returns, Deny counts on the policy's counter and drops, Log logs
//! to NFLOG group [`LOG_GROUP`] and goes on. Selectors are named address sets
//! (`sel/<h>`, shared by equal selectors), named ports sets of `address . protocol . port`
//! (`port/<name>`), ipBlocks and nets anonymous interval sets in the rule.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use twill_api::bgp::Selector;
use twill_api::cni::Protocol;
use twill_api::policy::{
    Action, Endpoint, LabelSelector, NetworkPolicyPeer, NetworkPolicyPort, PolicyType, PortRef,
    RuleProtocol,
};
use twill_api::wiring::PodWiring;

use crate::cluster::{Cluster, Entity, GlobalPolicy, ParsedRule, Pod, Policy, PortMatch};

/// `table inet twill-policy`.
pub const FAMILY: &str = "inet";
pub const TABLE: &str = "twill-policy";
/// The dispatch maps: `ifname . ipv4_addr : verdict`.
pub const MAP_FROM_POD: &str = "from_pod";
pub const MAP_TO_POD: &str = "to_pod";
/// The interface group twill-cni gives pod interfaces (host veths, pod bridges).
pub const POD_GROUP: u32 = 0x7477;
/// The NFLOG group Log rules send to (twilld reads it).
pub const LOG_GROUP: u16 = 0x7477;
/// Packet mark bits the policy chains use to hand "allowed"/"passed" up to the profile.
pub const MARK_ALLOW: u32 = 0x0010_0000;
pub const MARK_PASS: u32 = 0x0020_0000;
/// The counter of packets from pod interfaces not in the dispatch map.
pub const COUNTER_UNKNOWN: &str = "drop/unknown";
/// The profile of a pod no policy selects in a direction (it returns: open).
pub const CHAIN_OPEN: &str = "prof/open";

/// What a named set holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SetKind {
    /// `ipv4_addr`: the pods a selector picks.
    Addr,
    /// `ipv4_addr . inet_proto . inet_service`: pods' named ports.
    NamedPort,
}

impl SetKind {
    pub fn nft_type(self) -> &'static str {
        match self {
            SetKind::Addr => "ipv4_addr",
            SetKind::NamedPort => "ipv4_addr . inet_proto . inet_service",
        }
    }
}

/// One element of a named set.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Elem {
    Addr(Ipv4Addr),
    /// Address, IP protocol number, port.
    Port(Ipv4Addr, u8, u16),
}

impl Elem {
    /// As nft writes it.
    pub fn nft(&self) -> String {
        match self {
            Elem::Addr(a) => a.to_string(),
            Elem::Port(a, p, n) => format!("{a} . {p} . {n}"),
        }
    }
}

/// A dispatch map's key: the interface packets of the pod use (host veth in l3 wiring,
/// the bridge in bridge wiring) and one of its addresses.
pub type DispatchKey = (String, Ipv4Addr);

/// A named set with its elements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Set {
    pub kind: SetKind,
    pub elements: BTreeSet<Elem>,
}

/// The whole table (minus the fixed skeleton of [`skeleton_script`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ruleset {
    pub sets: BTreeMap<String, Set>,
    /// Regular chains, each with its rules in nft syntax.
    pub chains: BTreeMap<String, Vec<String>>,
    pub counters: BTreeSet<String>,
    /// `from_pod`: key → profile chain (egress).
    pub from_pod: BTreeMap<DispatchKey, String>,
    /// `to_pod`: key → profile chain (ingress).
    pub to_pod: BTreeMap<DispatchKey, String>,
}

impl Ruleset {
    pub fn rule_count(&self) -> usize {
        self.chains.values().map(Vec::len).sum()
    }
    pub fn element_count(&self) -> usize {
        self.sets.values().map(|s| s.elements.len()).sum::<usize>()
            + self.from_pod.len()
            + self.to_pod.len()
    }
}

/// Which policy a drop counter counts for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum CounterOf {
    NetworkPolicy {
        namespace: String,
        name: String,
    },
    GlobalNetworkPolicy(String),
    /// Packets of pod interfaces whose pod is not in the dispatch map.
    UnknownInterface,
}

impl CounterOf {
    /// Reads a counter's name back (`drop/np/<ns>/<name>`, `drop/gnp/<name>`,
    /// `drop/unknown`); `None` for anything else.
    pub fn parse(counter: &str) -> Option<CounterOf> {
        if counter == COUNTER_UNKNOWN {
            return Some(CounterOf::UnknownInterface);
        }
        if let Some(rest) = counter.strip_prefix("drop/np/") {
            let (ns, name) = rest.split_once('/')?;
            return Some(CounterOf::NetworkPolicy {
                namespace: ns.into(),
                name: name.into(),
            });
        }
        counter
            .strip_prefix("drop/gnp/")
            .map(|n| CounterOf::GlobalNetworkPolicy(n.into()))
    }
}

fn dir_tag(d: PolicyType) -> &'static str {
    match d {
        PolicyType::Ingress => "in",
        PolicyType::Egress => "eg",
    }
}

/// The IP protocol number.
pub fn proto_number(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
        Protocol::Sctp => 132,
    }
}

fn proto_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Sctp => "sctp",
    }
}

/// FNV-1a 64, as 16 hex digits: stable names for sets and chains across restarts.
fn hash(text: &str) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}")
}

/// nft names are at most 255 bytes: longer ones are replaced by a hash.
fn bounded(prefix: &str, rest: &str) -> String {
    if prefix.len() + rest.len() <= 200 {
        format!("{prefix}{rest}")
    } else {
        format!("{prefix}h{}", hash(rest))
    }
}

pub fn np_chain(d: PolicyType, p: &Policy) -> String {
    bounded(
        &format!("np/{}/", dir_tag(d)),
        &format!("{}/{}", p.namespace, p.name),
    )
}
pub fn gnp_chain(d: PolicyType, g: &GlobalPolicy) -> String {
    bounded(&format!("gnp/{}/", dir_tag(d)), &g.name)
}
pub fn np_counter(p: &Policy) -> String {
    // Names are DNS labels/subdomains: never long enough to need a hash (63+1+253).
    format!("drop/np/{}/{}", p.namespace, p.name)
}
pub fn gnp_counter(g: &GlobalPolicy) -> String {
    format!("drop/gnp/{}", g.name)
}

/// The set a selector peer stands for; `name()` is stable and equal for equal selectors.
#[derive(Debug, Clone, PartialEq)]
pub enum SetDef {
    /// A NetworkPolicy peer: pods of `namespace` (podSelector alone) or of the namespaces
    /// `namespace_selector` picks, whose labels `pod_selector` picks (absent: all).
    Peer {
        namespace: Option<String>,
        pod_selector: Option<LabelSelector>,
        namespace_selector: Option<LabelSelector>,
    },
    /// A global rule's end: pods whose Calico labels `selector` picks, in namespaces
    /// `namespace_selector` picks.
    Entity {
        selector: Option<Selector>,
        namespace_selector: Option<Selector>,
    },
    /// Every pod's container port of that name: `address . protocol . port`.
    NamedPort(String),
}

impl SetDef {
    fn key(&self) -> String {
        let js = |s: &Option<LabelSelector>| match s {
            Some(s) => format!("{s:?}"),
            None => "-".into(),
        };
        let cs = |s: &Option<Selector>| match s {
            Some(s) => s.to_string(),
            None => "-".into(),
        };
        match self {
            SetDef::Peer {
                namespace,
                pod_selector,
                namespace_selector,
            } => format!(
                "peer|{}|{}|{}",
                namespace.as_deref().unwrap_or("-"),
                js(pod_selector),
                js(namespace_selector)
            ),
            SetDef::Entity {
                selector,
                namespace_selector,
            } => format!("entity|{}|{}", cs(selector), cs(namespace_selector)),
            SetDef::NamedPort(n) => format!("port|{n}"),
        }
    }

    pub fn name(&self) -> String {
        match self {
            SetDef::NamedPort(n) => format!("port/{n}"),
            _ => format!("sel/{}", hash(&self.key())),
        }
    }

    pub fn kind(&self) -> SetKind {
        match self {
            SetDef::NamedPort(_) => SetKind::NamedPort,
            _ => SetKind::Addr,
        }
    }

    /// The elements `pod` contributes (none if the set does not pick it).
    pub fn elements_of(&self, cluster: &Cluster, pod: &Pod) -> Vec<Elem> {
        self.elements_with(pod, &|ns| cluster.namespace_labels(ns))
    }

    fn elements_with(
        &self,
        pod: &Pod,
        ns_labels: &dyn Fn(&str) -> BTreeMap<String, String>,
    ) -> Vec<Elem> {
        let picked = match self {
            SetDef::Peer {
                namespace,
                pod_selector,
                namespace_selector,
            } => {
                namespace.as_ref().is_none_or(|n| n == pod.namespace())
                    && namespace_selector
                        .as_ref()
                        .is_none_or(|s| s.matches(&ns_labels(pod.namespace())))
                    && pod_selector.as_ref().is_none_or(|s| s.matches(&pod.labels))
            }
            SetDef::Entity {
                selector,
                namespace_selector,
            } => {
                selector
                    .as_ref()
                    .is_none_or(|s| s.matches(&pod.calico_labels))
                    && namespace_selector
                        .as_ref()
                        .is_none_or(|s| s.matches(&ns_labels(pod.namespace())))
            }
            SetDef::NamedPort(name) => {
                return pod
                    .endpoint
                    .named_ports
                    .iter()
                    .filter(|p| &p.name == name)
                    .flat_map(|p| {
                        pod.ips()
                            .iter()
                            .map(|ip| Elem::Port(*ip, proto_number(p.protocol), p.port))
                    })
                    .collect();
            }
        };
        if picked {
            pod.ips().iter().map(|ip| Elem::Addr(*ip)).collect()
        } else {
            Vec::new()
        }
    }
}

/// One policy's compiled form: its chains (with rules), the sets they use, its counter.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CompiledPolicy {
    pub chains: BTreeMap<String, Vec<String>>,
    pub sets: Vec<SetDef>,
    pub counter: String,
}

/// Which end of a packet a match is about.
#[derive(Clone, Copy)]
enum End {
    Source,
    Destination,
}

impl End {
    fn addr(self) -> &'static str {
        match self {
            End::Source => "ip saddr",
            End::Destination => "ip daddr",
        }
    }
    fn port(self) -> &'static str {
        match self {
            End::Source => "th sport",
            End::Destination => "th dport",
        }
    }
}

fn nets(list: &[Ipv4Net]) -> String {
    let items: Vec<String> = list.iter().map(|n| n.trunc().to_string()).collect();
    format!("{{ {} }}", items.join(", "))
}

fn allow_verdict() -> String {
    format!("meta mark set meta mark | {MARK_ALLOW:#010x} return")
}

/// The rule bodies (matches only) of one NetworkPolicy peer, as alternatives; empty: it
/// matches nothing.
fn peer_matches(
    p: &Policy,
    peer: &NetworkPolicyPeer,
    end: End,
    sets: &mut Vec<SetDef>,
) -> Vec<String> {
    if let Some(b) = &peer.ip_block {
        let mut m = format!("{} {}", end.addr(), nets(&[b.cidr]));
        if !b.except.is_empty() {
            let _ = write!(m, " {} != {}", end.addr(), nets(&b.except));
        }
        return vec![m];
    }
    if peer.pod_selector.is_none() && peer.namespace_selector.is_none() {
        return Vec::new();
    }
    let def = SetDef::Peer {
        namespace: peer
            .namespace_selector
            .is_none()
            .then(|| p.namespace.clone()),
        pod_selector: peer.pod_selector.clone().filter(|s| !s.is_empty()),
        namespace_selector: peer.namespace_selector.clone(),
    };
    let m = format!("{} @{}", end.addr(), def.name());
    sets.push(def);
    vec![m]
}

/// A NetworkPolicy port on the destination: the match, as nft writes it.
fn np_port_match(port: &NetworkPolicyPort, sets: &mut Vec<SetDef>) -> String {
    let proto = proto_name(port.protocol());
    match &port.port {
        None => format!("meta l4proto {proto}"),
        Some(PortRef::Number(n)) => match port.end_port {
            Some(e) if e > *n => format!("meta l4proto {proto} th dport {n}-{e}"),
            _ => format!("meta l4proto {proto} th dport {n}"),
        },
        Some(PortRef::Name(name)) => {
            let def = SetDef::NamedPort(name.clone());
            let m = format!(
                "meta l4proto {proto} ip daddr . meta l4proto . th dport @{}",
                def.name()
            );
            sets.push(def);
            m
        }
    }
}

/// Joins match fragments into one rule body.
fn join(parts: &[&str]) -> String {
    parts
        .iter()
        .filter(|s| !s.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join(" ")
}

/// One NetworkPolicy rule's peers and ports.
type RuleParts<'a> = (&'a [NetworkPolicyPeer], &'a [NetworkPolicyPort]);

/// A NetworkPolicy's chains: one per direction it has, each rule an alternative that
/// allows.
pub fn compile_policy(p: &Policy) -> CompiledPolicy {
    let mut out = CompiledPolicy {
        counter: np_counter(p),
        ..Default::default()
    };
    for d in &p.types {
        let (rules, end): (Vec<RuleParts<'_>>, End) = match d {
            PolicyType::Ingress => (
                p.spec
                    .ingress
                    .iter()
                    .map(|r| (r.from.as_slice(), r.ports.as_slice()))
                    .collect(),
                End::Source,
            ),
            PolicyType::Egress => (
                p.spec
                    .egress
                    .iter()
                    .map(|r| (r.to.as_slice(), r.ports.as_slice()))
                    .collect(),
                End::Destination,
            ),
        };
        let mut body = Vec::new();
        for (peers, ports) in rules {
            let peer_alts: Vec<String> = if peers.is_empty() {
                vec![String::new()]
            } else {
                peers
                    .iter()
                    .flat_map(|peer| peer_matches(p, peer, end, &mut out.sets))
                    .collect()
            };
            let port_alts: Vec<String> = if ports.is_empty() {
                vec![String::new()]
            } else {
                ports
                    .iter()
                    .map(|q| np_port_match(q, &mut out.sets))
                    .collect()
            };
            for a in &peer_alts {
                for b in &port_alts {
                    body.push(join(&[a, b, &allow_verdict()]));
                }
            }
        }
        out.chains.insert(np_chain(*d, p), body);
    }
    out
}

/// The alternatives of one end of a global rule (matches only); empty: matches nothing.
fn entity_matches(
    e: &Entity,
    nets_: (&[Ipv4Net], &[Ipv4Net]),
    end: End,
    sets: &mut Vec<SetDef>,
) -> Vec<String> {
    let mut fixed = Vec::new();
    if !nets_.0.is_empty() {
        fixed.push(format!("{} {}", end.addr(), nets(nets_.0)));
    }
    if !nets_.1.is_empty() {
        fixed.push(format!("{} != {}", end.addr(), nets(nets_.1)));
    }
    if e.selector.is_some() || e.namespace_selector.is_some() {
        let def = SetDef::Entity {
            selector: e.selector.clone(),
            namespace_selector: e.namespace_selector.clone(),
        };
        fixed.push(format!("{} @{}", end.addr(), def.name()));
        sets.push(def);
    }
    let named_port = |name: &str, sets: &mut Vec<SetDef>, neg: bool| {
        let def = SetDef::NamedPort(name.to_string());
        let m = format!(
            "{} . meta l4proto . {} {}@{}",
            end.addr(),
            end.port(),
            if neg { "!= " } else { "" },
            def.name()
        );
        sets.push(def);
        m
    };
    let ranges = |list: &[PortMatch]| -> Vec<String> {
        list.iter()
            .filter_map(|p| match p {
                PortMatch::Range(a, b) if a == b => Some(a.to_string()),
                PortMatch::Range(a, b) => Some(format!("{a}-{b}")),
                PortMatch::Named(_) => None,
            })
            .collect()
    };
    let not_ranges = ranges(&e.not_ports);
    if !not_ranges.is_empty() {
        fixed.push(format!("{} != {{ {} }}", end.port(), not_ranges.join(", ")));
    }
    for p in &e.not_ports {
        if let PortMatch::Named(n) = p {
            fixed.push(named_port(n, sets, true));
        }
    }
    let base = fixed.join(" ");
    if e.ports.is_empty() {
        return vec![base];
    }
    let mut alts = Vec::new();
    let pos = ranges(&e.ports);
    if !pos.is_empty() {
        alts.push(join(&[
            &base,
            &format!("{} {{ {} }}", end.port(), pos.join(", ")),
        ]));
    }
    for p in &e.ports {
        if let PortMatch::Named(n) = p {
            let m = named_port(n, sets, false);
            alts.push(join(&[&base, &m]));
        }
    }
    alts
}

fn rule_protocol(r: &ParsedRule) -> String {
    let ports = !(r.source.ports.is_empty()
        && r.source.not_ports.is_empty()
        && r.destination.ports.is_empty()
        && r.destination.not_ports.is_empty());
    match r.protocol() {
        Some(RuleProtocol::Ports(p)) => format!("meta l4proto {}", proto_name(p)),
        Some(RuleProtocol::Other(_)) => "meta l4proto icmp".into(),
        None if ports => "meta l4proto { tcp, udp, sctp }".into(),
        None => String::new(),
    }
}

/// The NFLOG prefix of a Log rule (at most 127 bytes: the kernel's limit).
pub fn log_prefix(g: &GlobalPolicy, d: PolicyType, index: usize) -> String {
    let mut s = format!("{} {} rule {index}", dir_tag(d), g.name);
    if s.len() > 127 {
        s = format!("{} h{} rule {index}", dir_tag(d), hash(&g.name));
    }
    s
}

/// A GlobalNetworkPolicy's chains, rules in order with their actions.
pub fn compile_global(g: &GlobalPolicy) -> CompiledPolicy {
    let mut out = CompiledPolicy {
        counter: gnp_counter(g),
        ..Default::default()
    };
    for d in &g.types {
        let chain = gnp_chain(*d, g);
        let mut body = Vec::new();
        for (i, r) in g.rules(*d).iter().enumerate() {
            let proto = rule_protocol(r);
            let src = entity_matches(
                &r.source,
                (&r.rule.source.nets, &r.rule.source.not_nets),
                End::Source,
                &mut out.sets,
            );
            let dst = entity_matches(
                &r.destination,
                (&r.rule.destination.nets, &r.rule.destination.not_nets),
                End::Destination,
                &mut out.sets,
            );
            let verdict = match r.action() {
                Action::Allow => allow_verdict(),
                Action::Pass => format!("meta mark set meta mark | {MARK_PASS:#010x} return"),
                Action::Deny => format!("counter name {} drop", out.counter),
                Action::Log => format!("log prefix \"{}\" group {LOG_GROUP}", log_prefix(g, *d, i)),
            };
            let alts: Vec<String> = src
                .iter()
                .flat_map(|s| dst.iter().map(|t| join(&[&proto, s, t])))
                .collect();
            if r.action() == Action::Log && alts.len() > 1 {
                // One log line per packet: the first alternative that matches logs and
                // returns from a sub-chain.
                let sub = format!("{chain}/r{i}");
                let rules = alts
                    .iter()
                    .map(|a| join(&[a, &verdict, "return"]))
                    .collect();
                out.chains.insert(sub.clone(), rules);
                body.push(format!("jump {sub}"));
            } else {
                body.extend(alts.iter().map(|a| join(&[a, &verdict])));
            }
        }
        out.chains.insert(chain, body);
    }
    out
}

/// The policies selecting a local pod in one direction: its profile's identity.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Profile {
    pub direction: PolicyType,
    /// Global policies' chains and counters, in evaluation order.
    pub globals: Vec<(String, String)>,
    /// NetworkPolicies' chains and counters, by name.
    pub policies: Vec<(String, String)>,
}

impl Profile {
    pub fn of(cluster: &Cluster, pod: &Pod, d: PolicyType) -> Profile {
        Profile {
            direction: d,
            globals: cluster
                .global_policies_selecting(pod, d)
                .map(|g| (gnp_chain(d, g), gnp_counter(g)))
                .collect(),
            policies: cluster
                .policies_selecting(pod, d)
                .map(|p| (np_chain(d, p), np_counter(p)))
                .collect(),
        }
    }

    /// The profile's entry chain ([`CHAIN_OPEN`] when nothing selects the pod).
    pub fn chain(&self) -> String {
        if self.globals.is_empty() && self.policies.is_empty() {
            return CHAIN_OPEN.into();
        }
        let mut sig = String::new();
        for (c, _) in self
            .globals
            .iter()
            .chain(std::iter::once(&("|".into(), String::new())))
            .chain(&self.policies)
        {
            sig.push_str(c);
            sig.push('\n');
        }
        format!("prof/{}/{}", dir_tag(self.direction), hash(&sig))
    }

    /// Its chains: the entry chain, and the namespaced tier's own chain when a global
    /// tier comes first (Pass jumps there).
    pub fn chains(&self) -> Vec<(String, Vec<String>)> {
        let entry = self.chain();
        if entry == CHAIN_OPEN {
            return Vec::new();
        }
        let clear = format!(
            "meta mark set meta mark & {:#010x}",
            !(MARK_ALLOW | MARK_PASS)
        );
        let allowed = format!("meta mark & {MARK_ALLOW:#010x} == {MARK_ALLOW:#010x} return");
        let mut k8s = Vec::new();
        for (chain, _) in &self.policies {
            k8s.push(format!("jump {chain}"));
            k8s.push(allowed.clone());
        }
        if let Some((_, counter)) = self.policies.first() {
            k8s.push(format!("counter name {counter} drop"));
        }
        if self.globals.is_empty() {
            let mut rules = vec![clear];
            rules.extend(k8s);
            return vec![(entry, rules)];
        }
        let k8s_chain = format!("{entry}/k8s");
        let mut rules = vec![clear];
        for (chain, _) in &self.globals {
            rules.push(format!("jump {chain}"));
            rules.push(allowed.clone());
            rules.push(format!(
                "meta mark & {MARK_PASS:#010x} == {MARK_PASS:#010x} goto {k8s_chain}"
            ));
        }
        let (_, first) = &self.globals[0];
        rules.push(format!("counter name {first} drop"));
        vec![(entry, rules), (k8s_chain, k8s)]
    }
}

/// The interface a local pod's packets carry in the forward hook: its host veth in l3
/// wiring; in bridge wiring its bridge, from `bridges` (host veth → bridge, which the
/// caller reads from the kernel), or `None` if unknown (the pod is then left out).
pub fn dispatch_iface(ep: &Endpoint, bridges: &BTreeMap<String, String>) -> Option<String> {
    match ep.wiring {
        PodWiring::L3 => Some(ep.host_veth.clone()),
        PodWiring::Bridge => bridges.get(&ep.host_veth).cloned(),
    }
}

/// The whole table for `node`, from scratch (the reference the incremental
/// [`crate::compile::Compiler`]'s result equals).
pub fn compile(cluster: &Cluster, node: &str, bridges: &BTreeMap<String, String>) -> Ruleset {
    let mut rs = Ruleset::default();
    rs.counters.insert(COUNTER_UNKNOWN.into());
    rs.chains.insert(CHAIN_OPEN.into(), Vec::new());
    let mut defs: BTreeMap<String, SetDef> = BTreeMap::new();
    let mut add_policy = |rs: &mut Ruleset, c: CompiledPolicy| {
        rs.counters.insert(c.counter);
        rs.chains.extend(c.chains);
        for d in c.sets {
            defs.insert(d.name(), d);
        }
    };
    for p in cluster.policies() {
        add_policy(&mut rs, compile_policy(p));
    }
    for g in cluster.global_policies() {
        add_policy(&mut rs, compile_global(g));
    }
    for (name, def) in &defs {
        let elements = cluster
            .pods()
            .flat_map(|pod| def.elements_of(cluster, pod))
            .collect();
        rs.sets.insert(
            name.clone(),
            Set {
                kind: def.kind(),
                elements,
            },
        );
    }
    for pod in cluster.pods().filter(|p| p.node() == node) {
        let Some(iface) = dispatch_iface(&pod.endpoint, bridges) else {
            continue;
        };
        for d in [PolicyType::Egress, PolicyType::Ingress] {
            let prof = Profile::of(cluster, pod, d);
            let entry = prof.chain();
            rs.chains.extend(prof.chains());
            let map = match d {
                PolicyType::Egress => &mut rs.from_pod,
                PolicyType::Ingress => &mut rs.to_pod,
            };
            for ip in pod.ips() {
                map.insert((iface.clone(), *ip), entry.clone());
            }
        }
    }
    rs
}
