//! The kernel's routing table of a namespace, read with `ip -j route`.

use twill_testkit::sh;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KRoute {
    /// Always with a length: "10.244.1.0/24", "10.244.1.1/32", "default".
    pub dst: String,
    /// One per next hop (more than one: a multipath route).
    pub gateways: Vec<String>,
    /// As `ip` names it: "bird", "bgp", "kernel", a number for unnamed ones.
    pub protocol: String,
    pub kind: String,
}

/// Table main of `ns`, IPv4 or IPv6.
pub fn routes(ns: &str, v6: bool) -> Vec<KRoute> {
    let fam = if v6 { "-6" } else { "-4" };
    let out = sh(&["ip", "-j", fam, "-n", ns, "route", "show", "table", "main"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let mut routes = Vec::new();
    for r in v.as_array().into_iter().flatten() {
        let mut dst = r["dst"].as_str().unwrap_or("").to_string();
        if dst != "default" && !dst.contains('/') {
            dst.push_str(if v6 { "/128" } else { "/32" });
        }
        let mut gateways: Vec<String> = r["gateway"]
            .as_str()
            .map(String::from)
            .into_iter()
            .collect();
        for nh in r["nexthops"].as_array().into_iter().flatten() {
            if let Some(g) = nh["gateway"].as_str() {
                gateways.push(g.to_string());
            }
        }
        let protocol = match &r["protocol"] {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        routes.push(KRoute {
            dst,
            gateways,
            protocol,
            kind: r["type"].as_str().unwrap_or("unicast").to_string(),
        });
    }
    routes
}

/// The route to exactly `dst` (with its length), if the table has one.
pub fn route(ns: &str, dst: &str) -> Option<KRoute> {
    routes(ns, dst.contains(':'))
        .into_iter()
        .find(|r| r.dst == dst)
}

/// How many routes of table main carry `protocol`.
pub fn count_protocol(ns: &str, v6: bool, protocol: &str) -> usize {
    routes(ns, v6)
        .iter()
        .filter(|r| r.protocol == protocol)
        .count()
}
