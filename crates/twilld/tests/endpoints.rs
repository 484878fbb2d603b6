//! Pods as endpoints in the store (root only): the real twill-cni, run in a node
//! namespace exactly as a runtime runs it (CNI_ARGS with the pod's namespace, name and
//! labels; runtimeConfig labels and named ports), a real twilld reading its records, and
//! a real store (embedded, and etcd). Each endpoint appears at once (the agent's poll tick
//! is set to 30 s: only its inotify watch can be that quick), holds what ADD knew (the
//! addresses, the pod's MAC as the kernel has it, the host veth), is bound to the agent's
//! lease, and goes with DEL, with GC, with a restart that finds it stale, and with the
//! lease; a pod's hand-set labels (`podlabels/`) go after it with DEL and GC.

mod common;
use common::*;
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use twill_api::policy::Endpoint;
use twill_store::embedded::EmbeddedStore;
use twill_store::{LeaseId, Store};
use twill_testkit::etcd::EtcdMember;
use twill_testkit::{TempDir, TestNetns};

const NETWORK: &str = "twlendp";
/// Long enough that nothing in these tests is seen on the poll tick.
const POLL: &str = "30";

fn plugin() -> PathBuf {
    twill_testkit::workspace_bin("twill-cni", "twill-cni")
}

/// How the agent reaches its store.
enum StoreArgs {
    Embedded(PathBuf),
    Etcd(String),
}

/// A node: a namespace for twill-cni's bridge and veths, and its twilld (inside the
/// namespace with the embedded store; outside, on the same files, with etcd on loopback).
struct Node {
    name: String,
    ns: TestNetns,
    dir: PathBuf,
    store_args: StoreArgs,
    agent: Option<AgentProc>,
}

impl Node {
    fn new(root: &Path, store_args: StoreArgs) -> Node {
        let name = "node0".to_string();
        let dir = root.join(&name);
        std::fs::create_dir_all(&dir).unwrap();
        let mut n = Node {
            ns: TestNetns::new("endpn"),
            name,
            dir,
            store_args,
            agent: None,
        };
        n.start();
        n
    }

    fn p(&self, f: &str) -> String {
        self.dir.join(f).to_string_lossy().into_owned()
    }

    fn start(&mut self) {
        let mut args: Vec<String> = [
            "--node-name",
            &self.name,
            "--node-ip",
            "192.0.2.11",
            "--handoff-file",
            &self.p("node.json"),
            "--state-dir",
            &self.p("state"),
            "--cni-data-dir",
            &self.p("ipam"),
            "--cni-network",
            NETWORK,
            "--poll-interval-seconds",
            POLL,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let prefix: Vec<String> = match &self.store_args {
            StoreArgs::Embedded(dir) => {
                args.extend(
                    [
                        "--store",
                        "embedded",
                        "--store-dir",
                        &dir.to_string_lossy(),
                        "--listen",
                        "127.0.0.1:9099",
                    ]
                    .map(String::from),
                );
                ["ip", "netns", "exec", &self.ns.name]
                    .map(String::from)
                    .to_vec()
            }
            StoreArgs::Etcd(url) => {
                args.extend(
                    [
                        "--store",
                        "etcd",
                        "--etcd-endpoints",
                        url,
                        "--listen",
                        &format!("127.0.0.1:{}", free_port()),
                    ]
                    .map(String::from),
                );
                Vec::new()
            }
        };
        let prefix: Vec<&str> = prefix.iter().map(String::as_str).collect();
        self.agent = Some(AgentProc::spawn(
            &prefix,
            &args,
            self.dir.join("twilld.log"),
        ));
        wait_for("the hand-off", Duration::from_secs(20), || {
            std::fs::read(self.dir.join("node.json"))
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                .filter(|v| v["blocks"].as_array().is_some_and(|b| !b.is_empty()))
        });
    }

    fn kill(&mut self) {
        if let Some(mut a) = self.agent.take() {
            a.kill();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("twilld.log")).unwrap_or_default()
    }

    fn conf(&self, runtime_config: Value) -> Vec<u8> {
        json!({
            "cniVersion": "1.1.0",
            "name": NETWORK,
            "type": "twill-cni",
            "bridge": "twl0",
            "ipMasq": false,
            "ipam": {"handoffFile": self.p("node.json"), "dataDir": self.p("ipam")},
            "runtimeConfig": runtime_config,
        })
        .to_string()
        .into_bytes()
    }

    /// twill-cni in the node's namespace: (ok, JSON printed).
    fn cni(&self, command: &str, cid: &str, pod: &str, args: &str, stdin: &[u8]) -> (bool, Value) {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.ns.name])
            .arg(plugin())
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_PATH", "/opt/cni/bin")
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", cid)
            .env("CNI_NETNS", format!("/run/netns/{pod}"))
            .env("CNI_IFNAME", "eth0")
            .env("CNI_ARGS", args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn twill-cni");
        let _ = child.stdin.take().unwrap().write_all(stdin);
        let out = child.wait_with_output().unwrap();
        let json = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        (out.status.success(), json)
    }

    fn add(&self, cid: &str, pod: &TestNetns, args: &str, rc: Value) -> Value {
        let (ok, v) = self.cni("ADD", cid, &pod.name, args, &self.conf(rc));
        assert!(ok, "ADD {cid}: {v}\n{}", self.log());
        v
    }

    fn del(&self, cid: &str, pod: &TestNetns) {
        let (ok, v) = self.cni("DEL", cid, &pod.name, "", &self.conf(json!({})));
        assert!(ok, "DEL {cid}: {v}");
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

fn endpoint_kv(store: &dyn Store, rel: &str) -> Option<(Endpoint, Option<LeaseId>)> {
    store.get(&key(rel)).unwrap().map(|kv| {
        (
            serde_json::from_slice(&kv.value).expect("an Endpoint"),
            kv.lease,
        )
    })
}

fn endpoint_keys(store: &dyn Store, node: &str) -> Vec<String> {
    let prefix = key(&format!("endpoints/{node}/"));
    store
        .list(&prefix)
        .unwrap()
        .0
        .into_iter()
        .map(|kv| kv.key.strip_prefix(&key("")).unwrap().to_string())
        .collect()
}

fn node_lease(store: &dyn Store, node: &str) -> LeaseId {
    store
        .get(&key(&format!("nodes/{node}")))
        .unwrap()
        .and_then(|kv| kv.lease)
        .expect("the node is published under its lease")
}

/// The MAC of `ifname` in `ns`, as the kernel has it.
fn mac_in(ns: &TestNetns, ifname: &str) -> String {
    let out = ns.exec(&["cat", &format!("/sys/class/net/{ifname}/address")]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// ADD of `cid`, and how long after ADD returned its endpoint `rel` was in the store
/// (read directly, in a loop), in ms: 0 when it was there already (twilld publishes from
/// the record, which ADD writes before it wires the pod).
fn timed_add(
    node: &Node,
    store: &dyn Store,
    cid: &str,
    pod: &TestNetns,
    args: &str,
    rc: Value,
    rel: &str,
) -> (Value, f64) {
    let result = node.add(cid, pod, args, rc);
    let returned = Instant::now();
    let end = returned + Duration::from_secs(10);
    let mut first = true;
    while store.get(&key(rel)).unwrap().is_none() {
        first = false;
        assert!(
            Instant::now() < end,
            "{rel} did not appear within 10 s of ADD (the poll tick is {POLL} s)\n{}",
            node.log()
        );
        std::thread::sleep(Duration::from_micros(200));
    }
    let ms = if first {
        0.0
    } else {
        returned.elapsed().as_secs_f64() * 1000.0
    };
    (result, ms)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// The whole life of endpoints on one node, on whichever store.
fn endpoints_follow_the_pods(store: &dyn Store, node: &mut Node) {
    let pods: Vec<TestNetns> = (0..4).map(|_| TestNetns::new("endpp")).collect();
    let lease = node_lease(store, &node.name);

    // A pod with everything: namespace, name, labels from both places, named ports.
    let (result, delay_a) = timed_add(
        node,
        store,
        "twlcid-a",
        &pods[0],
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=x;K8S_POD_NAME=a;K8S_POD_INFRA_CONTAINER_ID=twlcid-a;TWILL_POD_LABELS=pod=a,tier=back",
        json!({
            "labels": {"app": "web", "tier": "front"},
            "namedPorts": [{"name": "serve-80-tcp", "port": 80, "protocol": "TCP"},
                           {"name": "serve-81-udp", "port": 81, "protocol": "UDP"}],
        }),
        "endpoints/node0/x/a",
    );
    let (ep, ep_lease) = endpoint_kv(store, "endpoints/node0/x/a").unwrap();
    assert_eq!(ep_lease, Some(lease), "bound to the agent's lease");
    assert_eq!(
        (ep.namespace.as_str(), ep.pod.as_str(), ep.node.as_str()),
        ("x", "a", "node0")
    );
    assert_eq!(
        (ep.container_id.as_str(), ep.ifname.as_str()),
        ("twlcid-a", "eth0")
    );
    let ip: std::net::Ipv4Addr = result["ips"][0]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(ep.ips, vec![ip]);
    let host_veth = result["interfaces"][1]["name"].as_str().unwrap();
    assert_eq!(ep.host_veth, host_veth);
    let pod_mac = mac_in(&pods[0], "eth0");
    assert_eq!(
        ep.mac.as_deref(),
        Some(pod_mac.as_str()),
        "the pod's own MAC"
    );
    assert_eq!(
        result["interfaces"][2]["mac"].as_str(),
        Some(pod_mac.as_str())
    );
    assert_eq!(ep.wiring, twill_api::wiring::PodWiring::Bridge);
    let labels: Vec<(&str, &str)> = ep
        .labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        labels,
        vec![("app", "web"), ("pod", "a"), ("tier", "back")],
        "CNI_ARGS' labels win over runtimeConfig's"
    );
    let ports: Vec<(&str, u16)> = ep
        .named_ports
        .iter()
        .map(|p| (p.name.as_str(), p.port))
        .collect();
    assert_eq!(ports, vec![("serve-80-tcp", 80), ("serve-81-udp", 81)]);

    // No Kubernetes arguments: namespace default, the container ID for the name.
    let (_, delay_b) = timed_add(
        node,
        store,
        "twlcid-b",
        &pods[1],
        "",
        json!({}),
        "endpoints/node0/default/twlcid-b",
    );
    // Bad input: refused, and no endpoint (nor anything else) for it.
    let (ok, err) = node.cni(
        "ADD",
        "twlcid-bad",
        &pods[2].name,
        "K8S_POD_NAMESPACE=x;K8S_POD_NAME=bad;TWILL_POD_LABELS=app=-x",
        &node.conf(json!({})),
    );
    assert!(!ok, "{err}");
    assert!(
        err["msg"]
            .as_str()
            .unwrap()
            .contains("TWILL_POD_LABELS.app"),
        "{err}"
    );
    let (ok, err) = node.cni(
        "ADD",
        "twlcid-bad",
        &pods[2].name,
        "K8S_POD_NAMESPACE=x;K8S_POD_NAME=bad",
        &node.conf(json!({"namedPorts": [{"name": "NOPE", "port": 1}]})),
    );
    assert!(!ok, "{err}");
    assert_eq!(
        std::fs::read_dir(node.dir.join("ipam").join(NETWORK).join("attachments"))
            .unwrap()
            .count(),
        2,
        "no record for the refused pod"
    );
    let (_, delay_c) = timed_add(
        node,
        store,
        "twlcid-c",
        &pods[2],
        "K8S_POD_NAMESPACE=y;K8S_POD_NAME=c",
        json!({}),
        "endpoints/node0/y/c",
    );
    assert_eq!(
        endpoint_keys(store, "node0"),
        vec![
            "endpoints/node0/default/twlcid-b",
            "endpoints/node0/x/a",
            "endpoints/node0/y/c"
        ]
    );
    eprintln!(
        "endpoint in the store, ms after ADD returned (0: there already): {delay_a:.2}, {delay_b:.2}, {delay_c:.2}; median {:.2}",
        median(vec![delay_a, delay_b, delay_c])
    );

    // Labels set by hand (`twill label pod`) on a, b and c: they go with their pod.
    let labels = |rel: &str| format!("/twill/v1/podlabels/{rel}");
    for rel in ["x/a", "default/twlcid-b", "y/c"] {
        store
            .put(&labels(rel), br#"{"labels":{"hand":"set"}}"#, None)
            .unwrap();
    }
    let has_labels = |rel: &str| store.get(&labels(rel)).unwrap().is_some();

    // DEL: the endpoint goes at once, then the pod's hand-set labels.
    node.del("twlcid-a", &pods[0]);
    wait_for("x/a to leave with DEL", Duration::from_secs(10), || {
        (endpoint_kv(store, "endpoints/node0/x/a").is_none() && !has_labels("x/a")).then_some(())
    });
    assert!(has_labels("default/twlcid-b") && has_labels("y/c"));
    // GC: only c is valid; b goes.
    let mut gc: Value = serde_json::from_slice(&node.conf(json!({}))).unwrap();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "twlcid-c", "ifname": "eth0"}]);
    let (ok, v) = node.cni("GC", "", &pods[0].name, "", gc.to_string().as_bytes());
    assert!(ok, "GC: {v}");
    wait_for("b to leave with GC", Duration::from_secs(10), || {
        (endpoint_keys(store, "node0") == ["endpoints/node0/y/c"]
            && !has_labels("default/twlcid-b"))
        .then_some(())
    });
    assert!(has_labels("y/c"), "a live pod keeps its labels");

    // Restart: while the agent is down, c is deleted and d added. The new agent removes
    // c's endpoint (still under the old lease, which is alive) and publishes d's.
    node.kill();
    node.del("twlcid-c", &pods[2]);
    node.add(
        "twlcid-d",
        &pods[3],
        "K8S_POD_NAMESPACE=z;K8S_POD_NAME=d",
        json!({}),
    );
    assert!(endpoint_kv(store, "endpoints/node0/y/c").is_some());
    node.start();
    let new_lease = wait_for("the new agent's lease", Duration::from_secs(10), || {
        Some(node_lease(store, "node0")).filter(|l| *l != lease)
    });
    wait_for("stale c gone, d published", Duration::from_secs(10), || {
        (endpoint_keys(store, "node0") == ["endpoints/node0/z/d"]).then_some(())
    });
    assert_eq!(
        endpoint_kv(store, "endpoints/node0/z/d").unwrap().1,
        Some(new_lease)
    );

    // The node goes (its agent stops, its lease ends): its endpoints go with it.
    node.kill();
    store.revoke(new_lease).unwrap();
    assert_eq!(endpoint_keys(store, "node0"), Vec::<String>::new());
    node.del("twlcid-d", &pods[3]);
}

#[test]
fn endpoints_follow_the_pods_on_the_embedded_store() {
    twill_testkit::require_root("endpoints_follow_the_pods_on_the_embedded_store");
    let root = TempDir::new("endpemb");
    let store_dir = root.path.join("store");
    let store = EmbeddedStore::open(&store_dir).unwrap();
    store
        .put(
            &key("config"),
            &network_config("10.244.0.0/16", 26, 60, false),
            None,
        )
        .unwrap();
    let mut node = Node::new(&root.path, StoreArgs::Embedded(store_dir));
    endpoints_follow_the_pods(&store, &mut node);
}

#[test]
fn endpoints_follow_the_pods_on_etcd() {
    twill_testkit::require_root("endpoints_follow_the_pods_on_etcd");
    let etcd = EtcdMember::start("endp");
    let url = etcd.client_url();
    let store = twill_store::etcd::EtcdStore::connect(&twill_store::etcd::EtcdConfig::new(vec![
        url.clone(),
    ]))
    .unwrap();
    store
        .put(
            &key("config"),
            &network_config("10.244.0.0/16", 26, 60, false),
            None,
        )
        .unwrap();
    let root = TempDir::new("endpetcd");
    let mut node = Node::new(&root.path, StoreArgs::Etcd(url));
    endpoints_follow_the_pods(&store, &mut node);
}
