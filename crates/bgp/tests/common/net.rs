//! Namespaces and links: a [`Lan`] of nodes, each in its own `twl…` namespace, on one
//! segment 192.0.2.0/24 and 2001:db8::/64 (documentation ranges, inside namespaces the
//! test made). Two nodes are joined by one veth; more by a bridge in a switch namespace.
//! Node `i` (from 0) has 192.0.2.(i+1) and 2001:db8::(i+1). Dropping the `Lan` deletes the
//! namespaces, and with them every veth and route in them.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::process::Output;

use twill_testkit::{sh, try_sh, unique_name, TestNetns};

pub struct Node {
    pub ns: TestNetns,
    /// The node's interface on the segment.
    pub ifname: String,
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
}

impl Node {
    pub fn name(&self) -> &str {
        &self.ns.name
    }

    pub fn exec(&self, args: &[&str]) -> Output {
        self.ns.exec(args)
    }

    pub fn try_exec(&self, args: &[&str]) -> (bool, String, String) {
        self.ns.try_exec(args)
    }

    /// Adds `cidr` (e.g. a "pod" address 10.244.1.1/32) to the node's loopback, so pings to
    /// and from it have to follow routes learned over BGP.
    pub fn add_loopback_addr(&self, cidr: &str) {
        sh(&["ip", "-n", self.name(), "addr", "add", cidr, "dev", "lo"]);
    }

    /// A kernel counter of the node's namespace (`nstat -az NAME`), e.g. TcpExtTCPMD5Failure.
    pub fn nstat(&self, counter: &str) -> u64 {
        let (_, out, _) = self.try_exec(&["nstat", "-az", "--json", counter]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        v["kernel"][counter].as_u64().unwrap_or(0)
    }

    /// Starts `ping -i 0.2` from `from` to `to` for `secs` seconds in the background;
    /// [`Pinger::finish`] says how many of the replies came back.
    pub fn pinger(&self, from: &str, to: &str, secs: u32) -> Pinger {
        let child = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                self.name(),
                "ping",
                "-n",
                "-D",
                "-O",
                "-i",
                "0.2",
                "-W",
                "1",
            ])
            .args(["-w", &secs.to_string(), "-I", from, to])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run ping");
        Pinger { child: Some(child) }
    }

    /// One ping from `from` (an address of this node) to `to`: did it come back within 1 s?
    pub fn ping(&self, from: &str, to: &str) -> bool {
        self.try_exec(&["ping", "-n", "-q", "-c", "1", "-W", "1", "-I", from, to])
            .0
    }
}

pub struct Lan {
    pub nodes: Vec<Node>,
    /// The namespace holding the bridge, for more than two nodes. Dropped last.
    switch: Option<TestNetns>,
    pub bridge: Option<String>,
}

impl Lan {
    /// `n` nodes (2..=200) on one segment; `tag` goes into every name.
    pub fn new(tag: &str, n: usize) -> Lan {
        assert!((2..=200).contains(&n), "a Lan has 2..=200 nodes, not {n}");
        let nodes: Vec<Node> = (0..n)
            .map(|i| Node {
                ns: TestNetns::new(&format!("{tag}{i}")),
                ifname: unique_name("e", 15),
                v4: Ipv4Addr::new(192, 0, 2, i as u8 + 1),
                v6: format!("2001:db8::{:x}", i + 1).parse().unwrap(),
            })
            .collect();
        let mut lan = Lan {
            nodes,
            switch: None,
            bridge: None,
        };
        if n == 2 {
            let (a, b) = (&lan.nodes[0], &lan.nodes[1]);
            sh(&[
                "ip",
                "-n",
                a.name(),
                "link",
                "add",
                &a.ifname,
                "type",
                "veth",
                "peer",
                "name",
                &b.ifname,
                "netns",
                b.name(),
            ]);
        } else {
            let sw = TestNetns::new(&format!("{tag}sw"));
            let br = unique_name("br", 15);
            sh(&["ip", "-n", &sw.name, "link", "add", &br, "type", "bridge"]);
            sh(&["ip", "-n", &sw.name, "link", "set", &br, "up"]);
            for node in &lan.nodes {
                let port = unique_name("p", 15);
                sh(&[
                    "ip",
                    "-n",
                    &sw.name,
                    "link",
                    "add",
                    &port,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    &node.ifname,
                    "netns",
                    node.name(),
                ]);
                sh(&[
                    "ip", "-n", &sw.name, "link", "set", &port, "master", &br, "up",
                ]);
            }
            lan.switch = Some(sw);
            lan.bridge = Some(br);
        }
        for node in &lan.nodes {
            let (ns, ifc) = (node.name(), node.ifname.as_str());
            sh(&[
                "ip",
                "-n",
                ns,
                "addr",
                "add",
                &format!("{}/24", node.v4),
                "dev",
                ifc,
            ]);
            sh(&[
                "ip",
                "-n",
                ns,
                "addr",
                "add",
                &format!("{}/64", node.v6),
                "dev",
                ifc,
                "nodad",
            ]);
            sh(&["ip", "-n", ns, "link", "set", ifc, "up"]);
        }
        lan
    }

    /// The switch namespace (only for more than two nodes), e.g. to capture on the bridge.
    pub fn switch_ns(&self) -> Option<&str> {
        self.switch.as_ref().map(|s| s.name.as_str())
    }

    /// Forwarding on in every node (for multi-hop scenarios).
    pub fn enable_forwarding(&self) {
        for node in &self.nodes {
            try_sh(&[
                "ip",
                "netns",
                "exec",
                node.name(),
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ]);
        }
    }
}

impl std::ops::Index<usize> for Lan {
    type Output = Node;
    fn index(&self, i: usize) -> &Node {
        &self.nodes[i]
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        // Nodes first (their veths go with them), then the switch.
        self.nodes.clear();
        self.switch.take();
    }
}

/// A background `ping`, killed on drop.
pub struct Pinger {
    child: Option<std::process::Child>,
}

impl Pinger {
    /// Waits for it to end: (sent, received).
    pub fn finish(mut self) -> (u32, u32) {
        let out = self
            .child
            .take()
            .unwrap()
            .wait_with_output()
            .expect("wait for ping");
        let text = String::from_utf8_lossy(&out.stdout);
        for l in text
            .lines()
            .filter(|l| l.contains("no answer") || l.contains("nreachable"))
        {
            eprintln!("ping: {l}");
        }
        let line = text
            .lines()
            .find(|l| l.contains("packets transmitted"))
            .unwrap_or_else(|| panic!("no ping summary: {text}"));
        let n: Vec<u32> = line
            .split(',')
            .filter_map(|f| f.split_whitespace().next()?.parse().ok())
            .collect();
        (n[0], n[1])
    }
}

impl Drop for Pinger {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
