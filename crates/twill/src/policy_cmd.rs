//! `twill policy`: network policy from the operator's side. `explain SRC DST PORT/PROTO`
//! says whether a flow passes and which policy and rule decided, per direction, from
//! the model ([`twill_policy::model::evaluate`]) over what the store holds now.
//! (`twill policy log`, in its own module, adds a variant to [`PolicyCommand`].)
//!
//! The pure parts: [`parse_end`], [`parse_port`], [`flow_for`] and [`render`]; only
//! [`load_cluster`] reads the store. `twill lab explain` uses the same pieces.

use crate::store_args::StoreArgs;
use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use serde::Serialize;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use twill_api::cni::Protocol;
use twill_api::policy::{Action, PolicyType, PortRef};
use twill_policy::cluster::{Cluster, PodId, PREFIXES};
use twill_policy::model::{
    evaluate, Decision, Destination, End, Flow, Reason, RuleRef, Source, Verdict,
};
use twill_store::{Store, PREFIX};

#[derive(Args)]
pub struct PolicyArgs {
    #[command(subcommand)]
    pub command: PolicyCommand,
}

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Whether a flow passes, and which policy and rule decide it (egress at the source
    /// pod, ingress at the destination pod), from the policies in the store.
    Explain(ExplainArgs),
    /// What GlobalNetworkPolicy Log rules logged on a node (from its twilld), `-f` to follow.
    Log(crate::policy_log::LogArgs),
}

#[derive(Args, Clone)]
pub struct ExplainArgs {
    /// Where the flow comes from: a pod as NAMESPACE/NAME, an address (a pod's address is
    /// that pod), or `host` (the destination's own node).
    pub src: String,
    /// Where it goes: a pod as NAMESPACE/NAME, or an address.
    pub dst: String,
    /// The destination port and protocol, e.g. 80/tcp, 53/udp, or a named port of the
    /// destination pod (serve-80-tcp/tcp); the protocol defaults to tcp.
    pub port: String,
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    pub output: Output,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

pub fn run(args: PolicyArgs, store: &StoreArgs) -> anyhow::Result<i32> {
    match args.command {
        PolicyCommand::Explain(a) => crate::with_store(store, |s| run_explain(a, s)),
        PolicyCommand::Log(a) => crate::policy_log::run(a),
    }
}

fn run_explain(a: ExplainArgs, store: &dyn Store) -> anyhow::Result<i32> {
    let cluster = load_cluster(store)?;
    let flow = flow_for(&cluster, &a.src, &a.dst, &a.port)?;
    let decision = evaluate(&cluster, &flow);
    let problems = problems(&cluster);
    match a.output {
        Output::Text => print!("{}", render(&cluster, &decision, &problems)),
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&Explained {
                decision: &decision,
                problems
            })?
        ),
    }
    Ok(0)
}

/// What `-o json` prints: the decision and the store entries the model had to leave out.
#[derive(Serialize)]
pub struct Explained<'a> {
    #[serde(flatten)]
    pub decision: &'a Decision,
    pub problems: Vec<String>,
}

/// The cluster as policy sees it, from every key under the policy prefixes.
pub fn load_cluster(store: &dyn Store) -> anyhow::Result<Cluster> {
    let mut cluster = Cluster::new();
    for prefix in PREFIXES {
        let (kvs, _) = store.list(&format!("{PREFIX}{prefix}"))?;
        for kv in kvs {
            cluster.apply(&kv.key, Some(&kv.value));
        }
    }
    Ok(cluster)
}

/// Each entry left out, as "key: why".
pub fn problems(cluster: &Cluster) -> Vec<String> {
    cluster.problems().map(|p| p.to_string()).collect()
}

/// One end as the user wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndArg {
    Pod(PodId),
    Ip(Ipv4Addr),
    Host,
}

/// `ns/pod`, an IPv4 address, or `host`. Pure.
pub fn parse_end(what: &str, text: &str) -> anyhow::Result<EndArg> {
    let t = text.trim();
    if t == "host" {
        return Ok(EndArg::Host);
    }
    if let Ok(ip) = t.parse::<Ipv4Addr>() {
        return Ok(EndArg::Ip(ip));
    }
    match t.split_once('/') {
        Some((ns, pod)) if !ns.is_empty() && !pod.is_empty() && !pod.contains('/') => {
            Ok(EndArg::Pod(PodId::new(ns, pod)))
        }
        _ => bail!(
            "{what} {text:?}: give a pod as NAMESPACE/NAME (e.g. default/web), an IPv4 address, or host"
        ),
    }
}

/// `80/tcp`, `53/UDP`, `80` (tcp), `serve-80-tcp/tcp` (a named port). Pure.
pub fn parse_port(text: &str) -> anyhow::Result<(PortRef, Protocol)> {
    let (port, proto) = text.trim().split_once('/').unwrap_or((text.trim(), "tcp"));
    let protocol = match proto.to_ascii_lowercase().as_str() {
        "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        "sctp" => Protocol::Sctp,
        other => {
            bail!("port {text:?}: protocol {other:?} is none of tcp, udp, sctp (write e.g. 80/tcp)")
        }
    };
    let port = if port.bytes().all(|b| b.is_ascii_digit()) && !port.is_empty() {
        PortRef::Number(
            port.parse()
                .with_context(|| format!("port {text:?}: {port} is not a port (1-65535)"))?,
        )
    } else if !port.is_empty()
        && port
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        PortRef::Name(port.to_string())
    } else {
        bail!("port {text:?}: write PORT/PROTO, e.g. 80/tcp or a named port serve-80-tcp/tcp");
    };
    Ok((port, protocol))
}

/// The flow the user means, checked against the cluster: pods named must be in it, a
/// named port must be the destination pod's. Pure.
pub fn flow_for(cluster: &Cluster, src: &str, dst: &str, port: &str) -> anyhow::Result<Flow> {
    let src = parse_end("source", src)?;
    let dst = parse_end("destination", dst)?;
    let (port, protocol) = parse_port(port)?;
    for end in [&src, &dst] {
        if let EndArg::Pod(id) = end {
            if cluster.pod(&id.namespace, &id.name).is_none() {
                bail!(
                    "pod {id} is not in the store (no endpoints/<node>/{}/{} key): is it running, \
                     and is the node's twilld up? `twill get endpoints` lists the pods there are",
                    id.namespace,
                    id.name
                );
            }
        }
    }
    let destination = match dst {
        EndArg::Pod(id) => Destination::Pod(id),
        EndArg::Ip(ip) => Destination::Ip(ip),
        EndArg::Host => bail!("destination host: give the pod or address the flow goes to (host is a source only: the destination's own node)"),
    };
    let source = match src {
        EndArg::Pod(id) => Source::Pod(id),
        EndArg::Ip(ip) => Source::Ip(ip),
        EndArg::Host => Source::Host,
    };
    let port = match port {
        PortRef::Number(0) => bail!("port 0 is no port: give 1-65535"),
        PortRef::Number(n) => n,
        PortRef::Name(name) => {
            let pod = match &destination {
                Destination::Pod(id) => cluster.pod(&id.namespace, &id.name),
                Destination::Ip(ip) => cluster.pod_by_ip(*ip),
            };
            let Some(pod) = pod else {
                bail!("named port {name}: the destination is no pod, so it has no named ports; give a number");
            };
            pod.named_port(&name, protocol).with_context(|| {
                let names: Vec<String> = pod
                    .endpoint
                    .named_ports
                    .iter()
                    .map(|p| format!("{}/{}", p.name, p.protocol))
                    .collect();
                format!(
                    "pod {} has no {protocol} port named {name} (its named ports: {})",
                    pod.id(),
                    if names.is_empty() {
                        "none".to_string()
                    } else {
                        names.join(", ")
                    }
                )
            })?
        }
    };
    Ok(Flow::new(source, destination, protocol, port))
}

fn end_text(e: &End) -> String {
    match e {
        End::Pod {
            pod,
            node,
            ip: Some(ip),
        } => format!("pod {pod} ({ip}, node {node})"),
        End::Pod {
            pod,
            node,
            ip: None,
        } => format!("pod {pod} (no address, node {node})"),
        other => other.to_string(),
    }
}

fn short(e: &End) -> String {
    match e {
        End::Pod { pod, .. } | End::UnknownPod { pod } => pod.clone(),
        End::Outside { ip } => ip.to_string(),
        End::Host => "host".into(),
    }
}

/// What `explain` prints: the verdict first, then each direction with the policy and
/// rule that decided and the rule itself, then entries the model left out. Pure.
pub fn render(cluster: &Cluster, d: &Decision, problems: &[String]) -> String {
    let mut s = String::new();
    let verdict = if d.allowed { "ALLOWED" } else { "DENIED" };
    let _ = writeln!(
        s,
        "{} -> {} {}/{}: {verdict}",
        short(&d.source),
        short(&d.destination),
        d.port,
        d.protocol
    );
    let _ = writeln!(s, "  from {}", end_text(&d.source));
    let _ = writeln!(s, "  to   {}", end_text(&d.destination));
    match (&d.egress, &d.source) {
        (Some(v), _) => render_verdict(&mut s, cluster, v, d),
        (None, End::Host) => {}
        (None, End::Outside { .. }) => {
            let _ = writeln!(s, "  egress: not judged (the source is not a pod)");
        }
        (None, _) => {}
    }
    match &d.ingress {
        Some(v) => render_verdict(&mut s, cluster, v, d),
        None => {
            let _ = writeln!(s, "  ingress: not judged (the destination is not a pod)");
        }
    }
    let logged: Vec<String> = d.logged().map(|r| r.to_string()).collect();
    if !logged.is_empty() {
        let _ = writeln!(
            s,
            "  logged by {} (see twill policy log)",
            logged.join(", ")
        );
    }
    if !problems.is_empty() {
        let _ =
            writeln!(
            s,
            "warning: {} store entr{} left out of the model (as if absent; fix or delete them):",
            problems.len(),
            if problems.len() == 1 { "y is" } else { "ies are" }
        );
        for p in problems {
            let _ = writeln!(s, "  {p}");
        }
    }
    s
}

fn dir_word(d: PolicyType) -> &'static str {
    match d {
        PolicyType::Ingress => "ingress",
        PolicyType::Egress => "egress",
    }
}

fn render_verdict(s: &mut String, cluster: &Cluster, v: &Verdict, d: &Decision) {
    let dir = dir_word(v.direction);
    let state = if v.allowed { "allowed" } else { "DENIED" };
    let _ = writeln!(s, "  {dir} at {}: {state}", v.pod);
    let peer = match v.direction {
        PolicyType::Ingress => format!("from {}", short(&d.source)),
        PolicyType::Egress => format!("to {}", short(&d.destination)),
    };
    let flow = format!("{}/{} {peer}", d.port, d.protocol);
    if !v.global_applied.is_empty() {
        let _ = writeln!(
            s,
            "    global tier: {} appl{}",
            v.global_applied.join(", "),
            if v.global_applied.len() == 1 {
                "ies"
            } else {
                "y"
            }
        );
    }
    for r in &v.logged {
        let _ = writeln!(
            s,
            "    logged by GlobalNetworkPolicy {} {dir} rule {} (Log, then on){}",
            r.policy,
            r.rule,
            global_rule_text(cluster, r, v.direction)
        );
    }
    if let Some(r) = &v.passed {
        let _ = writeln!(
            s,
            "    passed by GlobalNetworkPolicy {} {dir} rule {} (Pass): the NetworkPolicies decide{}",
            r.policy,
            r.rule,
            global_rule_text(cluster, r, v.direction)
        );
    }
    let _ = match &v.reason {
        Reason::FromOwnNode => writeln!(s, "    from the pod's own node: always allowed (kubelet probes)"),
        Reason::ToItself => writeln!(s, "    a pod to itself: the packet never leaves the pod, no policy sees it"),
        Reason::UnknownPod { pod } => writeln!(s, "    pod {pod} is not in the store: nothing to judge it by"),
        Reason::GlobalRule { rule, action } => writeln!(
            s,
            "    {} by GlobalNetworkPolicy {} {dir} rule {} ({}){}",
            if *action == Action::Allow { "allowed" } else { "denied" },
            rule.policy,
            rule.rule,
            if *action == Action::Allow { "Allow" } else { "Deny" },
            global_rule_text(cluster, rule, v.direction)
        ),
        Reason::EndOfGlobalTier { applied } => writeln!(
            s,
            "    denied at the end of the global tier: {} applied to {} and no rule of {} matched {flow} \
             (add an Allow, or a Pass to let the NetworkPolicies decide)",
            applied.join(", "),
            v.pod,
            if applied.len() == 1 { "it" } else { "theirs" }
        ),
        Reason::Open => writeln!(s, "    no NetworkPolicy of its namespace selects {} for {dir}: open", v.pod),
        Reason::AllowedBy { selected_by, rules } => {
            let _ = writeln!(s, "    selected by {}", selected_by.join(", "));
            for (i, r) in rules.iter().enumerate() {
                let _ = writeln!(
                    s,
                    "    {} by NetworkPolicy {} {dir} rule {}{}",
                    if i == 0 { "allowed" } else { "also allowed" },
                    r.policy,
                    r.rule,
                    policy_rule_text(cluster, r, v.direction)
                );
            }
            Ok(())
        }
        Reason::NoRuleAllows { selected_by } => writeln!(
            s,
            "    selected by {}, and no rule of {} allows {flow}: denied \
             (NetworkPolicies only allow; add a rule that allows it)",
            selected_by.join(", "),
            if selected_by.len() == 1 { "it" } else { "theirs" }
        ),
    };
}

fn global_rule_text(cluster: &Cluster, r: &RuleRef, dir: PolicyType) -> String {
    cluster
        .global_policy(&r.policy)
        .and_then(|g| g.rules(dir).get(r.rule))
        .and_then(|rule| serde_json::to_string(&rule.rule).ok())
        .map(|t| format!(": {t}"))
        .unwrap_or_default()
}

fn policy_rule_text(cluster: &Cluster, r: &RuleRef, dir: PolicyType) -> String {
    let Some((ns, name)) = r.policy.split_once('/') else {
        return String::new();
    };
    let Some(p) = cluster.policy(ns, name) else {
        return String::new();
    };
    let text = match dir {
        PolicyType::Ingress => p
            .spec
            .ingress
            .get(r.rule)
            .and_then(|x| serde_json::to_string(x).ok()),
        PolicyType::Egress => p
            .spec
            .egress
            .get(r.rule)
            .and_then(|x| serde_json::to_string(x).ok()),
    };
    text.map(|t| format!(": {t}")).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cluster() -> Cluster {
        let mut c = Cluster::new();
        for (ns, pod, ip) in [
            ("x", "a", "10.244.1.2"),
            ("x", "b", "10.244.1.3"),
            ("y", "a", "10.244.2.2"),
        ] {
            c.put(
                &twill_api::policy::endpoint_key("n1", ns, pod),
                &json!({"namespace": ns, "pod": pod, "node": "n1", "containerID": "c", "ifname": "eth0",
                        "hostVeth": "twlv", "ips": [ip], "wiring": "bridge", "labels": {"pod": pod},
                        "namedPorts": [{"name": "serve-81-udp", "port": 81, "protocol": "UDP"}]}),
            );
        }
        c
    }

    #[test]
    fn ends_and_ports_parse_or_say_how_to_write_them() {
        assert_eq!(
            parse_end("source", "x/a").unwrap(),
            EndArg::Pod(PodId::new("x", "a"))
        );
        assert_eq!(
            parse_end("source", "10.0.0.1").unwrap(),
            EndArg::Ip("10.0.0.1".parse().unwrap())
        );
        assert_eq!(parse_end("source", "host").unwrap(), EndArg::Host);
        assert!(parse_end("source", "x")
            .unwrap_err()
            .to_string()
            .contains("NAMESPACE/NAME"));
        assert!(parse_end("source", "x/a/b").is_err());
        assert_eq!(
            parse_port("80/tcp").unwrap(),
            (PortRef::Number(80), Protocol::Tcp)
        );
        assert_eq!(
            parse_port("53/UDP").unwrap(),
            (PortRef::Number(53), Protocol::Udp)
        );
        assert_eq!(
            parse_port("8080").unwrap(),
            (PortRef::Number(8080), Protocol::Tcp)
        );
        assert_eq!(
            parse_port("serve-81-udp/udp").unwrap(),
            (PortRef::Name("serve-81-udp".into()), Protocol::Udp)
        );
        assert!(parse_port("80/icmp")
            .unwrap_err()
            .to_string()
            .contains("tcp, udp, sctp"));
        assert!(parse_port("99999/tcp").is_err());
        assert!(parse_port("Web/tcp").is_err());
    }

    #[test]
    fn flows_name_known_pods_and_resolve_named_ports_on_the_destination() {
        let c = cluster();
        let f = flow_for(&c, "x/a", "y/a", "serve-81-udp/udp").unwrap();
        assert_eq!((f.port, f.protocol), (81, Protocol::Udp));
        let e = flow_for(&c, "x/a", "y/a", "serve-81-udp/tcp")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no tcp port named serve-81-udp") && e.contains("serve-81-udp/udp"),
            "{e}"
        );
        let e = flow_for(&c, "x/ghost", "y/a", "80/tcp")
            .unwrap_err()
            .to_string();
        assert!(e.contains("x/ghost is not in the store"), "{e}");
        assert!(flow_for(&c, "x/a", "host", "80").is_err());
        assert!(flow_for(&c, "x/a", "198.51.100.1", "serve-81-udp/udp").is_err());
        let f = flow_for(&c, "host", "10.244.1.3", "80").unwrap();
        assert_eq!(f.source, Source::Host);
    }

    #[test]
    fn the_text_names_the_policy_the_rule_and_shows_it() {
        let mut c = cluster();
        c.put(
            "networkpolicies/x/only-b",
            &json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [
                {"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}], "ports": [{"port": 80}]}
            ]}),
        );
        c.put(
            "globalnetworkpolicies/log-all",
            &json!({"order": 1, "ingress": [{"action": "Log"}, {"action": "Pass"}]}),
        );
        c.apply("networkpolicies/x/broken", Some(b"{"));
        let problems = problems(&c);
        let d = evaluate(&c, &flow_for(&c, "x/b", "x/a", "80/tcp").unwrap());
        let t = render(&c, &d, &problems);
        assert!(t.starts_with("x/b -> x/a 80/tcp: ALLOWED\n"), "{t}");
        assert!(t.contains("egress at x/b: allowed\n    no NetworkPolicy of its namespace selects x/b for egress: open"), "{t}");
        assert!(
            t.contains("passed by GlobalNetworkPolicy log-all ingress rule 1 (Pass)"),
            "{t}"
        );
        assert!(
            t.contains(
                "allowed by NetworkPolicy x/only-b ingress rule 0: {\"from\":[{\"podSelector\""
            ),
            "{t}"
        );
        assert!(t.contains("logged by log-all rule 0"), "{t}");
        assert!(
            t.contains("networkpolicies/x/broken: not a readable"),
            "{t}"
        );

        let d = evaluate(&c, &flow_for(&c, "y/a", "x/a", "80/tcp").unwrap());
        let t = render(&c, &d, &[]);
        assert!(t.starts_with("y/a -> x/a 80/tcp: DENIED\n"), "{t}");
        assert!(t.contains("ingress at x/a: DENIED"), "{t}");
        assert!(
            t.contains("selected by x/only-b, and no rule of it allows 80/tcp from y/a: denied"),
            "{t}"
        );

        let d = evaluate(&c, &flow_for(&c, "198.51.100.7", "x/b", "81/udp").unwrap());
        let t = render(&c, &d, &[]);
        assert!(
            t.contains("egress: not judged (the source is not a pod)"),
            "{t}"
        );

        c.put(
            "globalnetworkpolicies/log-all",
            &json!({"order": 1, "ingress": [{"action": "Log"}]}),
        );
        let d = evaluate(&c, &flow_for(&c, "x/b", "x/a", "80/tcp").unwrap());
        let t = render(&c, &d, &[]);
        assert!(
            t.contains("denied at the end of the global tier: log-all applied to x/a"),
            "{t}"
        );

        let j = serde_json::to_value(Explained {
            decision: &d,
            problems: vec![],
        })
        .unwrap();
        assert_eq!(j["allowed"], json!(false));
        assert_eq!(j["ingress"]["reason"]["kind"], json!("endOfGlobalTier"));
        assert_eq!(
            j["source"],
            json!({"kind": "pod", "pod": "x/b", "node": "n1", "ip": "10.244.1.3"})
        );
    }
}
