//! The policy benchmark's cluster, pure: remote endpoints (store entries of nodes that do
//! not run, as another node's agent would have published them), NetworkPolicies that
//! select the benchmark node's real pods and name peers by label (so every policy gives
//! the node rules and every peer selector a set), the changes timed, and the report.
//!
//! Layout, for `pods` endpoints and `policies` policies over [`NAMESPACES`] namespaces and
//! [`APPS`] app labels: endpoint i is `ns<i % 10>/p<i>` with `app=a<(i / 10) % 100>`
//! (so every namespace holds every app); policy k is `ns<k % 10>/p<k>`, selecting
//! `app=a<s>` with s = `(k / 10) % 100`, allowing ingress from `app=a<(7s + 1) % 100>` of
//! its namespace on TCP port `1000 + k % 500`. The node's real pods are endpoints 0
//! (`ns0`, `app=a0`, selected by policy 0) and 10 (`ns0`, `app=a1`, policy 0's peer).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde_json::{json, Value};
use twill_api::policy::{endpoint_key, network_policy_key, Endpoint};
use twill_api::wiring::PodWiring;

pub const NAMESPACES: usize = 10;
pub const APPS: usize = 100;
/// Remote endpoints per (fake) remote node.
pub const PODS_PER_REMOTE_NODE: usize = 250;

pub fn namespace(i: usize) -> String {
    format!("ns{}", i % NAMESPACES)
}

/// `a<n % 100>`.
pub fn app(n: usize) -> String {
    format!("a{}", n % APPS)
}

/// The labels of endpoint `i`.
pub fn labels(i: usize) -> BTreeMap<String, String> {
    BTreeMap::from([("app".to_string(), app(i / NAMESPACES))])
}

/// The endpoints the benchmark node runs as real pods (twill-cni ADD in a namespace):
/// policy 0's selected pod and its peer.
pub const REAL_PODS: [usize; 2] = [0, 10];

/// `count` addresses of `cluster` outside every block in `avoid` (the real nodes'),
/// skipping network and broadcast-looking .0 and .255.
pub fn addresses(cluster: Ipv4Net, avoid: &[Ipv4Net], count: usize) -> Vec<Ipv4Addr> {
    cluster
        .hosts()
        .filter(|a| {
            let last = a.octets()[3];
            last != 0 && last != 255 && !avoid.iter().any(|b| b.contains(a))
        })
        .take(count)
        .collect()
}

/// Endpoint `i` on remote node `node` at `ip`, as its agent would publish it.
pub fn remote_endpoint(i: usize, node: &str, ip: Ipv4Addr) -> (String, Endpoint) {
    let ns = namespace(i);
    let pod = format!("p{i}");
    let ep = Endpoint {
        namespace: ns.clone(),
        pod: pod.clone(),
        node: node.to_string(),
        container_id: format!("c{i}"),
        ifname: "eth0".into(),
        host_veth: format!("veth{i:08x}"),
        ips: vec![ip],
        mac: None,
        wiring: PodWiring::Bridge,
        labels: labels(i),
        named_ports: Vec::new(),
    };
    (endpoint_key(node, &ns, &pod), ep)
}

/// The remote endpoints `first..first + count` with their addresses, spread over remote
/// nodes `rm<k>`.
/// The endpoints of a cluster of `pods` but the [`REAL_PODS`], at `ips` in turn (as
/// many as given), spread over remote nodes `rm<k>`.
pub fn remote_endpoints(pods: usize, ips: &[Ipv4Addr]) -> Vec<(String, Endpoint)> {
    (0..pods)
        .filter(|i| !REAL_PODS.contains(i))
        .zip(ips)
        .map(|(i, ip)| remote_endpoint(i, &format!("rm{}", i / PODS_PER_REMOTE_NODE), *ip))
        .collect()
}

/// The TCP port policy `k` allows.
pub fn policy_port(k: usize) -> u16 {
    1000 + (k % 500) as u16
}

/// NetworkPolicy `k` (its key and spec as the store holds it); `port` overrides its port.
pub fn policy(k: usize, port: Option<u16>) -> (String, Value) {
    let ns = namespace(k);
    let selected = (k / NAMESPACES) % APPS;
    let spec = json!({
        "podSelector": {"matchLabels": {"app": app(selected)}},
        "policyTypes": ["Ingress"],
        "ingress": [{
            "from": [{"podSelector": {"matchLabels": {"app": app(7 * selected + 1)}}}],
            "ports": [{"protocol": "TCP", "port": port.unwrap_or_else(|| policy_port(k))}],
        }],
    });
    (network_policy_key(&ns, &format!("p{k}")), spec)
}

/// The port a round's policy change writes: unique per round and never a generated one,
/// so policy 0's chain comparing with it marks the change.
pub fn marker_port(round: usize) -> u16 {
    40_000 + round as u16 * 7
}

/// The labels of a pod of `ns0` that joins policy 0's peer set (`app=a1`; policy 0
/// selects the node's real pod `ns0/p0`).
pub fn joining_labels() -> BTreeMap<String, String> {
    BTreeMap::from([("app".to_string(), app(1))])
}

/// Medians and ratios of the report. Pure.
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

/// The first quartile, the median and the third quartile of `v` (linear interpolation
/// between order statistics, as numpy's default), NaN for an empty one. Pure.
pub fn quartiles(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let q = |p: f64| -> f64 {
        if s.is_empty() {
            return f64::NAN;
        }
        let h = p * (s.len() - 1) as f64;
        let (lo, hi) = (h.floor() as usize, h.ceil() as usize);
        s[lo] + (h - lo as f64) * (s[hi] - s[lo])
    };
    (q(0.25), q(0.5), q(0.75))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layout_is_as_documented() {
        assert_eq!(namespace(13), "ns3");
        assert_eq!(labels(1234)["app"], "a23");
        assert_eq!(labels(10)["app"], "a1");
        let (k, spec) = policy(0, None);
        assert_eq!(k, "networkpolicies/ns0/p0");
        assert_eq!(spec["podSelector"]["matchLabels"]["app"], "a0");
        // Policy 0 selects the real pod 0 and takes its peers from a1 (real pod 10).
        assert_eq!(
            spec["ingress"][0]["from"][0]["podSelector"]["matchLabels"]["app"],
            "a1"
        );
        assert_eq!(spec["ingress"][0]["ports"][0]["port"], 1000);
        let (k, spec) = policy(123, None);
        assert_eq!(k, "networkpolicies/ns3/p123");
        assert_eq!(spec["podSelector"]["matchLabels"]["app"], "a12");
        assert_eq!(
            spec["ingress"][0]["from"][0]["podSelector"]["matchLabels"]["app"],
            "a85"
        );
        let (_, changed) = policy(0, Some(marker_port(3)));
        assert_eq!(changed["ingress"][0]["ports"][0]["port"], 40021);
        let parsed: twill_api::policy::NetworkPolicySpec = serde_json::from_value(spec).unwrap();
        assert_eq!(parsed.ingress.len(), 1);
        assert_eq!(joining_labels()["app"], "a1");
    }

    #[test]
    fn addresses_avoid_the_real_blocks() {
        let cluster: Ipv4Net = "10.244.0.0/16".parse().unwrap();
        let avoid: Vec<Ipv4Net> = vec!["10.244.0.0/24".parse().unwrap()];
        let a = addresses(cluster, &avoid, 300);
        assert_eq!(a.len(), 300);
        assert_eq!(a[0], Ipv4Addr::new(10, 244, 1, 1));
        assert_eq!(a[254], Ipv4Addr::new(10, 244, 2, 1));
        assert!(a.iter().all(|x| !avoid[0].contains(x)));
        let eps = remote_endpoints(300, &a);
        assert_eq!(eps.len(), 298);
        assert_eq!(eps[0].0, "endpoints/rm0/ns1/p1");
        assert_eq!(eps[0].1.ips, vec![Ipv4Addr::new(10, 244, 1, 1)]);
        assert!(eps.iter().all(|(k, _)| k != "endpoints/rm0/ns0/p10"));
        assert_eq!(eps[248].0, "endpoints/rm1/ns0/p250");
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn quartiles_interpolate() {
        assert_eq!(quartiles(&[5.0, 1.0, 3.0, 2.0, 4.0]), (2.0, 3.0, 4.0));
        assert_eq!(quartiles(&[4.0, 1.0, 2.0, 3.0]), (1.75, 2.5, 3.25));
        assert_eq!(quartiles(&[7.0]), (7.0, 7.0, 7.0));
        assert!(quartiles(&[]).1.is_nan());
        let v = [0.9, 1.0, 1.1, 0.95, 1.05, 2.0];
        assert_eq!(quartiles(&v).1, median(&v));
    }
}
