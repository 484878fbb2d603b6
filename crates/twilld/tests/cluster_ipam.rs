//! The cluster-wide IPAM at scale (root only): 4 "node" namespaces, each running a real
//! twilld on one embedded store, and 1000 pods added round-robin by the real twill-cni run
//! in the node namespaces exactly as a runtime runs it, with the node's blocks taken from
//! twilld's hand-off file. No address twice, cluster-wide; every address inside a /26
//! block its node holds; the agents publish exactly the 1000 pods.

mod common;
use common::*;
use ipnet::Ipv4Net;
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use twill_api::resources::{Allocation, Block, HandOff};
use twill_store::embedded::EmbeddedStore;
use twill_store::Store;
use twill_testkit::{unique_name, TempDir, TestNetns};

const PODS: usize = 1000;
const NODES: usize = 4;
/// Plugin runs in flight: enough to overlap the kernel's work on 2 cores, few enough not
/// to thrash.
const WORKERS: usize = 6;
/// The CNI network name: twilld reads twill-cni's records under `<dataDir>/<this>`.
const NETWORK: &str = "twlpods";

/// twill-cni next to twilld, built first if this test run did not build it
/// (`cargo test -p twilld` builds only this package's binary).
fn ensure_plugin() -> PathBuf {
    if let Some(p) = std::env::var_os("TWILL_CNI_BIN") {
        return PathBuf::from(p);
    }
    let dir = PathBuf::from(TWILLD).parent().unwrap().to_path_buf();
    let plugin = dir.join("twill-cni");
    if !plugin.is_file() {
        twill_testkit::cargo_build(&["twill-cni"], &dir);
    }
    assert!(
        plugin.is_file(),
        "{} is missing: run `cargo build -p twill-cni` first",
        plugin.display()
    );
    plugin
}

/// Pod namespaces made and removed in one `ip -batch` each (one `ip` per pod is slow).
struct PodNamespaces {
    names: Vec<String>,
}

impl PodNamespaces {
    fn new(n: usize) -> PodNamespaces {
        let names: Vec<String> = (0..n).map(|_| unique_name("pod", 40)).collect();
        let pods = PodNamespaces { names };
        pods.batch("add");
        pods
    }

    fn batch(&self, verb: &str) -> bool {
        let script: String = self
            .names
            .iter()
            .map(|n| format!("netns {verb} {n}\n"))
            .collect();
        let mut child = Command::new("ip")
            .args(["-force", "-batch", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run ip -batch");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        if !out.status.success() {
            eprintln!(
                "ip -batch netns {verb}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        out.status.success()
    }
}

impl Drop for PodNamespaces {
    fn drop(&mut self) {
        self.batch("del");
    }
}

/// A node namespace with its twilld and its files.
struct NodeNs {
    name: String,
    ns: TestNetns,
    dir: PathBuf,
    conf: Vec<u8>,
    _agent: AgentProc,
}

impl NodeNs {
    fn start(root: &TempDir, i: usize) -> NodeNs {
        let name = format!("node{i}");
        let ns = TestNetns::new(&format!("node{i}"));
        let dir = root.path.join(&name);
        std::fs::create_dir_all(&dir).unwrap();
        let p = |f: &str| dir.join(f).to_string_lossy().into_owned();
        let args: Vec<String> = [
            "--node-name",
            &name,
            "--node-ip",
            &format!("192.0.2.{}", 11 + i),
            "--store",
            "embedded",
            "--store-dir",
            &root.path.join("store").to_string_lossy(),
            // Its own namespace: the port is free there.
            "--listen",
            "127.0.0.1:9099",
            "--handoff-file",
            &p("node.json"),
            "--state-dir",
            &p("state"),
            "--cni-data-dir",
            &p("ipam"),
            "--cni-network",
            NETWORK,
            "--poll-interval-seconds",
            "0.2",
            "--min-free-addresses",
            "8",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let agent = AgentProc::spawn(
            &["ip", "netns", "exec", &ns.name],
            &args,
            dir.join("twilld.log"),
        );
        // What a runtime hands the plugin: no subnet, the blocks come from the hand-off.
        let conf = json!({
            "cniVersion": "1.1.0",
            "name": NETWORK,
            "type": "twill-cni",
            "bridge": "twl0",
            "ipam": {"handoffFile": p("node.json"), "dataDir": p("ipam")},
        });
        NodeNs {
            name,
            ns,
            conf: conf.to_string().into_bytes(),
            dir,
            _agent: agent,
        }
    }

    fn handoff(&self) -> Option<HandOff> {
        serde_json::from_slice(&std::fs::read(self.dir.join("node.json")).ok()?).ok()
    }

    /// twill-cni in the node's namespace, as a runtime runs it: env + config on stdin.
    fn cni(&self, plugin: &PathBuf, command: &str, cid: &str, pod_ns: &str) -> (bool, Value) {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.ns.name])
            .arg(plugin)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_PATH", "/opt/cni/bin")
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", cid)
            .env("CNI_NETNS", format!("/run/netns/{pod_ns}"))
            .env("CNI_IFNAME", "eth0")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn twill-cni");
        let _ = child.stdin.take().unwrap().write_all(&self.conf);
        let out = child.wait_with_output().unwrap();
        let json = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        (out.status.success(), json)
    }

    fn allocations(&self, store: &dyn Store) -> Vec<Allocation> {
        store
            .get(&key(&format!("allocations/{}", self.name)))
            .unwrap()
            .map(|kv| serde_json::from_slice(&kv.value).unwrap())
            .unwrap_or_default()
    }

    fn records(&self) -> usize {
        std::fs::read_dir(self.dir.join("ipam").join(NETWORK).join("ips"))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

/// Runs `job(i)` for i in 0..n on WORKERS threads.
fn parallel<T: Send>(n: usize, job: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let next = AtomicUsize::new(0);
    let out: Mutex<Vec<Option<T>>> = Mutex::new((0..n).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..WORKERS {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return;
                }
                let v = job(i);
                out.lock().unwrap()[i] = Some(v);
            });
        }
    });
    out.into_inner()
        .unwrap()
        .into_iter()
        .map(|v| v.expect("every job ran"))
        .collect()
}

fn cid(i: usize) -> String {
    format!("twlpod{i:04}")
}

#[test]
fn a_thousand_pods_over_26_blocks_get_no_address_twice_cluster_wide() {
    twill_testkit::require_root("a_thousand_pods_over_26_blocks_get_no_address_twice_cluster_wide");
    let plugin = ensure_plugin();
    let t0 = Instant::now();
    let root = TempDir::new("ipam1k");
    let store = EmbeddedStore::open(&root.path.join("store")).unwrap();
    store
        .put(
            &key("config"),
            // No masquerade: this test is about addresses; nft work per pod only slows it.
            &network_config("10.244.0.0/16", 26, 60, false),
            None,
        )
        .unwrap();
    let nodes: Vec<NodeNs> = (0..NODES).map(|i| NodeNs::start(&root, i)).collect();
    let pods = PodNamespaces::new(PODS);
    wait_for("every node's first block", Duration::from_secs(20), || {
        nodes
            .iter()
            .all(|n| n.handoff().is_some_and(|h| !h.blocks.is_empty()))
            .then_some(())
    });
    let setup = t0.elapsed();

    // ADD, round-robin over the nodes; code 11 (blocks full, the agent is claiming another
    // block) is retried after 100 ms, as a runtime would.
    let t_add = Instant::now();
    let retries = AtomicUsize::new(0);
    let added: Vec<Result<Ipv4Addr, String>> = parallel(PODS, |i| {
        let node = &nodes[i % NODES];
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (ok, reply) = node.cni(&plugin, "ADD", &cid(i), &pods.names[i]);
            if ok {
                let ip = reply["ips"][0]["address"].as_str().unwrap_or("");
                let net: Ipv4Net = ip.parse().map_err(|_| format!("pod {i}: {reply}"))?;
                return Ok(net.addr());
            }
            if reply["code"] == 11 && Instant::now() < deadline {
                retries.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            return Err(format!("ADD pod {i} on {}: {reply}", node.name));
        }
    });
    let add_time = t_add.elapsed();
    let failures: Vec<&String> = added.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failures.is_empty(),
        "{} ADDs failed, first: {:?}",
        failures.len(),
        failures.first()
    );
    let ips: Vec<Ipv4Addr> = added.into_iter().map(Result::unwrap).collect();
    let distinct: HashSet<Ipv4Addr> = ips.iter().copied().collect();
    assert_eq!(distinct.len(), PODS, "no address twice, cluster-wide");

    // The store: blocks pairwise disjoint, several /26 per node, every pod inside its own
    // node's blocks, and the hand-offs agree.
    let (kvs, _) = store.list(&key("blocks/")).unwrap();
    let blocks: Vec<Block> = kvs
        .iter()
        .map(|kv| serde_json::from_slice(&kv.value).unwrap())
        .collect();
    for (i, a) in blocks.iter().enumerate() {
        assert_eq!(a.cidr.prefix_len(), 26, "{}", a.cidr);
        for b in &blocks[i + 1..] {
            assert!(
                !a.cidr.contains(&b.cidr) && !b.cidr.contains(&a.cidr),
                "{} ({}) overlaps {} ({})",
                a.cidr,
                a.node,
                b.cidr,
                b.node
            );
        }
    }
    let mut held: HashMap<&str, Vec<Ipv4Net>> = HashMap::new();
    for b in &blocks {
        held.entry(b.node.as_str()).or_default().push(b.cidr);
    }
    // 250 pods need 5 blocks of 61 usable addresses.
    for n in &nodes {
        let mine = held.get(n.name.as_str()).cloned().unwrap_or_default();
        assert!(mine.len() >= 5, "{} holds {:?}", n.name, mine);
    }
    for (i, ip) in ips.iter().enumerate() {
        let node = &nodes[i % NODES].name;
        assert!(
            held[node.as_str()].iter().any(|b| b.contains(ip)),
            "pod {i}'s {ip} is outside {node}'s blocks {:?}",
            held[node.as_str()]
        );
    }
    for n in &nodes {
        let want: BTreeSet<Ipv4Net> = held[n.name.as_str()].iter().copied().collect();
        wait_for(
            &format!("{}'s hand-off to match the store", n.name),
            Duration::from_secs(5),
            || {
                let h = n.handoff()?;
                (h.blocks.iter().copied().collect::<BTreeSet<_>>() == want).then_some(())
            },
        );
    }

    // The agents publish exactly the 1000 pods, each on its node, veth present.
    let want: Vec<BTreeSet<(String, Ipv4Addr)>> = (0..NODES)
        .map(|k| {
            (0..PODS)
                .filter(|i| i % NODES == k)
                .map(|i| (cid(i), ips[i]))
                .collect()
        })
        .collect();
    for (k, n) in nodes.iter().enumerate() {
        let allocs = wait_for(
            &format!("{}'s allocations", n.name),
            Duration::from_secs(10),
            || {
                let a = n.allocations(&store);
                let got: BTreeSet<(String, Ipv4Addr)> =
                    a.iter().map(|a| (a.container_id.clone(), a.ip)).collect();
                (got == want[k]).then_some(a)
            },
        );
        assert_eq!(allocs.len(), want[k].len(), "{}: one entry per pod", n.name);
        assert!(
            allocs.iter().all(|a| a.present && a.ifname == "eth0"),
            "{}: every pod's veth is there",
            n.name
        );
    }
    let checks_done = t0.elapsed();

    // DEL every pod, in parallel; the records and the published allocations empty out.
    let t_del = Instant::now();
    let deleted: Vec<Result<(), String>> = parallel(PODS, |i| {
        let node = &nodes[i % NODES];
        let (ok, reply) = node.cni(&plugin, "DEL", &cid(i), &pods.names[i]);
        ok.then_some(())
            .ok_or_else(|| format!("DEL pod {i} on {}: {reply}", node.name))
    });
    let del_time = t_del.elapsed();
    let failures: Vec<&String> = deleted.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(failures.is_empty(), "{failures:?}");
    for n in &nodes {
        assert_eq!(n.records(), 0, "{}: records left after DEL", n.name);
        wait_for(
            &format!("{}'s allocations to empty", n.name),
            Duration::from_secs(10),
            || n.allocations(&store).is_empty().then_some(()),
        );
    }
    let blocks_per_node: Vec<usize> = nodes.iter().map(|n| held[n.name.as_str()].len()).collect();
    drop(pods);
    drop(nodes);
    eprintln!(
        "{PODS} pods on {NODES} nodes, {WORKERS} in flight: setup {setup:?}, ADD {add_time:?} \
         ({} retries on code 11), checks done at {checks_done:?}, DEL {del_time:?}, \
         blocks per node {blocks_per_node:?}, total with cleanup {:?}",
        retries.load(Ordering::Relaxed),
        t0.elapsed()
    );
}
