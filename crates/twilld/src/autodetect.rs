//! Node IP autodetection, Calico's methods (`IP_AUTODETECTION_METHOD`). Pure: the caller
//! reads the interfaces (and, for `can-reach`, asks the kernel for a route; see
//! [`crate::netinfo`]) and this module picks the address and says why.
//!
//! Interface regexes match the WHOLE name (`eth.*` matches eth0, not veth0), unlike
//! Calico, where they match anywhere in the name.

use ipnet::Ipv4Net;
use regex_lite::Regex;
use std::fmt;
use std::net::Ipv4Addr;

/// An interface as autodetection sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub index: u32,
    pub name: String,
    /// IFLA_INFO_KIND ("bridge", "veth", …); None for physical devices and lo.
    pub kind: Option<String>,
    pub up: bool,
    pub addrs: Vec<Ipv4Net>,
}

/// The kernel's answer to "how would you reach `dst`" (RTM_GETROUTE).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteAnswer {
    pub dst: Ipv4Addr,
    /// The preferred source address (RTA_PREFSRC).
    pub src: Option<Ipv4Addr>,
    pub oif: Option<u32>,
}

/// How to find the node IP (the `ipAutodetection` setting).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    /// The first address of the first interface not made by container tools.
    FirstFound,
    /// The first address of the first interface matching one of the regexes.
    Interface(Vec<String>),
    /// Like first-found, but skipping interfaces matching these regexes instead of the
    /// built-in list.
    SkipInterface(Vec<String>),
    /// The first address inside one of the CIDRs.
    Cidr(Vec<Ipv4Net>),
    /// The source address the kernel picks to reach this address.
    CanReach(Ipv4Addr),
}

/// Names first-found skips: loopback, and devices made by container runtimes, CNI plugins,
/// other pod networks, libvirt, kube-proxy and Twill itself.
pub const FIRST_FOUND_SKIPS: &[&str] = &[
    "lo",
    "docker.*",
    "cni.*",
    "veth.*",
    "twl.*",
    "cali.*",
    "flannel.*",
    "vxlan.*",
    "tunl.*",
    "kube-ipvs.*",
    "kube-bridge",
    "virbr.*",
    "br-.*",
    "cbr.*",
    "lxcbr.*",
    "lxdbr.*",
    "podman.*",
    "nodelocaldns.*",
    "weave",
    "dummy.*",
];

impl Method {
    /// Parses Calico's syntax: `first-found`, `interface=REGEX,...`,
    /// `skip-interface=REGEX,...`, `cidr=CIDR,...`, `can-reach=ADDR`.
    pub fn parse(s: &str) -> Result<Method, String> {
        let s = s.trim();
        if s == "first-found" {
            return Ok(Method::FirstFound);
        }
        let Some((name, value)) = s.split_once('=') else {
            return Err(format!(
                "{s:?} is not a method; use first-found, interface=REGEX,..., skip-interface=REGEX,..., cidr=CIDR,... or can-reach=ADDR (a fixed address goes in nodeIP)"
            ));
        };
        let list = || -> Vec<String> {
            value
                .split(',')
                .map(|p| p.trim().to_string())
                .filter(|p| !p.is_empty())
                .collect()
        };
        let regexes = |what: &str| -> Result<Vec<String>, String> {
            let pats = list();
            if pats.is_empty() {
                return Err(format!(
                    "{what}= needs at least one regex, e.g. {what}=eth.*"
                ));
            }
            for p in &pats {
                anchored(p).map_err(|e| format!("{what}={p}: not a valid regex: {e}"))?;
            }
            Ok(pats)
        };
        match name.trim() {
            "interface" => Ok(Method::Interface(regexes("interface")?)),
            "skip-interface" => Ok(Method::SkipInterface(regexes("skip-interface")?)),
            "cidr" => {
                let mut nets = Vec::new();
                for p in list() {
                    let net: Ipv4Net = p
                        .parse()
                        .map_err(|_| format!("cidr={p}: not an IPv4 CIDR like 192.0.2.0/24"))?;
                    nets.push(net.trunc());
                }
                if nets.is_empty() {
                    return Err("cidr= needs at least one CIDR, e.g. cidr=192.0.2.0/24".into());
                }
                Ok(Method::Cidr(nets))
            }
            "can-reach" => value.trim().parse().map(Method::CanReach).map_err(|_| {
                format!(
                    "can-reach={}: not an IPv4 address (host names are not resolved)",
                    value.trim()
                )
            }),
            other => Err(format!(
                "{other:?} is not a method; use first-found, interface=, skip-interface=, cidr= or can-reach="
            )),
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Method::FirstFound => write!(f, "first-found"),
            Method::Interface(r) => write!(f, "interface={}", r.join(",")),
            Method::SkipInterface(r) => write!(f, "skip-interface={}", r.join(",")),
            Method::Cidr(c) => {
                let c: Vec<String> = c.iter().map(|n| n.to_string()).collect();
                write!(f, "cidr={}", c.join(","))
            }
            Method::CanReach(a) => write!(f, "can-reach={a}"),
        }
    }
}

/// The node IP and why it was chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeIp {
    pub address: Ipv4Addr,
    /// The address with its prefix, when an interface holds it.
    pub cidr: Option<Ipv4Net>,
    pub interface: Option<String>,
    /// "first-found", "interface=eth.*", "nodeIP", "override", …
    pub method: String,
    /// One sentence.
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AutodetectError {
    #[error("{summary}: interfaces here: {interfaces}; set ipAutodetection or nodeIP")]
    NotFound { summary: String, interfaces: String },
}

fn anchored(pattern: &str) -> Result<Regex, regex_lite::Error> {
    Regex::new(&format!("^(?:{pattern})$"))
}

fn compile(patterns: &[String]) -> Vec<Regex> {
    // Validated by Method::parse; an invalid one (built by hand) matches nothing.
    patterns.iter().filter_map(|p| anchored(p).ok()).collect()
}

/// Addresses no other node can use to reach this one.
fn usable_addr(a: &Ipv4Net) -> bool {
    !a.addr().is_loopback() && !a.addr().is_link_local() && !a.addr().is_unspecified()
}

/// "eth0 192.0.2.11/24, docker0 172.17.0.1/16 (down), lo 127.0.0.1/8"
pub fn describe(interfaces: &[Interface]) -> String {
    if interfaces.is_empty() {
        return "none".into();
    }
    interfaces
        .iter()
        .map(|i| {
            let mut s = i.name.clone();
            if i.addrs.is_empty() {
                s.push_str(" (no IPv4 address)");
            }
            for a in &i.addrs {
                s.push(' ');
                s.push_str(&a.to_string());
            }
            if !i.up {
                s.push_str(" (down)");
            }
            s
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn found(i: &Interface, a: Ipv4Net, method: &Method, why: String) -> NodeIp {
    NodeIp {
        address: a.addr(),
        cidr: Some(a),
        interface: Some(i.name.clone()),
        method: method.to_string(),
        reason: why,
    }
}

/// The first usable address of the first up interface (kernel order) that `pick` accepts.
fn first(
    interfaces: &[Interface],
    pick: impl Fn(&Interface) -> bool,
) -> Option<(&Interface, Ipv4Net)> {
    interfaces
        .iter()
        .filter(|i| i.up && pick(i))
        .find_map(|i| i.addrs.iter().find(|a| usable_addr(a)).map(|a| (i, *a)))
}

/// Picks the node IP by `method`. `route` is the kernel's answer for `can-reach` (None if
/// it has no route; ignored by the other methods).
pub fn detect(
    method: &Method,
    interfaces: &[Interface],
    route: Option<&RouteAnswer>,
) -> Result<NodeIp, AutodetectError> {
    let not_found = |summary: String| AutodetectError::NotFound {
        summary,
        interfaces: describe(interfaces),
    };
    match method {
        Method::FirstFound | Method::SkipInterface(_) => {
            let (skips, skip_list) = match method {
                Method::SkipInterface(r) => (compile(r), r.join(",")),
                _ => (
                    compile(
                        &FIRST_FOUND_SKIPS
                            .iter()
                            .map(|s| s.to_string())
                            .collect::<Vec<_>>(),
                    ),
                    "lo, docker*, cni*, veth*, twl*, cali*, flannel*, vxlan*, tunl*, kube-ipvs*, virbr*, br-* and other container bridges".into(),
                ),
            };
            let skipped =
                |i: &Interface| i.name == "lo" || skips.iter().any(|r| r.is_match(&i.name));
            match first(interfaces, |i| !skipped(i)) {
                Some((i, a)) => Ok(found(
                    i,
                    a,
                    method,
                    format!("{a} is the first address of {}, the first interface not skipped by {method} (skips {skip_list})", i.name),
                )),
                None => Err(not_found(format!(
                    "no usable address found by {method} (it skips {skip_list}, interfaces that are down, loopback and link-local addresses)"
                ))),
            }
        }
        Method::Interface(r) => {
            let res = compile(r);
            match first(interfaces, |i| res.iter().any(|re| re.is_match(&i.name))) {
                Some((i, a)) => Ok(found(
                    i,
                    a,
                    method,
                    format!(
                        "{a} is the first address of {}, the first interface matching {method}",
                        i.name
                    ),
                )),
                None => Err(not_found(format!(
                    "no interface that is up with a usable address matched {method}"
                ))),
            }
        }
        Method::Cidr(nets) => {
            let hit = interfaces.iter().filter(|i| i.up).find_map(|i| {
                i.addrs
                    .iter()
                    .find(|a| usable_addr(a) && nets.iter().any(|n| n.contains(&a.addr())))
                    .map(|a| (i, *a))
            });
            match hit {
                Some((i, a)) => Ok(found(
                    i,
                    a,
                    method,
                    format!("{a} on {} is the first address inside {method}", i.name),
                )),
                None => Err(not_found(format!("no address here is inside {method}"))),
            }
        }
        Method::CanReach(dst) => {
            let Some(r) = route else {
                return Err(not_found(format!(
                    "{method}: the kernel has no route to {dst}"
                )));
            };
            let Some(src) = r.src else {
                return Err(not_found(format!(
                    "{method}: the kernel's route to {dst} names no source address"
                )));
            };
            let iface = r.oif.and_then(|o| interfaces.iter().find(|i| i.index == o));
            let cidr = interfaces
                .iter()
                .flat_map(|i| i.addrs.iter())
                .find(|a| a.addr() == src)
                .copied();
            let via = iface
                .map(|i| format!(" via {}", i.name))
                .unwrap_or_default();
            Ok(NodeIp {
                address: src,
                cidr,
                interface: iface.map(|i| i.name.clone()),
                method: method.to_string(),
                reason: format!("the kernel reaches {dst}{via} from {src}"),
            })
        }
    }
}

/// A node IP set by hand: `origin` is "nodeIP" (the agent's config) or "override" (a Node
/// resource). It is used even if no interface holds it; the reason then says so.
pub fn fixed(address: Ipv4Addr, origin: &str, interfaces: &[Interface]) -> NodeIp {
    let holder = interfaces.iter().find_map(|i| {
        i.addrs
            .iter()
            .find(|a| a.addr() == address)
            .map(|a| (i, *a))
    });
    let set_by = match origin {
        "override" => "set by the Node resource (twill apply -f)".to_string(),
        other => format!("set by {other} in the agent's config"),
    };
    match holder {
        Some((i, a)) => NodeIp {
            address,
            cidr: Some(a),
            interface: Some(i.name.clone()),
            method: origin.into(),
            reason: format!("{address} is {set_by}; it is on {} ({a})", i.name),
        },
        None => NodeIp {
            address,
            cidr: None,
            interface: None,
            method: origin.into(),
            reason: format!(
                "{address} is {set_by}; no interface here holds it (interfaces here: {})",
                describe(interfaces)
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iface(index: u32, name: &str, kind: Option<&str>, addrs: &[&str]) -> Interface {
        Interface {
            index,
            name: name.into(),
            kind: kind.map(String::from),
            up: true,
            addrs: addrs.iter().map(|a| a.parse().unwrap()).collect(),
        }
    }

    fn host() -> Vec<Interface> {
        vec![
            iface(1, "lo", None, &["127.0.0.1/8"]),
            iface(2, "docker0", Some("bridge"), &["172.17.0.1/16"]),
            iface(3, "veth1234", Some("veth"), &["10.88.0.1/16"]),
            iface(4, "br-0a1b2c", Some("bridge"), &["172.18.0.1/16"]),
            iface(5, "twlbr0", Some("bridge"), &["10.244.1.1/24"]),
            iface(6, "eth0", None, &["169.254.3.3/16", "192.0.2.11/24"]),
            iface(7, "eth1", None, &["198.51.100.7/24"]),
            iface(8, "cni0", Some("bridge"), &["10.22.0.1/16"]),
        ]
    }

    fn m(s: &str) -> Method {
        Method::parse(s).unwrap()
    }

    #[test]
    fn first_found_skips_container_devices_loopback_and_link_local() {
        let ip = detect(&m("first-found"), &host(), None).unwrap();
        assert_eq!(ip.address, "192.0.2.11".parse::<Ipv4Addr>().unwrap());
        assert_eq!(ip.cidr, Some("192.0.2.11/24".parse().unwrap()));
        assert_eq!(ip.interface.as_deref(), Some("eth0"));
        assert_eq!(ip.method, "first-found");
        assert!(
            ip.reason.contains("first interface not skipped"),
            "{}",
            ip.reason
        );
    }

    #[test]
    fn first_found_skips_interfaces_that_are_down() {
        let mut h = host();
        h[5].up = false;
        let ip = detect(&m("first-found"), &h, None).unwrap();
        assert_eq!(ip.interface.as_deref(), Some("eth1"));
    }

    #[test]
    fn first_found_error_lists_interfaces() {
        let h = vec![
            iface(1, "lo", None, &["127.0.0.1/8"]),
            iface(2, "docker0", Some("bridge"), &["172.17.0.1/16"]),
            iface(3, "eth0", None, &["169.254.3.3/16"]),
        ];
        let e = detect(&m("first-found"), &h, None).unwrap_err().to_string();
        assert!(
            e.starts_with("no usable address found by first-found"),
            "{e}"
        );
        assert!(
            e.contains("interfaces here: lo 127.0.0.1/8, docker0 172.17.0.1/16, eth0 169.254.3.3/16; set ipAutodetection or nodeIP"),
            "{e}"
        );
    }

    #[test]
    fn interface_regexes_match_whole_names_in_order() {
        let ip = detect(&m("interface=eth.*"), &host(), None).unwrap();
        assert_eq!(ip.interface.as_deref(), Some("eth0"));
        // "eth.*" must not match veth1234 (index 3, before eth0).
        let ip = detect(&m("interface=eth1,eth0"), &host(), None).unwrap();
        assert_eq!(ip.interface.as_deref(), Some("eth0"), "kernel order wins");
        let ip = detect(&m("interface=eth1"), &host(), None).unwrap();
        assert_eq!(ip.address, "198.51.100.7".parse::<Ipv4Addr>().unwrap());
        assert_eq!(ip.method, "interface=eth1");
        // Explicitly asked for: no built-in skips.
        let ip = detect(&m("interface=docker0"), &host(), None).unwrap();
        assert_eq!(ip.interface.as_deref(), Some("docker0"));
    }

    #[test]
    fn interface_error_names_the_method_and_the_interfaces() {
        let h = vec![iface(2, "eth0", None, &["192.0.2.11/24"])];
        let e = detect(&m("interface=eth9.*"), &h, None)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "no interface that is up with a usable address matched interface=eth9.*: interfaces here: eth0 192.0.2.11/24; set ipAutodetection or nodeIP"
        );
    }

    #[test]
    fn skip_interface_replaces_the_builtin_list() {
        let ip = detect(&m("skip-interface=lo,docker.*,veth.*"), &host(), None).unwrap();
        assert_eq!(ip.interface.as_deref(), Some("br-0a1b2c"));
        let ip = detect(
            &m("skip-interface=docker0,veth.*,br-.*,twl.*,eth0"),
            &host(),
            None,
        )
        .unwrap();
        assert_eq!(ip.interface.as_deref(), Some("eth1"));
        let e = detect(&m("skip-interface=.*"), &host(), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("skip-interface=.*"), "{e}");
        assert!(e.contains("eth1 198.51.100.7/24"), "{e}");
    }

    #[test]
    fn cidr_takes_the_first_address_inside() {
        let ip = detect(&m("cidr=198.51.100.0/24"), &host(), None).unwrap();
        assert_eq!(ip.interface.as_deref(), Some("eth1"));
        let ip = detect(&m("cidr=203.0.113.0/24, 192.0.2.0/25"), &host(), None).unwrap();
        assert_eq!(ip.address, "192.0.2.11".parse::<Ipv4Addr>().unwrap());
        assert_eq!(ip.method, "cidr=203.0.113.0/24,192.0.2.0/25");
        let e = detect(&m("cidr=203.0.113.0/24"), &host(), None)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(
                "no address here is inside cidr=203.0.113.0/24: interfaces here: lo 127.0.0.1/8"
            ),
            "{e}"
        );
    }

    #[test]
    fn can_reach_uses_the_kernel_source_address() {
        let r = RouteAnswer {
            dst: "203.0.113.1".parse().unwrap(),
            src: Some("198.51.100.7".parse().unwrap()),
            oif: Some(7),
        };
        let ip = detect(&m("can-reach=203.0.113.1"), &host(), Some(&r)).unwrap();
        assert_eq!(ip.cidr, Some("198.51.100.7/24".parse().unwrap()));
        assert_eq!(ip.interface.as_deref(), Some("eth1"));
        assert_eq!(
            ip.reason,
            "the kernel reaches 203.0.113.1 via eth1 from 198.51.100.7"
        );
        let e = detect(&m("can-reach=203.0.113.1"), &host(), None)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(
                "can-reach=203.0.113.1: the kernel has no route to 203.0.113.1: interfaces here:"
            ),
            "{e}"
        );
    }

    #[test]
    fn fixed_addresses_say_where_they_are() {
        let ip = fixed("198.51.100.7".parse().unwrap(), "nodeIP", &host());
        assert_eq!(ip.interface.as_deref(), Some("eth1"));
        assert_eq!(ip.method, "nodeIP");
        assert!(ip.reason.contains("set by nodeIP"), "{}", ip.reason);
        let ip = fixed("203.0.113.9".parse().unwrap(), "override", &host());
        assert_eq!(ip.interface, None);
        assert!(ip.reason.contains("Node resource"), "{}", ip.reason);
        assert!(
            ip.reason.contains("no interface here holds it"),
            "{}",
            ip.reason
        );
    }

    #[test]
    fn parse_errors_say_what_is_accepted() {
        for (bad, want) in [
            ("first", "is not a method"),
            ("interface=", "needs at least one regex"),
            ("interface=eth(", "not a valid regex"),
            ("cidr=10.0.0.0/33", "not an IPv4 CIDR"),
            ("can-reach=example.com", "host names are not resolved"),
            ("kubernetes-internal-ip=1", "is not a method"),
        ] {
            let e = Method::parse(bad).unwrap_err();
            assert!(e.contains(want), "{bad}: {e}");
        }
        assert_eq!(
            m(" can-reach=192.0.2.1 ").to_string(),
            "can-reach=192.0.2.1"
        );
    }
}
