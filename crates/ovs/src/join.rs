//! How Twill's integration bridge meets the pod network on a node (pure).
//!
//! The walk-through's way, `brctl addif docker0 obr0`: with bridge wiring the
//! integration bridge's internal port [`HOST_DEVICE`] is a port of the pod bridge (twl0),
//! and the routes to remote blocks go `via` [`GATEWAY`] `dev twl0 onlink`. The host's ARP
//! for the gateway floods through the pod bridge into OVS, whose ARP flow answers with
//! [`GATEWAY_MAC`]; a static FDB entry keeps that MAC on [`HOST_DEVICE`] (no flooding of
//! pod ports once the learnt entry ages out). Decapsulated packets leave OVS addressed to
//! [`HOST_DEVICE`]'s own MAC, a local FDB entry of the pod bridge, so the bridge passes
//! them up to the host, which routes them to the pod.
//!
//! With l3 wiring there is no pod bridge: [`HOST_DEVICE`] stands alone and the routes go
//! `dev twl.ovs` (an internal port in l3 wiring, as the issue asks).
//!
//! twilld makes the pod bridge when it is missing (twill-cni makes it on a node's first
//! pod, and takes an existing one as it is; the bridge gets a fixed MAC so it never takes
//! a port's), so the routes have their final device before any pod starts.
//!
//! [`GATEWAY`]: crate::flows::GATEWAY
//! [`GATEWAY_MAC`]: crate::flows::GATEWAY_MAC

use crate::flows::{format_mac, GATEWAY_MAC};
use crate::HOST_DEVICE;

/// One kernel link, as `ip -j -d link show dev NAME` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LinkState {
    pub up: bool,
    /// The bridge (or bond) it is a port of.
    pub master: Option<String>,
    /// `linkinfo.info_kind`: `bridge`, `tun`, … (None: a plain device).
    pub kind: Option<String>,
}

/// `ip -j -d link show dev NAME`'s output: None when it names no link (empty array).
pub fn parse_link(json: &str) -> Result<Option<LinkState>, String> {
    let v: serde_json::Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
    let Some(l) = v.as_array().and_then(|a| a.first()) else {
        return Ok(None);
    };
    let up = l["flags"]
        .as_array()
        .is_some_and(|f| f.iter().any(|x| x == "UP"));
    let text = |x: &serde_json::Value| x.as_str().map(String::from);
    Ok(Some(LinkState {
        up,
        master: text(&l["master"]),
        kind: text(&l["linkinfo"]["info_kind"]),
    }))
}

/// What a node needs to join [`HOST_DEVICE`] to its pod network.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct JoinPlan {
    /// In order.
    pub commands: Vec<Command>,
    /// Why it cannot be done (a pod bridge name held by another kind of link).
    pub problem: Option<String>,
}

/// One iproute2 command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// `ip` or `bridge`.
    pub tool: &'static str,
    pub args: Vec<String>,
}

impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.tool, self.args.join(" "))
    }
}

/// The pod network [`HOST_DEVICE`] joins: `pod_bridge` Some(name) with bridge wiring,
/// None with l3. `host` and `bridge` are the links as they are now (`bridge` None: no
/// link of that name); `mtu` and `mac` are those a new pod bridge gets.
pub fn plan(
    pod_bridge: Option<&str>,
    host: &LinkState,
    bridge: Option<&LinkState>,
    mtu: u32,
    mac: [u8; 6],
) -> JoinPlan {
    let run = |tool: &'static str, args: &[&str]| Command {
        tool,
        args: args.iter().map(|s| s.to_string()).collect(),
    };
    let ip = |args: &[&str]| run("ip", args);
    let mut out = JoinPlan::default();
    let Some(name) = pod_bridge else {
        // l3: no pod bridge; a port left from bridge wiring is detached.
        if host.master.is_some() {
            out.commands
                .push(ip(&["link", "set", "dev", HOST_DEVICE, "nomaster"]));
        }
        return out;
    };
    match bridge {
        Some(b) if b.kind.as_deref() != Some("bridge") => {
            out.problem = Some(format!(
                "ovs: {name} exists but is a {} device, not a bridge, so {HOST_DEVICE} cannot join the pods' bridge: delete it (ip link del {name}) and twilld makes the bridge",
                b.kind.as_deref().unwrap_or("plain")
            ));
            return out;
        }
        Some(b) => {
            if !b.up {
                out.commands.push(ip(&["link", "set", "dev", name, "up"]));
            }
        }
        None => {
            out.commands.push(ip(&[
                "link",
                "add",
                "name",
                name,
                "address",
                &format_mac(&mac),
                "mtu",
                &mtu.to_string(),
                "type",
                "bridge",
            ]));
            out.commands.push(ip(&["link", "set", "dev", name, "up"]));
        }
    }
    if host.master.as_deref() != Some(name) {
        out.commands
            .push(ip(&["link", "set", "dev", HOST_DEVICE, "master", name]));
        // Enslaving drops the port's FDB entries: the gateway's goes back with it.
        out.commands.push(run(
            "bridge",
            &[
                "fdb",
                "replace",
                &format_mac(&GATEWAY_MAC),
                "dev",
                HOST_DEVICE,
                "master",
                "static",
            ],
        ));
    }
    out
}

/// The device the routes to remote blocks use: the pod bridge once [`HOST_DEVICE`] is its
/// port (bridge wiring), else [`HOST_DEVICE`] itself (l3, or a bridge not joined yet).
pub fn route_device<'a>(pod_bridge: Option<&'a str>, host: &LinkState) -> &'a str {
    match pod_bridge {
        Some(b) if host.master.as_deref() == Some(b) => b,
        _ => HOST_DEVICE,
    }
}

/// The fixed MAC of a pod bridge twilld makes: locally administered and unicast,
/// `0e:54:` + the node IP's bytes (apart from [`HOST_DEVICE`]'s `0a:54:…`).
pub fn pod_bridge_mac(node: std::net::Ipv4Addr) -> [u8; 6] {
    let [a, b, c, d] = node.octets();
    [0x0e, 0x54, a, b, c, d]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(up: bool, master: Option<&str>, kind: Option<&str>) -> LinkState {
        LinkState {
            up,
            master: master.map(String::from),
            kind: kind.map(String::from),
        }
    }

    fn lines(p: &JoinPlan) -> Vec<String> {
        p.commands.iter().map(|c| c.to_string()).collect()
    }

    #[test]
    fn parses_ip_link_json() {
        // Trimmed from `ip -j -d link show dev twl.ovs` (iproute2 6.1) on a lab node.
        let port = r#"[{"ifindex":7,"ifname":"twl.ovs","flags":["BROADCAST","MULTICAST","UP","LOWER_UP"],"mtu":1462,"master":"twl0","operstate":"UNKNOWN","linkinfo":{"info_kind":"tun","info_slave_kind":"bridge"}}]"#;
        assert_eq!(
            parse_link(port).unwrap(),
            Some(link(true, Some("twl0"), Some("tun")))
        );
        let bridge = r#"[{"ifindex":5,"ifname":"twl0","flags":["BROADCAST","MULTICAST"],"linkinfo":{"info_kind":"bridge","info_data":{"stp_state":0}}}]"#;
        assert_eq!(
            parse_link(bridge).unwrap(),
            Some(link(false, None, Some("bridge")))
        );
        assert_eq!(parse_link("[]").unwrap(), None);
        assert_eq!(
            parse_link(r#"[{"ifname":"eth0","flags":["UP"]}]"#).unwrap(),
            Some(link(true, None, None))
        );
        assert!(parse_link("Device \"x\" does not exist.").is_err());
    }

    #[test]
    fn bridge_wiring_makes_the_bridge_then_joins_it_with_the_gateway_pinned() {
        let mac = pod_bridge_mac("192.0.2.11".parse().unwrap());
        assert_eq!(format_mac(&mac), "0e:54:c0:00:02:0b");
        let p = plan(
            Some("twl0"),
            &link(true, None, Some("tun")),
            None,
            1462,
            mac,
        );
        assert_eq!(p.problem, None);
        assert_eq!(
            lines(&p),
            [
                "ip link add name twl0 address 0e:54:c0:00:02:0b mtu 1462 type bridge",
                "ip link set dev twl0 up",
                "ip link set dev twl.ovs master twl0",
                "bridge fdb replace 0a:54:a9:fe:54:54 dev twl.ovs master static",
            ]
        );
        // The bridge twill-cni made, down: brought up, then joined.
        let down = link(false, None, Some("bridge"));
        let p = plan(
            Some("twl0"),
            &link(true, None, None),
            Some(&down),
            1462,
            mac,
        );
        assert_eq!(lines(&p)[0], "ip link set dev twl0 up");
        assert_eq!(p.commands.len(), 3);
        // Joined already: nothing, whatever the MTU asked.
        let up = link(true, None, Some("bridge"));
        let joined = link(true, Some("twl0"), Some("tun"));
        assert_eq!(
            plan(Some("twl0"), &joined, Some(&up), 1400, mac),
            JoinPlan::default()
        );
        // A port of another bridge moves to the pods' one.
        let elsewhere = link(true, Some("br9"), None);
        assert_eq!(
            lines(&plan(Some("twl0"), &elsewhere, Some(&up), 1462, mac))[0],
            "ip link set dev twl.ovs master twl0"
        );
    }

    #[test]
    fn a_pod_bridge_name_held_by_another_kind_is_a_problem_and_nothing_is_done() {
        let veth = link(true, None, Some("veth"));
        let p = plan(
            Some("twl0"),
            &link(true, None, None),
            Some(&veth),
            1462,
            [0; 6],
        );
        assert!(p.commands.is_empty());
        let text = p.problem.unwrap();
        assert!(text.contains("twl0 exists but is a veth device"), "{text}");
        assert!(text.contains("ip link del twl0"), "{text}");
    }

    #[test]
    fn l3_wiring_leaves_the_port_alone_or_detaches_it() {
        assert_eq!(
            plan(None, &link(true, None, None), None, 1462, [0; 6]),
            JoinPlan::default()
        );
        assert_eq!(
            lines(&plan(
                None,
                &link(true, Some("twl0"), None),
                None,
                1462,
                [0; 6]
            )),
            ["ip link set dev twl.ovs nomaster"]
        );
    }

    #[test]
    fn routes_use_the_pod_bridge_only_once_the_port_is_in_it() {
        let alone = link(true, None, None);
        let joined = link(true, Some("twl0"), None);
        assert_eq!(route_device(Some("twl0"), &alone), "twl.ovs");
        assert_eq!(route_device(Some("twl0"), &joined), "twl0");
        assert_eq!(route_device(None, &joined), "twl.ovs");
    }
}
