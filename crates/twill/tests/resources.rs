//! The resource commands end to end: the real `twill` binary against a real store,
//! populated by hand through the `Store` API where agents would write.
//!
//! Every scenario runs twice ([`on_every_store!`]): on an embedded store in a `twl…` temp
//! dir, and on a single etcd member started for it (failing when etcd is not installed).
//! The store flags `twill` gets come from one place, [`Cluster::flags`].

use serde_json::{json, Value};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;
use twill_store::embedded::EmbeddedStore;
use twill_store::etcd::{EtcdConfig, EtcdStore};
use twill_store::{LeaseId, Store, PREFIX};
use twill_testkit::etcd::EtcdMember;
use twill_testkit::TempDir;

struct Cluster {
    store: Box<dyn Store>,
    flags: Vec<String>,
    /// Files the tests write (resource files), and the embedded store's folder.
    dir: TempDir,
    _etcd: Option<EtcdMember>,
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Cluster {
    fn embedded(tag: &str) -> Cluster {
        let dir = TempDir::new(tag);
        let path = dir.path.join("store");
        let store = EmbeddedStore::open(&path).expect("open embedded store");
        Cluster {
            store: Box::new(store),
            flags: vec![
                "--store".into(),
                "embedded".into(),
                "--store-dir".into(),
                path.display().to_string(),
            ],
            dir,
            _etcd: None,
        }
    }

    /// A test of it fails when etcd is not installed (scripts/install-deps.sh installs it).
    fn etcd(tag: &str) -> Cluster {
        twill_testkit::require_program(tag, "etcd", "etcd-server");
        let member = EtcdMember::start(&format!("twl{tag}"));
        let url = member.client_url();
        let store =
            EtcdStore::connect(&EtcdConfig::new(vec![url.clone()])).expect("connect to etcd");
        Cluster {
            store: Box::new(store),
            flags: vec![
                "--store".into(),
                "etcd".into(),
                "--etcd-endpoints".into(),
                url,
            ],
            dir: TempDir::new(tag),
            _etcd: Some(member),
        }
    }

    /// The flags that point `twill` at this cluster's store.
    fn flags(&self) -> &[String] {
        &self.flags
    }

    fn twill_stdin(&self, args: &[&str], stdin: &str) -> Run {
        let mut child = Command::new(env!("CARGO_BIN_EXE_twill"))
            .args(self.flags())
            .args(args)
            // The environment must not pick another store.
            .env_remove("TWILL_STORE")
            .env_remove("TWILL_STORE_DIR")
            .env_remove("TWILL_ETCD_ENDPOINTS")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run twill");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into(),
            stderr: String::from_utf8_lossy(&out.stderr).into(),
        }
    }

    fn twill(&self, args: &[&str]) -> Run {
        self.twill_stdin(args, "")
    }

    fn ok(&self, args: &[&str]) -> String {
        let r = self.twill(args);
        assert_eq!(r.code, 0, "twill {args:?}: {}{}", r.stdout, r.stderr);
        r.stdout
    }

    fn apply(&self, text: &str) -> Run {
        let path = self.dir.path.join("apply.yaml");
        std::fs::write(&path, text).unwrap();
        self.twill(&["apply", "-f", path.to_str().unwrap()])
    }

    fn put(&self, key: &str, value: Value, lease: Option<LeaseId>) {
        self.store
            .put(
                &format!("{PREFIX}{key}"),
                &serde_json::to_vec(&value).unwrap(),
                lease,
            )
            .unwrap();
    }

    fn keys(&self) -> Vec<String> {
        let (kvs, _) = self.store.list(PREFIX).unwrap();
        kvs.into_iter().map(|kv| kv.key).collect()
    }

    /// What an agent would write: a leased status, leased blocks, its allocations.
    fn agent(&self, node: &str, addr: &str, blocks: &[&str], allocs: Value, live: bool) {
        let lease = if live {
            Some(self.store.grant(Duration::from_secs(600)).unwrap())
        } else {
            None
        };
        if live {
            self.put(
                &format!("nodes/{node}"),
                json!({"name": node, "address": addr, "autodetection": "first-found",
                    "reason": "eth0: first usable interface", "startedAt": 1, "agentVersion": "0.1.0"}),
                lease,
            );
        }
        let lease = lease.or_else(|| Some(self.store.grant(Duration::from_secs(600)).unwrap()));
        for b in blocks {
            let key = format!("blocks/{}", b.replace('/', "-"));
            self.put(
                &key,
                json!({"cidr": b, "node": node, "claimedAt": 1}),
                lease,
            );
        }
        self.put(&format!("allocations/{node}"), allocs, None);
    }
}

fn alloc(ip: &str, id: &str, present: bool) -> Value {
    json!({"ip": ip, "containerID": id, "ifname": "eth0", "hostVeth": format!("veth{id}"), "present": present})
}

const CONFIG: &str = "\
apiVersion: twill/v1
kind: NetworkConfig
metadata:
  name: default
spec:
  clusterCIDR: 10.244.0.0/16
  blockSize: 26
  mtu: 1450
---
kind: Node
metadata:
  name: n1
spec:
  ipv4Address: 192.0.2.11/24
";

fn apply_then_get_in_every_format(c: &Cluster) {
    let r = c.apply(CONFIG);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, "networkconfig configured\nnode/n1 configured\n");

    let t = c.ok(&["get", "config"]);
    assert_eq!(
        t,
        "CLUSTERCIDR     BLOCKSIZE   BACKEND   MTU    MASQUERADE\n10.244.0.0/16   26          none      1450   true\n"
    );
    let y = c.ok(&["get", "config", "-o", "yaml"]);
    assert!(
        y.contains("kind: NetworkConfig\n")
            && y.contains("  clusterCIDR: 10.244.0.0/16\n")
            && y.contains("  blockSize: 26\n"),
        "{y}"
    );
    let j: Value = serde_json::from_str(&c.ok(&["get", "config", "-o", "json"])).unwrap();
    assert_eq!(j["spec"]["mtu"], 1450);

    // The override without a running agent: NotReady.
    let t = c.ok(&["get", "nodes"]);
    assert_eq!(
        t,
        "NAME   ADDRESS   METHOD   BLOCKS   AGE   STATUS\nn1     -         -        -        -     NotReady\n"
    );
    let w = c.ok(&["get", "nodes", "-o", "wide"]);
    assert!(
        w.contains("192.0.2.11/24") && w.contains("no status key"),
        "{w}"
    );
    let y = c.ok(&["get", "node", "n1", "-o", "yaml"]);
    assert!(
        y.contains("kind: Node\nmetadata:\n  name: n1\nspec:\n  ipv4Address: 192.0.2.11/24\n"),
        "{y}"
    );
    let j: Value = serde_json::from_str(&c.ok(&["get", "nodes", "-o", "json"])).unwrap();
    assert_eq!(j["kind"], "List");
    assert_eq!(j["items"][0]["spec"]["ipv4Address"], "192.0.2.11/24");
    assert_eq!(j["items"][0]["status"]["state"], "NotReady");

    // The yaml printed re-applies as it is (from stdin), and changes nothing.
    let y = c.ok(&["get", "config", "-o", "yaml"]);
    let r = c.twill_stdin(&["apply", "-f", "-"], &y);
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (0, "networkconfig unchanged\n"),
        "{}",
        r.stderr
    );

    // Deleting the override.
    assert_eq!(c.ok(&["delete", "node", "n1"]), "node/n1 deleted\n");
    let r = c.twill(&["delete", "node", "n1"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("no override") && r.stderr.contains("twill node remove n1"),
        "{}",
        r.stderr
    );
    assert_eq!(
        c.ok(&["get", "nodes"]),
        "NAME   ADDRESS   METHOD   BLOCKS   AGE   STATUS\n"
    );
}

fn a_bad_file_is_refused_with_the_line_and_nothing_is_written(c: &Cluster) {
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "bad CIDR",
            "kind: NetworkConfig\nspec:\n  clusterCIDR: 10.244.0.0/33\n",
            &["line 3", "clusterCIDR"],
        ),
        (
            "unknown field",
            "kind: NetworkConfig\nspec:\n  clusterCIDR: 10.244.0.0/16\n  colour: blue\n",
            &["line 4", "colour"],
        ),
        (
            "wrong type",
            "kind: NetworkConfig\nspec:\n  clusterCIDR: 10.244.0.0/16\n  blockSize: big\n",
            &["line 4", "blockSize"],
        ),
        (
            "unknown kind",
            "kind: NetworkConfig\nspec:\n  clusterCIDR: 10.244.0.0/16\n---\nkind: Pod\nspec: {}\n",
            &["line 5", "kind", "NetworkConfig, Node, Block, BGPConfiguration, BGPPeer, NetworkPolicy, GlobalNetworkPolicy, Namespace, WorkloadEndpoint or List"],
        ),
        (
            "second document bad",
            "kind: NetworkConfig\nspec:\n  clusterCIDR: 10.244.0.0/16\n---\nkind: Node\nmetadata:\n  name: n1\nspec:\n  ipv4Address: 300.1.1.1\n",
            &["line 9", "spec.ipv4Address"],
        ),
    ];
    for (what, text, expect) in cases {
        let r = c.apply(text);
        assert_eq!(r.code, 1, "{what}: {}", r.stdout);
        for e in *expect {
            assert!(
                r.stderr.contains(e),
                "{what}: {e:?} missing in {}",
                r.stderr
            );
        }
        assert!(
            r.stderr.contains("nothing was applied"),
            "{what}: {}",
            r.stderr
        );
        assert_eq!(r.stdout, "", "{what}");
        assert!(c.keys().is_empty(), "{what}: wrote {:?}", c.keys());
    }
    let r = c.twill(&["apply", "-f", "/nonexistent/twl.yaml"]);
    assert!(
        r.code == 1 && r.stderr.contains("/nonexistent/twl.yaml"),
        "{}",
        r.stderr
    );
}

fn config_changes_under_held_blocks_are_refused(c: &Cluster) {
    assert_eq!(c.apply(CONFIG).code, 0);
    c.agent("n1", "192.0.2.11", &["10.244.1.0/26"], json!([]), true);
    let r = c.apply("kind: NetworkConfig\nspec:\n  clusterCIDR: 10.245.0.0/16\n  blockSize: 26\n");
    assert_eq!(r.code, 1);
    assert!(
        r.stderr
            .contains("clusterCIDR from 10.244.0.0/16 to 10.245.0.0/16"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("10.244.1.0/26 (n1)") && r.stderr.contains("twill node remove"),
        "{}",
        r.stderr
    );
    let r = c.twill(&["delete", "config"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("10.244.1.0/26 (n1)"), "{}", r.stderr);
    let j: Value = serde_json::from_str(&c.ok(&["get", "config", "-o", "json"])).unwrap();
    assert_eq!(j["spec"]["clusterCIDR"], "10.244.0.0/16", "unchanged");

    // Once the node is gone, both go through.
    c.ok(&["node", "remove", "n1", "--force"]);
    let r = c.apply("kind: NetworkConfig\nspec:\n  clusterCIDR: 10.245.0.0/16\n");
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(c.ok(&["delete", "config"]), "networkconfig deleted\n");
    assert!(c.keys().is_empty(), "{:?}", c.keys());
}

/// n1 and n2 live, each with a /26; n1 reports two pods.
fn populate(c: &Cluster) {
    assert_eq!(c.apply(CONFIG).code, 0);
    c.agent(
        "n1",
        "192.0.2.11",
        &["10.244.1.0/26"],
        json!([
            alloc("10.244.1.2", "a", true),
            alloc("10.244.1.3", "b", true)
        ]),
        true,
    );
    c.agent(
        "n2",
        "192.0.2.12",
        &["10.244.1.64/26"],
        json!([alloc("10.244.1.66", "c", true)]),
        true,
    );
}

fn ipam_show_check_and_get_blocks_on_a_clean_store(c: &Cluster) {
    populate(c);
    let r = c.twill(&["ipam", "check"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert_eq!(
        r.stdout,
        "ok: 0 conflicts, 0 leaks, 0 stranded, 0 stale blocks (2 nodes, 2 blocks, 3 addresses in use checked)\n"
    );
    assert_eq!(
        c.ok(&["ipam", "show"]),
        "NODE    BLOCKS           USED   FREE   STATUS\n\
         n1      10.244.1.0/26    2      59     Ready\n\
         n2      10.244.1.64/26   1      60     Ready\n\
         TOTAL   2 blocks         3      119\n\
         cluster 10.244.0.0/16: 2 of 1023 blocks held, 1021 free\n"
    );
    let j: Value = serde_json::from_str(&c.ok(&["ipam", "show", "-o", "json"])).unwrap();
    assert_eq!(j["totalUsed"], 3);
    assert_eq!(
        c.ok(&["get", "blocks"]),
        "CIDR             NODE   USED   FREE\n10.244.1.0/26    n1     2      59\n10.244.1.64/26   n2     1      60\n"
    );
    let t = c.ok(&["get", "nodes"]);
    assert!(
        t.contains("n1     192.0.2.11   first-found   10.244.1.0/26 "),
        "{t}"
    );
    assert!(t.contains("Ready"), "{t}");
}

fn ipam_check_finds_a_planted_leak_and_conflict(c: &Cluster) {
    populate(c);
    // A pod deleted without CNI DEL on n2, and n2 using an address of n1's block.
    c.put(
        "allocations/n2",
        json!([
            alloc("10.244.1.66", "c", true),
            alloc("10.244.1.67", "gone", false),
            alloc("10.244.1.5", "stray", true)
        ]),
        None,
    );
    let r = c.twill(&["ipam", "check"]);
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(r.stdout.starts_with("KIND       PROBLEM\n"), "{}", r.stdout);
    assert!(
        r.stdout.contains("CONFLICT   10.244.1.5 is used on n2 (container stray, eth0) but block 10.244.1.0/26 is held by n1"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("LEAK       10.244.1.67 is held on n2 (container gone, eth0) but its host veth vethgone is gone"), "{}", r.stdout);
    assert!(r.stdout.ends_with("FAILED: 1 conflicts, 1 leaks, 0 stranded, 0 stale blocks (2 nodes, 2 blocks, 5 addresses in use checked)\n"), "{}", r.stdout);

    let r = c.twill(&["ipam", "check", "-o", "json"]);
    assert_eq!(r.code, 1);
    let j: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(j["ok"], false);
    let kinds: Vec<&str> = j["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["CONFLICT", "LEAK"]);
}

fn node_remove_frees_blocks_and_refuses_a_live_node(c: &Cluster) {
    populate(c);
    // n3's agent is gone (no status key), its blocks and allocations remain.
    c.agent(
        "n3",
        "192.0.2.13",
        &["10.244.2.0/26", "10.244.2.64/26"],
        json!([alloc("10.244.2.2", "d", true)]),
        false,
    );
    c.put("nodeconfigs/n3", json!({"ipv4Address": "192.0.2.13"}), None);
    let r = c.twill(&["ipam", "check"]);
    assert_eq!(r.code, 0, "stale alone is not a failure: {}", r.stdout);
    assert!(
        r.stdout
            .contains("STALE   block 10.244.2.0/26 is held by n3"),
        "{}",
        r.stdout
    );

    let r = c.twill(&["node", "remove", "n1"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("still looks alive") && r.stderr.contains("--force"),
        "{}",
        r.stderr
    );
    assert!(
        c.keys().contains(&format!("{PREFIX}blocks/10.244.1.0-26")),
        "nothing deleted"
    );

    let out = c.ok(&["node", "remove", "n3"]);
    assert_eq!(
        out,
        "node/n3 removed: freed 2 blocks (10.244.2.0/26, 10.244.2.64/26), 1 address in use on it released; \
         deleted nodeconfigs/n3, allocations/n3\n"
    );
    let keys = c.keys();
    assert!(
        !keys
            .iter()
            .any(|k| k.contains("n3") || k.contains("10.244.2.")),
        "{keys:?}"
    );
    assert_eq!(c.twill(&["ipam", "check"]).stdout.lines().count(), 1);

    let out = c.ok(&["node", "remove", "n1", "--force"]);
    assert!(
        out.starts_with("node/n1 removed: freed 1 block (10.244.1.0/26), 2 addresses"),
        "{out}"
    );
    assert!(!c
        .keys()
        .iter()
        .any(|k| k.contains("n1") || k.contains("10.244.1.0-26")));
    assert!(
        c.keys().contains(&format!("{PREFIX}blocks/10.244.1.64-26")),
        "n2's block untouched"
    );

    let r = c.twill(&["node", "remove", "n9"]);
    assert!(
        r.code == 1 && r.stderr.contains("node n9 not found"),
        "{}",
        r.stderr
    );
}

/// Every key with its value and revision: what "nothing changed" means.
fn snapshot(c: &Cluster) -> Vec<(String, Vec<u8>, u64)> {
    let (kvs, _) = c.store.list(PREFIX).unwrap();
    kvs.into_iter()
        .map(|kv| (kv.key, kv.value, kv.mod_revision as u64))
        .collect()
}

fn get_output_applies_again_for_every_kind(c: &Cluster) {
    populate(c);
    // n1 has an override, n2 none.
    assert_eq!(
        c.apply("kind: Node\nmetadata: {name: n1}\nspec: {ipv4Address: 192.0.2.11/24}\n")
            .code,
        0
    );
    let before = snapshot(c);
    let cases: &[(&[&str], &[&str])] = &[
        (&["config"], &["networkconfig"]),
        (&["config", "default"], &["networkconfig"]),
        (&["nodes"], &["node/n1", "node/n2"]),
        (&["node", "n2"], &["node/n2"]),
        (
            &["blocks"],
            &["block/10.244.1.0-26", "block/10.244.1.64-26"],
        ),
        (&["block", "10.244.1.64/26"], &["block/10.244.1.64-26"]),
    ];
    for (get, names) in cases {
        for out in ["json", "yaml"] {
            let mut args = vec!["get"];
            args.extend_from_slice(get);
            args.extend(["-o", out]);
            let printed = c.ok(&args);
            let r = c.twill_stdin(&["apply", "-f", "-"], &printed);
            let want: String = names.iter().map(|n| format!("{n} unchanged\n")).collect();
            assert_eq!(
                (r.code, r.stdout.as_str()),
                (0, want.as_str()),
                "twill {args:?} then apply: {}\n{printed}",
                r.stderr
            );
            assert_eq!(
                snapshot(c),
                before,
                "twill {args:?} then apply changed the store"
            );
        }
    }
    // An edit of what was printed goes in.
    let y = c.ok(&["get", "node", "n2", "-o", "yaml"]);
    let edited = y.replace("spec: {}", "spec:\n  ipv4Address: 192.0.2.12/24");
    assert_ne!(edited, y, "{y}");
    let r = c.twill_stdin(&["apply", "-f", "-"], &edited);
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (0, "node/n2 configured\n"),
        "{}",
        r.stderr
    );
    // A block is the agents' to claim: one held by another node, or by none, is refused
    // and nothing is written.
    let before = snapshot(c);
    let j = c.ok(&["get", "block", "10.244.1.0/26", "-o", "json"]);
    for (text, why) in [
        (
            j.replace("\"node\": \"n1\"", "\"node\": \"n2\""),
            "held by n1, the file says n2",
        ),
        (
            j.replace("10.244.1.0/26", "10.244.9.0/26")
                .replace("10.244.1.0-26", "10.244.9.0-26"),
            "no node holds it",
        ),
    ] {
        let r = c.twill_stdin(&["apply", "-f", "-"], &text);
        assert_eq!(r.code, 1, "{text}");
        assert!(
            r.stderr.contains(why) && r.stderr.contains("nothing was applied"),
            "{}",
            r.stderr
        );
    }
    assert_eq!(snapshot(c), before);
}

/// Calico mode's resources as a Calico user writes them.
const BGP_FILE: &str = "\
apiVersion: projectcalico.org/v3
kind: BGPConfiguration
metadata:
  name: default
spec:
  nodeToNodeMeshEnabled: false
  asNumber: 65001
  communities: ['65001:100']
---
kind: BGPPeer
metadata:
  name: rack1-tor
spec:
  nodeSelector: rack == 'r1'
  peerIP: 192.0.2.1
  asNumber: 65000
  password:
    file: /etc/twill/bgp-password
---
kind: BGPPeer
metadata:
  name: to-rr
spec:
  peerSelector: has(route-reflector)
---
kind: Node
metadata:
  name: n1
  labels:
    rack: r1
    route-reflector: 'true'
spec:
  bgp:
    routeReflectorClusterID: 244.0.0.1
";

fn bgp_resources_apply_get_and_delete(c: &Cluster) {
    // No configuration yet: the defaults, said so; the store is not created for it.
    let r = c.twill(&["get", "bgpconfig"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout
            .contains("default   true          64512      179          120s")
            && r.stdout
                .contains("No BGPConfiguration is stored: these defaults apply"),
        "{}",
        r.stdout
    );
    let r = c.twill(&["get", "bgpconfig", "-o", "yaml"]);
    assert!(r.stderr.contains("defaults apply"), "{}", r.stderr);
    let r = c.twill_stdin(&["apply", "-f", "-"], &r.stdout);
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (0, "bgpconfiguration/default unchanged\n"),
        "{}",
        r.stderr
    );
    assert!(c.keys().is_empty(), "{:?}", c.keys());

    let r = c.apply(BGP_FILE);
    assert_eq!((r.code, r.stderr.as_str()), (0, ""), "nothing to note");
    assert_eq!(
        r.stdout,
        "bgpconfiguration/default configured\nbgppeer/rack1-tor configured\nbgppeer/to-rr configured\nnode/n1 configured\n"
    );
    assert_eq!(
        c.keys(),
        [
            format!("{PREFIX}bgpconfig"),
            format!("{PREFIX}bgppeers/rack1-tor"),
            format!("{PREFIX}bgppeers/to-rr"),
            format!("{PREFIX}nodeconfigs/n1"),
        ]
    );
    // The store holds the backend's vocabulary, labels with the node's spec.
    let (kvs, _) = c.store.list(&format!("{PREFIX}nodeconfigs/n1")).unwrap();
    let spec: Value = serde_json::from_slice(&kvs[0].value).unwrap();
    assert_eq!(spec["labels"]["route-reflector"], "true");
    assert_eq!(spec["bgp"]["routeReflectorClusterID"], "244.0.0.1");

    let t = c.ok(&["get", "bgpconfig"]);
    assert_eq!(
        t,
        "NAME      MESHENABLED   ASNUMBER   LISTENPORT   GRACEFULRESTART\ndefault   false         65001      179          120s\n"
    );
    let t = c.ok(&["get", "bgppeers"]);
    assert_eq!(
        t,
        "NAME        PEERIP      PEERSELECTOR           NODE           ASN\n\
         rack1-tor   192.0.2.1   -                      rack == 'r1'   65000\n\
         to-rr       -           has(route-reflector)   (global)       (node's)\n"
    );
    let j: Value =
        serde_json::from_str(&c.ok(&["get", "bgppeer", "rack1-tor", "-o", "json"])).unwrap();
    assert_eq!(j["kind"], "BGPPeer");
    assert_eq!(j["spec"]["password"]["file"], "/etc/twill/bgp-password");
    let y = c.ok(&["get", "node", "n1", "-o", "yaml"]);
    assert!(y.contains("metadata:\n  labels:\n    rack: r1\n"), "{y}");

    // Everything printed applies back unchanged, in both formats.
    let before = snapshot(c);
    for get in [
        &["bgpconfig"][..],
        &["bgppeers"],
        &["bgppeer", "to-rr"],
        &["node", "n1"],
    ] {
        for out in ["yaml", "json"] {
            let mut args = vec!["get"];
            args.extend_from_slice(get);
            args.extend(["-o", out]);
            let printed = c.ok(&args);
            let r = c.twill_stdin(&["apply", "-f", "-"], &printed);
            assert!(
                r.code == 0 && !r.stdout.contains("configured"),
                "{args:?}: {}{}\n{printed}",
                r.stdout,
                r.stderr
            );
        }
    }
    assert_eq!(snapshot(c), before);

    // An edit goes in.
    let r = c.apply("kind: BGPPeer\nmetadata: {name: to-rr}\nspec:\n  peerSelector: route-reflector == 'true'\n");
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (0, "bgppeer/to-rr configured\n"),
        "{}",
        r.stderr
    );
    assert!(c
        .ok(&["get", "bgppeers"])
        .contains("route-reflector == 'true'"));
    // A selector no node's labels match goes in, with a note saying it makes no session.
    let r = c.apply("kind: BGPPeer\nmetadata: {name: nobody}\nspec:\n  peerSelector: has(spine)\n");
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (0, "bgppeer/nobody configured\n"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr
            .contains("note: bgppeer/nobody: peerSelector has(spine) matches no node's labels yet"),
        "{}",
        r.stderr
    );
    c.ok(&["delete", "bgppeer", "nobody"]);

    // Deleting.
    assert_eq!(
        c.ok(&["delete", "bgppeer", "to-rr"]),
        "bgppeer/to-rr deleted\n"
    );
    let r = c.twill(&["delete", "bgppeer", "to-rr"]);
    assert!(
        r.code == 1 && r.stderr.contains("bgppeer/to-rr not found"),
        "{}",
        r.stderr
    );
    assert_eq!(
        c.ok(&["delete", "bgpconfig"]),
        "bgpconfiguration/default deleted: the defaults apply again\n"
    );
    let r = c.twill(&["delete", "bgpconfig"]);
    assert!(
        r.code == 1 && r.stderr.contains("defaults already apply"),
        "{}",
        r.stderr
    );
    assert!(c
        .ok(&["get", "bgpconfig"])
        .contains("No BGPConfiguration is stored"));
    let r = c.twill(&["get", "bgppeer", "to-rr"]);
    assert!(
        r.code == 1 && r.stderr.contains("not found"),
        "{}",
        r.stderr
    );
}

fn bad_bgp_files_leave_the_store_untouched(c: &Cluster) {
    assert_eq!(c.apply(BGP_FILE).code, 0);
    let before = snapshot(c);
    // Each bad document after good ones: the whole file is refused, naming the document's
    // line and field, and the fix.
    let good =
        "kind: BGPPeer\nmetadata: {name: fine}\nspec: {peerIP: 192.0.2.7, asNumber: 65007}\n---\n";
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "AS 0",
            "kind: BGPConfiguration\nmetadata: {name: default}\nspec:\n  asNumber: 0\n",
            &["line 8", "spec.asNumber", "0 is not an AS number"],
        ),
        (
            "a second config name",
            "kind: BGPConfiguration\nmetadata:\n  name: prod\nspec: {}\n",
            &["line 7", "metadata.name", "name: default"],
        ),
        (
            "both peerIP and peerSelector",
            "kind: BGPPeer\nmetadata: {name: x}\nspec:\n  peerIP: 192.0.2.1\n  peerSelector: all()\n",
            &["spec.peerSelector", "exclude each other"],
        ),
        (
            "peerIP without asNumber",
            "kind: BGPPeer\nmetadata: {name: x}\nspec:\n  peerIP: 192.0.2.1\n",
            &["spec.asNumber", "required with peerIP"],
        ),
        (
            "a selector that does not parse",
            "kind: BGPPeer\nmetadata: {name: x}\nspec:\n  peerSelector: has(route-reflector\n",
            &["line 8", "spec.peerSelector", "at column 20", "expected ')'"],
        ),
        (
            "a bad peer address",
            "kind: BGPPeer\nmetadata: {name: x}\nspec:\n  peerIP: 192.0.2.1:0\n  asNumber: 65000\n",
            &["line 8", "spec.peerIP", "port 0"],
        ),
        (
            "a relative password file",
            "kind: BGPPeer\nmetadata: {name: x}\nspec:\n  peerIP: 192.0.2.1\n  asNumber: 65000\n  password:\n    file: bgp-password\n",
            &["line 11", "spec.password.file", "absolute path"],
        ),
        (
            "a key too long",
            &format!("kind: BGPPeer\nmetadata: {{name: x}}\nspec:\n  peerIP: 192.0.2.1\n  asNumber: 65000\n  password:\n    value: {}\n", "k".repeat(81)),
            &["spec.password.value", "at most 80 bytes"],
        ),
        (
            "no name",
            "kind: BGPPeer\nspec:\n  peerIP: 192.0.2.1\n  asNumber: 65000\n",
            &["line 5", "metadata.name", "empty"],
        ),
        (
            "a bad label",
            "kind: Node\nmetadata:\n  name: n1\n  labels:\n    rack: r 1\nspec: {}\n",
            &["line 9", "metadata.labels.rack", "not a label value"],
        ),
        (
            "an unknown field",
            "kind: BGPConfiguration\nspec:\n  logSeverityScreen: Info\n",
            &["line 7", "logSeverityScreen"],
        ),
    ];
    for (what, text, expect) in cases {
        let r = c.apply(&format!("{good}{text}"));
        assert_eq!(r.code, 1, "{what}: {}", r.stdout);
        for e in *expect {
            assert!(
                r.stderr.contains(e),
                "{what}: {e:?} missing in {}",
                r.stderr
            );
        }
        assert!(
            r.stderr.contains("nothing was applied"),
            "{what}: {}",
            r.stderr
        );
        assert_eq!(r.stdout, "", "{what}");
        assert_eq!(snapshot(c), before, "{what}: the store changed");
    }
}

/// `twill node status` over what twilld's bgp backend publishes: the test writes the
/// agents' keys (status, probes, `routingstatus/<node>`, all leased) as twilld would.
fn node_status_shows_bgp_sessions_and_the_stuck_trap(c: &Cluster) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let lease = Some(c.store.grant(Duration::from_secs(600)).unwrap());
    let status = |name: &str, addr: &str, iface: &str| {
        c.put(
            &format!("nodes/{name}"),
            json!({"name": name, "address": addr, "autodetection": "first-found",
                "reason": format!("{iface}: first usable interface"), "startedAt": now - 600}),
            lease,
        );
    };
    status("n1", "192.0.2.11", "eth0");
    status("n2", "192.0.2.12", "eth0");
    let session = |addr: &str, node: &str, state: &str, since: u64, info: &str, rx: u64| {
        json!({"address": addr, "node": node, "peerType": "nodeMesh", "asn": 64512,
            "state": state, "since": since, "info": info,
            "prefixesReceived": rx, "prefixesAdvertised": 1})
    };
    // Up both ways: the tables, exit 0.
    c.put(
        "routingstatus/n1",
        json!({"protocol": "bgp", "routerID": "192.0.2.11", "asn": 64512,
            "peers": [session("192.0.2.12", "n2", "Established", now - 300, "", 1)]}),
        lease,
    );
    c.put(
        "routingstatus/n2",
        json!({"protocol": "bgp", "routerID": "192.0.2.12", "asn": 64512,
            "peers": [session("192.0.2.11", "n1", "Established", now - 300, "", 1)]}),
        lease,
    );
    let r = c.twill(&["node", "status"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("\nNode n1: 192.0.2.11 (first-found)\n"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains(
            "\nIPv4 BGP status\n\
             +--------------+-------------------+-------+----------+-------------+\n\
             | PEER ADDRESS |     PEER TYPE     | STATE |  SINCE   |    INFO     |\n\
             +--------------+-------------------+-------+----------+-------------+\n"
        ) && r
            .stdout
            .contains("| 192.0.2.12   | node-to-node mesh | up    |"),
        "{}",
        r.stdout
    );
    let j: Value =
        serde_json::from_str(&c.ok(&["node", "status", "--node", "n2", "-o", "json"])).unwrap();
    assert_eq!(j["nodes"].as_array().unwrap().len(), 1);
    let p = &j["nodes"][0]["routing"]["peers"][0];
    assert_eq!(
        (p["address"].as_str(), p["state"].as_str()),
        (Some("192.0.2.11"), Some("Established"))
    );
    assert_eq!(
        (
            p["prefixesReceived"].as_u64(),
            p["prefixesAdvertised"].as_u64()
        ),
        (Some(1), Some(1))
    );

    // n2 moves to an address n1 cannot reach (first-found on the wrong interface): its
    // sessions stick in Active and Connect, and n1's probes fail.
    status("n2", "10.0.5.2", "eth1");
    c.put(
        "peers/n1",
        json!({"address": "192.0.2.11", "interface": "eth0", "peers": {"n2": {"address": "10.0.5.2",
            "reachable": false, "since": now - 60, "failures": 12, "error": "no reply"}}}),
        lease,
    );
    c.put(
        "routingstatus/n1",
        json!({"protocol": "bgp", "routerID": "192.0.2.11", "asn": 64512,
            "peers": [session("10.0.5.2", "n2", "Connect", now - 60, "Connection timed out", 0)]}),
        lease,
    );
    c.put(
        "routingstatus/n2",
        json!({"protocol": "bgp", "routerID": "10.0.5.2", "asn": 64512,
            "peers": [session("192.0.2.11", "n1", "Active", now - 60, "", 0)]}),
        lease,
    );
    let r = c.twill(&["node", "status"]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout
            .contains("| 10.0.5.2     | node-to-node mesh | start |")
            && r.stdout.contains("| Connect Connection timed out |"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("WARNING: BGP sessions with n2 at 10.0.5.2 are stuck in Connect on n1")
            && r.stdout.contains("Probes from n1 cannot reach 10.0.5.2 either (no reply)")
            && r.stdout.contains("Fix: set ipAutodetection in n2's twilld config (interface=eth0 or can-reach=192.0.2.11), or `twill apply` a Node n2 with spec.ipv4Address"),
        "{}",
        r.stdout
    );
    let j: Value =
        serde_json::from_str(&c.twill(&["node", "status", "-o", "json"]).stdout).unwrap();
    assert!(
        j["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w.as_str().unwrap().contains("stuck in Connect")),
        "{j}"
    );
}

/// Network policy's kinds as users paste them from Kubernetes and Calico.
const POLICY_FILE: &str = "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: allow-b
  namespace: x
spec:
  podSelector:
    matchLabels:
      pod: a
  ingress:
  - from:
    - podSelector:
        matchLabels:
          pod: b
      namespaceSelector:
        matchExpressions:
        - {key: ns, operator: In, values: [x, y]}
    - ipBlock:
        cidr: 192.0.2.0/24
        except: [192.0.2.128/25]
    ports:
    - protocol: TCP
      port: 80
      endPort: 81
    - protocol: UDP
      port: serve-81-udp
---
kind: NetworkPolicy
metadata:
  name: default-deny
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata:
  name: deny-db
spec:
  order: 10
  selector: role == 'db'
  ingress:
  - action: Log
  - action: Deny
    protocol: TCP
    source:
      selector: role != 'app'
    destination:
      ports: [5432, '6000:6010']
  - action: Pass
---
kind: GlobalNetworkPolicy
metadata:
  name: allow-dns
spec:
  order: 1
  types: [Egress]
  egress:
  - action: Allow
    protocol: UDP
    destination:
      nets: [10.96.0.10/32]
      ports: [53]
---
apiVersion: v1
kind: Namespace
metadata:
  name: x
  labels:
    ns: x
";

/// What twilld publishes for a pod (the test writes it where the agent would, leased).
fn endpoint(node: &str, ns: &str, pod: &str, ip: &str, labels: Value) -> Value {
    json!({"namespace": ns, "pod": pod, "node": node, "containerID": format!("c-{pod}"),
        "ifname": "eth0", "hostVeth": format!("veth{pod}"), "ips": [ip],
        "mac": "02:00:00:00:00:01", "wiring": "bridge", "labels": labels,
        "namedPorts": [{"name": "serve-81-udp", "port": 81, "protocol": "udp"}]})
}

fn policy_resources_apply_get_and_delete(c: &Cluster) {
    let r = c.apply(POLICY_FILE);
    assert_eq!((r.code, r.stderr.as_str()), (0, ""), "{}", r.stdout);
    assert_eq!(
        r.stdout,
        "networkpolicy/x/allow-b configured\nnetworkpolicy/default/default-deny configured\n\
         globalnetworkpolicy/deny-db configured\nglobalnetworkpolicy/allow-dns configured\nnamespace/x configured\n"
    );
    assert_eq!(
        c.keys(),
        [
            format!("{PREFIX}globalnetworkpolicies/allow-dns"),
            format!("{PREFIX}globalnetworkpolicies/deny-db"),
            format!("{PREFIX}namespaces/x"),
            format!("{PREFIX}networkpolicies/default/default-deny"),
            format!("{PREFIX}networkpolicies/x/allow-b"),
        ]
    );
    // The store holds the shared vocabulary, read back by its own type.
    let (kvs, _) = c
        .store
        .list(&format!("{PREFIX}networkpolicies/x/"))
        .unwrap();
    let spec: twill_api::policy::NetworkPolicySpec = serde_json::from_slice(&kvs[0].value).unwrap();
    assert_eq!(spec.ingress[0].ports[0].end_port, Some(81));
    let (kvs, _) = c.store.list(&format!("{PREFIX}namespaces/x")).unwrap();
    assert_eq!(
        serde_json::from_slice::<Value>(&kvs[0].value).unwrap(),
        json!({"labels": {"ns": "x"}})
    );

    // Pods, as their agents publish them, and their namespaces appear.
    let lease = Some(c.store.grant(Duration::from_secs(600)).unwrap());
    c.put(
        "endpoints/n1/x/a",
        endpoint("n1", "x", "a", "10.244.1.2", json!({"pod": "a"})),
        lease,
    );
    c.put(
        "endpoints/n2/y/b",
        endpoint("n2", "y", "b", "10.244.2.2", json!({"pod": "b"})),
        lease,
    );

    assert_eq!(
        c.ok(&["get", "netpol", "-A"]),
        "NAMESPACE   NAME           POD-SELECTOR   TYPES\n\
         default     default-deny   <none>         Ingress,Egress\n\
         x           allow-b        pod=a          Ingress\n"
    );
    assert_eq!(
        c.ok(&["get", "networkpolicies"]),
        "NAMESPACE   NAME           POD-SELECTOR   TYPES\n\
         default     default-deny   <none>         Ingress,Egress\n"
    );
    let r = c.twill(&["get", "networkpolicy", "-n", "y"]);
    assert_eq!(r.stdout, "NAMESPACE   NAME   POD-SELECTOR   TYPES\n");
    assert!(
        r.stderr
            .contains("2 NetworkPolicies in other namespaces; -A lists them"),
        "{}",
        r.stderr
    );
    assert_eq!(
        c.ok(&["get", "netpol", "allow-b", "-n", "x", "-o", "wide"]),
        "NAMESPACE   NAME      POD-SELECTOR   TYPES     INGRESS-RULES   EGRESS-RULES\n\
         x           allow-b   pod=a          Ingress   1               0\n"
    );
    // In the order they are evaluated.
    assert_eq!(
        c.ok(&["get", "gnp"]),
        "NAME        ORDER   SELECTOR       TYPES\n\
         allow-dns   1       all()          Egress\n\
         deny-db     10      role == 'db'   Ingress\n"
    );
    assert_eq!(
        c.ok(&["get", "ns"]),
        "NAME      PODS   POLICIES   LABELS\n\
         default   0      1          kubernetes.io/metadata.name=default\n\
         x         1      1          kubernetes.io/metadata.name=x,ns=x\n\
         y         1      0          kubernetes.io/metadata.name=y\n"
    );
    assert_eq!(
        c.ok(&["get", "wep", "-A"]),
        "NAMESPACE   POD   NODE   IPS          INTERFACE   LABELS\n\
         x           a     n1     10.244.1.2   vetha       pod=a\n\
         y           b     n2     10.244.2.2   vethb       pod=b\n"
    );
    let w = c.ok(&["get", "endpoints", "b", "-n", "y", "-o", "wide"]);
    assert!(
        w.ends_with("eth0     02:00:00:00:00:01   bridge   serve-81-udp=81/udp   c-b\n"),
        "{w}"
    );
    let j: Value =
        serde_json::from_str(&c.ok(&["get", "endpoints", "a", "-n", "x", "-o", "json"])).unwrap();
    assert_eq!(j["spec"]["ips"][0], "10.244.1.2");
    assert_eq!(j["status"]["labels"]["pod"], "a");
    let y = c.ok(&["get", "netpol", "allow-b", "-n", "x", "-o", "yaml"]);
    assert!(
        y.starts_with("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: allow-b\n  namespace: x\n")
            && y.contains("protocol: UDP\n"),
        "{y}"
    );
    // Likely mistakes are applied, with a note on stderr.
    let r = c.apply("kind: NetworkPolicy\nmetadata: {name: egress-only, namespace: x}\nspec:\n  policyTypes: [Egress]\n  ingress:\n  - ports: [{port: serve-80-tcp}]\n");
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("note: networkpolicy/x/egress-only: its ingress rules are ignored")
            && r.stderr
                .contains("no pod declares the named port serve-80-tcp/tcp"),
        "{}",
        r.stderr
    );
    c.ok(&["delete", "netpol", "egress-only", "-n", "x"]);
    let r = c.twill(&["get", "gnp", "-n", "x"]);
    assert!(
        r.code != 0 && r.stderr.contains("not in namespaces"),
        "{}",
        r.stderr
    );

    // Everything printed applies back unchanged, in both formats.
    let before = snapshot(c);
    for get in [
        &["netpol", "-A"][..],
        &["netpol", "allow-b", "-n", "x"],
        &["gnp"],
        &["gnp", "deny-db"],
        &["ns"],
        &["ns", "y"],
        &["endpoints", "-A"],
        &["wep", "a", "-n", "x"],
    ] {
        for out in ["yaml", "json"] {
            let mut args = vec!["get"];
            args.extend_from_slice(get);
            args.extend(["-o", out]);
            let printed = c.ok(&args);
            let r = c.twill_stdin(&["apply", "-f", "-"], &printed);
            assert!(
                r.code == 0 && !r.stdout.contains("configured") && r.stdout.contains("unchanged"),
                "{args:?}: {}{}\n{printed}",
                r.stdout,
                r.stderr
            );
        }
    }
    assert_eq!(snapshot(c), before);

    // Endpoints are twilld's: an edited one is refused with the fix, and nothing written.
    let y = c.ok(&["get", "wep", "a", "-n", "x", "-o", "yaml"]);
    let edited = y.replace("    pod: a\n", "    pod: z\n");
    assert_ne!(edited, y);
    let r = c.twill_stdin(&["apply", "-f", "-"], &edited);
    assert!(
        r.code == 1
            && r.stderr
                .contains("workloadendpoint/x/a: differs from what node n1 publishes")
            && r.stderr.contains("twill label pod x/a KEY=VALUE")
            && r.stderr.contains("nothing was applied"),
        "{}",
        r.stderr
    );
    assert_eq!(snapshot(c), before);

    // An edit goes in; a namespace labelled for the first time gets its key.
    let y = c.ok(&["get", "ns", "y", "-o", "yaml"]);
    let r = c.twill_stdin(
        &["apply", "-f", "-"],
        &y.replace("  labels:\n", "  labels:\n    ns: y\n"),
    );
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (0, "namespace/y configured\n"),
        "{}",
        r.stderr
    );
    assert!(c
        .ok(&["get", "ns", "y"])
        .contains("kubernetes.io/metadata.name=y,ns=y"));

    // Deleting.
    assert_eq!(
        c.ok(&["delete", "netpol", "allow-b", "-n", "x"]),
        "networkpolicy/x/allow-b deleted\n"
    );
    let r = c.twill(&["delete", "netpol", "allow-b", "-n", "x"]);
    assert!(
        r.code == 1 && r.stderr.contains("networkpolicy/x/allow-b not found"),
        "{}",
        r.stderr
    );
    assert_eq!(
        c.ok(&["delete", "networkpolicy", "default-deny"]),
        "networkpolicy/default/default-deny deleted\n"
    );
    assert_eq!(
        c.ok(&["delete", "gnp", "deny-db"]),
        "globalnetworkpolicy/deny-db deleted\n"
    );
    let r = c.twill(&["delete", "globalnetworkpolicy", "deny-db"]);
    assert!(
        r.code == 1 && r.stderr.contains("not found"),
        "{}",
        r.stderr
    );
    assert!(c
        .ok(&["delete", "ns", "x"])
        .starts_with("namespace/x deleted"));
    let r = c.twill(&["delete", "namespace", "x"]);
    assert!(
        r.code == 1 && r.stderr.contains("no labels stored"),
        "{}",
        r.stderr
    );
    assert_eq!(
        c.keys(),
        [
            format!("{PREFIX}endpoints/n1/x/a"),
            format!("{PREFIX}endpoints/n2/y/b"),
            format!("{PREFIX}globalnetworkpolicies/allow-dns"),
            format!("{PREFIX}namespaces/y"),
        ]
    );
}

fn bad_policy_files_leave_the_store_untouched(c: &Cluster) {
    assert_eq!(c.apply(POLICY_FILE).code, 0);
    let before = snapshot(c);
    // Each bad document after good ones (a new policy and a changed one): the whole file
    // is refused, naming the line, the field and the fix.
    let good =
        "kind: NetworkPolicy\nmetadata: {name: fine, namespace: z}\nspec: {podSelector: {}}\n---\n\
                kind: Namespace\nmetadata: {name: x, labels: {ns: changed}}\n---\n";
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "ipBlock with a selector",
            "kind: NetworkPolicy\nmetadata: {name: p}\nspec:\n  ingress:\n  - from:\n    - podSelector: {}\n    - ipBlock: {cidr: 10.0.0.0/8}\n      namespaceSelector: {}\n",
            &["line 14", "spec.ingress[0].from[1].ipBlock", "put it in a peer of its own"],
        ),
        (
            "except outside the cidr",
            "kind: NetworkPolicy\nmetadata: {name: p}\nspec:\n  egress:\n  - to:\n    - ipBlock:\n        cidr: 10.0.0.0/8\n        except:\n        - 10.0.0.0/8\n",
            &["line 16", "spec.egress[0].to[0].ipBlock.except[0]", "strictly inside"],
        ),
        (
            "endPort with a named port",
            "kind: NetworkPolicy\nmetadata: {name: p}\nspec:\n  ingress:\n  - ports:\n    - port: http\n      endPort: 90\n",
            &["line 14", "spec.ingress[0].ports[0].endPort", "numeric port"],
        ),
        (
            "endPort below port",
            "kind: NetworkPolicy\nmetadata: {name: p}\nspec:\n  ingress:\n  - ports:\n    - port: 90\n      endPort: 80\n",
            &["line 14", "endPort must be at least port"],
        ),
        (
            "a port name too long",
            "kind: NetworkPolicy\nmetadata: {name: p}\nspec:\n  ingress:\n  - ports:\n    - port: a-very-long-port-name\n",
            &["line 13", "spec.ingress[0].ports[0].port", "at most 15"],
        ),
        (
            "a port out of range",
            "kind: NetworkPolicy\nmetadata: {name: p}\nspec:\n  ingress:\n  - ports:\n    - port: 65536\n",
            &["line 13", "65536 is not a port"],
        ),
        (
            "In without values",
            "kind: NetworkPolicy\nmetadata: {name: p}\nspec:\n  podSelector:\n    matchExpressions:\n    - key: pod\n      operator: In\n",
            &["spec.podSelector.matchExpressions[0].values", "needs values"],
        ),
        (
            "an unknown field",
            "kind: NetworkPolicy\nmetadata: {name: p}\nspec:\n  podSelectr: {}\n",
            &["line 11", "unknown field `podSelectr`"],
        ),
        (
            "a bad namespace",
            "kind: NetworkPolicy\nmetadata: {name: p, namespace: Prod}\nspec: {}\n",
            &["line 9", "metadata.namespace"],
        ),
        (
            "a selector that does not parse",
            "kind: GlobalNetworkPolicy\nmetadata: {name: g}\nspec:\n  selector: role == db\n",
            &["line 11", "spec.selector", "at column 9"],
        ),
        (
            "ports without a protocol",
            "kind: GlobalNetworkPolicy\nmetadata: {name: g}\nspec:\n  ingress:\n  - action: Allow\n    destination:\n      ports: [80]\n",
            &["line 14", "spec.ingress[0].destination.ports", "add protocol: TCP"],
        ),
        (
            "a backwards range",
            "kind: GlobalNetworkPolicy\nmetadata: {name: g}\nspec:\n  ingress:\n  - action: Allow\n    protocol: TCP\n    destination:\n      ports: ['90:80']\n",
            &["line 15", "write \"80:90\""],
        ),
        (
            "an order that is not a number",
            "kind: GlobalNetworkPolicy\nmetadata: {name: g}\nspec:\n  order: .inf\n",
            &["line 11", "spec.order", "finite"],
        ),
        (
            "a misspelt metadata field",
            "kind: NetworkPolicy\nmetadata:\n  name: p\n  namepsace: x\nspec: {}\n",
            &["line 11", "metadata", "unknown field `namepsace`"],
        ),
        (
            "a namespace name with a dot",
            "kind: Namespace\nmetadata: {name: a.b}\n",
            &["metadata.name", "DNS label"],
        ),
        (
            "a bad namespace label",
            "kind: Namespace\nmetadata:\n  name: q\n  labels:\n    team: 'a b'\n",
            &["line 12", "metadata.labels.team", "not a label value"],
        ),
    ];
    for (what, text, expect) in cases {
        let r = c.apply(&format!("{good}{text}"));
        assert_eq!(r.code, 1, "{what}: {}", r.stdout);
        for e in *expect {
            assert!(
                r.stderr.contains(e),
                "{what}: {e:?} missing in {}",
                r.stderr
            );
        }
        assert!(
            r.stderr.contains("nothing was applied"),
            "{what}: {}",
            r.stderr
        );
        assert_eq!(r.stdout, "", "{what}");
        assert_eq!(snapshot(c), before, "{what}: the store changed");
    }
    // The good part alone goes in.
    let r = c.apply(good.trim_end_matches("---\n"));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_ne!(snapshot(c), before);
}

fn label_pods_and_namespaces_as_kubectl(c: &Cluster) {
    let lease = Some(c.store.grant(Duration::from_secs(600)).unwrap());
    c.put(
        "endpoints/n1/x/a",
        endpoint("n1", "x", "a", "10.244.1.2", json!({"pod": "a"})),
        lease,
    );
    let stored = |key: &str| -> Option<Value> {
        c.store
            .get(&format!("{PREFIX}{key}"))
            .unwrap()
            .map(|kv| serde_json::from_slice(&kv.value).unwrap())
    };
    // A new label, and one more: podlabels/<ns>/<pod> holds the hand-set ones only.
    assert_eq!(
        c.ok(&["label", "pod", "x/a", "team=web"]),
        "pod/x/a labeled\n"
    );
    assert_eq!(
        c.ok(&["label", "pod", "x/a", "env=prod", "tier=fe"]),
        "pod/x/a labeled\n"
    );
    assert_eq!(
        stored("podlabels/x/a"),
        Some(json!({"labels": {"team": "web", "env": "prod", "tier": "fe"}}))
    );
    assert!(
        c.ok(&["get", "wep", "-n", "x"])
            .contains("env=prod,pod=a,team=web,tier=fe"),
        "{}",
        c.ok(&["get", "wep", "-n", "x"])
    );
    // The same value again: nothing to do.
    assert_eq!(
        c.ok(&["label", "pod", "x/a", "team=web"]),
        "pod/x/a not labeled\n"
    );
    // Another value needs --overwrite, for a hand-set and for a runtime label.
    let before = snapshot(c);
    for arg in ["team=db", "pod=b"] {
        let r = c.twill(&["label", "pod", "x/a", arg]);
        assert!(
            r.code == 1
                && r.stderr.contains("already has a value")
                && r.stderr.contains("--overwrite"),
            "{arg}: {}",
            r.stderr
        );
    }
    // Bad labels, a runtime label removed, a pod that does not exist: refused, unwritten.
    for (args, why) in [
        (
            &["label", "pod", "x/a", "ok=1", "bad key=v"][..],
            "not a label key",
        ),
        (&["label", "pod", "x/a", "team=-db"], "not a label value"),
        (&["label", "pod", "x/a", "team"], "key=value"),
        (&["label", "pod", "x/a", "pod-"], "cannot remove it"),
        (&["label", "pod", "x/zz", "a=b"], "pod x/zz not found"),
        (&["label", "pod", "a", "a=b"], "pod default/a not found"),
        (&["label", "ns", "Bad.NS", "a=b"], "namespace"),
        (
            &["label", "ns", "x", "kubernetes.io/metadata.name=y"],
            "set automatically",
        ),
    ] {
        let r = c.twill(args);
        assert!(
            r.code != 0 && r.stderr.contains(why),
            "{args:?}: {}",
            r.stderr
        );
        assert_eq!(snapshot(c), before, "{args:?} wrote");
    }
    assert_eq!(
        c.ok(&["label", "pod", "x/a", "team=db", "pod=b", "--overwrite"]),
        "pod/x/a labeled\n"
    );
    assert!(c
        .ok(&["get", "wep", "-n", "x"])
        .contains("env=prod,pod=b,team=db,tier=fe"));
    // Removing: the hand-set ones go, the runtime's value comes back; none left, no key.
    let r = c.twill(&[
        "label", "pod", "x/a", "env-", "tier-", "team-", "pod-", "nope-",
    ]);
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (0, "pod/x/a labeled\n"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr
            .contains("warning: pod/x/a: label \"nope\" not found"),
        "{}",
        r.stderr
    );
    assert_eq!(stored("podlabels/x/a"), None);
    assert!(c.ok(&["get", "wep", "-n", "x"]).contains("   pod=a\n"));

    // Namespaces: labelled without being applied first; apply and label meet in one key.
    assert_eq!(
        c.ok(&["label", "ns", "y", "env=prod"]),
        "namespace/y labeled\n"
    );
    assert_eq!(
        stored("namespaces/y"),
        Some(json!({"labels": {"env": "prod"}}))
    );
    let r = c.twill(&["label", "namespace", "y", "env=dev"]);
    assert!(
        r.code == 1 && r.stderr.contains("--overwrite"),
        "{}",
        r.stderr
    );
    assert_eq!(
        c.ok(&["label", "ns", "y", "env=dev", "--overwrite"]),
        "namespace/y labeled\n"
    );
    assert!(c
        .ok(&["get", "ns", "y"])
        .contains("env=dev,kubernetes.io/metadata.name=y"));
    let y = c.ok(&["get", "ns", "y", "-o", "yaml"]);
    let r = c.twill_stdin(&["apply", "-f", "-"], &y);
    assert_eq!(r.stdout, "namespace/y unchanged\n", "{}", r.stderr);
    let r = c.twill(&["label", "ns", "y", "kubernetes.io/metadata.name-"]);
    assert!(
        r.code == 1 && r.stderr.contains("cannot remove it"),
        "{}",
        r.stderr
    );
    assert_eq!(c.ok(&["label", "ns", "y", "env-"]), "namespace/y labeled\n");
    assert_eq!(stored("namespaces/y"), Some(json!({"labels": {}})));
}

/// Each scenario as `<name>::embedded` and `<name>::etcd`.
macro_rules! on_every_store {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn embedded() {
                super::$name(&super::Cluster::embedded(stringify!($name)));
            }
            #[test]
            fn etcd() {
                super::$name(&super::Cluster::etcd(stringify!($name)));
            }
        }
    )*};
}

on_every_store!(
    apply_then_get_in_every_format,
    get_output_applies_again_for_every_kind,
    a_bad_file_is_refused_with_the_line_and_nothing_is_written,
    config_changes_under_held_blocks_are_refused,
    ipam_show_check_and_get_blocks_on_a_clean_store,
    ipam_check_finds_a_planted_leak_and_conflict,
    node_remove_frees_blocks_and_refuses_a_live_node,
    bgp_resources_apply_get_and_delete,
    bad_bgp_files_leave_the_store_untouched,
    node_status_shows_bgp_sessions_and_the_stuck_trap,
    policy_resources_apply_get_and_delete,
    bad_policy_files_leave_the_store_untouched,
    label_pods_and_namespaces_as_kubectl,
);

#[test]
fn an_unreachable_etcd_names_the_endpoint_and_the_fix() {
    // Port 1 on loopback: nothing listens.
    let out = Command::new(env!("CARGO_BIN_EXE_twill"))
        .args([
            "--store",
            "etcd",
            "--etcd-endpoints",
            "http://127.0.0.1:1",
            "get",
            "nodes",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("127.0.0.1:1") && err.contains("--etcd-endpoints"),
        "{err}"
    );
}

/// `twill ARGS` with a clean environment (no TWILL_* of the caller).
fn twill_clean(args: &[&str]) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_twill"));
    for (k, _) in std::env::vars() {
        if k.starts_with("TWILL_") {
            cmd.env_remove(k);
        }
    }
    let out = cmd.args(args).output().expect("run twill");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into(),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
    }
}

#[test]
fn commands_that_read_never_create_a_store_and_say_it_is_missing() {
    let tmp = TempDir::new("nostore");
    let dir = tmp.path.join("store");
    let d = dir.to_str().unwrap();
    let reads: &[&[&str]] = &[
        &["get", "nodes"],
        &["get", "config"],
        &["get", "blocks", "-o", "json"],
        &["node", "status"],
        &["ipam", "show"],
        &["ipam", "check"],
        &["delete", "node", "n1"],
        &["node", "remove", "n1"],
    ];
    for empty_folder in [false, true] {
        if empty_folder {
            std::fs::create_dir(&dir).unwrap();
        }
        for args in reads {
            let mut all = vec!["--store-dir", d];
            all.extend_from_slice(args);
            let r = twill_clean(&all);
            assert_eq!(r.code, 1, "{args:?}: {}{}", r.stdout, r.stderr);
            let reason = if empty_folder {
                "the folder exists but holds no log.jsonl"
            } else {
                "the folder does not exist"
            };
            for part in [
                &format!("no store at {d}: {reason}; nothing was created") as &str,
                "--store-dir or TWILL_STORE_DIR",
                "twill apply -f FILE",
            ] {
                assert!(
                    r.stderr.contains(part),
                    "{args:?}: {part:?} missing in {}",
                    r.stderr
                );
            }
            if empty_folder {
                assert_eq!(
                    std::fs::read_dir(&dir).unwrap().count(),
                    0,
                    "{args:?} wrote in {d}"
                );
            } else {
                assert!(!dir.exists(), "{args:?} created {d}");
            }
        }
    }
    // The same through the environment.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_twill"));
    let out = cmd
        .env("TWILL_STORE_DIR", d)
        .args(["ipam", "show"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("no store at {d}")));
    // apply makes one; then the reads work.
    let file = tmp.path.join("c.yaml");
    std::fs::write(
        &file,
        "kind: NetworkConfig\nspec:\n  clusterCIDR: 10.244.0.0/16\n",
    )
    .unwrap();
    let r = twill_clean(&["--store-dir", d, "apply", "-f", file.to_str().unwrap()]);
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (0, "networkconfig configured\n"),
        "{}",
        r.stderr
    );
    let r = twill_clean(&["--store-dir", d, "ipam", "check"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
}

/// What is in `dir`: `None` when it does not exist, else its entries' names.
fn entries(dir: &std::path::Path) -> Option<Vec<String>> {
    let rd = std::fs::read_dir(dir).ok()?;
    let mut names: Vec<String> = rd
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    Some(names)
}

#[test]
fn a_rejected_file_leaves_no_store_behind_and_a_good_one_makes_it() {
    let tmp = TempDir::new("applynew");
    let dir = tmp.path.join("store");
    let d = dir.to_str().unwrap();
    let file = tmp.path.join("bad.yaml");
    let f = file.to_str().unwrap();
    let rejected: &[(&str, &str, &str)] = &[
        ("not YAML", "kind: [NetworkConfig\n", "bad.yaml"),
        (
            "invalid spec",
            "kind: NetworkConfig\nspec:\n  clusterCIDR: 10.244.0.0/33\n",
            "clusterCIDR",
        ),
        (
            "a good document, then a bad one",
            "kind: NetworkConfig\nspec:\n  clusterCIDR: 10.244.0.0/16\n---\nkind: Pod\nspec: {}\n",
            "line 5",
        ),
        (
            "a block no node holds",
            "kind: Block\nspec:\n  cidr: 10.244.1.0/24\n  node: n1\n",
            "no node holds it",
        ),
        ("no document at all", "---\n", "no resource in the file"),
    ];
    for empty_folder in [false, true] {
        if empty_folder {
            std::fs::create_dir(&dir).unwrap();
        }
        let before = entries(&dir);
        for (what, text, expect) in rejected {
            std::fs::write(&file, text).unwrap();
            let r = twill_clean(&["--store", "embedded", "--store-dir", d, "apply", "-f", f]);
            assert_eq!(r.code, 1, "{what}: {}{}", r.stdout, r.stderr);
            assert!(
                r.stderr.contains(expect) && r.stderr.contains("nothing was applied"),
                "{what}: {}",
                r.stderr
            );
            assert_eq!(entries(&dir), before, "{what}: left something in {d}");
        }
        // A file that is not there, read from a path or from stdin.
        let r = twill_clean(&["--store-dir", d, "apply", "-f", "/nonexistent/twl.yaml"]);
        assert_eq!(r.code, 1, "{}", r.stderr);
        assert!(r.stderr.contains("/nonexistent/twl.yaml"), "{}", r.stderr);
        assert_eq!(
            entries(&dir),
            before,
            "a missing file left something in {d}"
        );
        // A node override with nothing in it needs no write, hence no store.
        std::fs::write(&file, "kind: Node\nmetadata: {name: n1}\nspec: {}\n").unwrap();
        let r = twill_clean(&["--store-dir", d, "apply", "-f", f]);
        assert_eq!(
            (r.code, r.stdout.as_str()),
            (0, "node/n1 unchanged\n"),
            "{}",
            r.stderr
        );
        assert_eq!(
            entries(&dir),
            before,
            "an unchanged node made a store in {d}"
        );
    }
    // A good file makes the store and is in it.
    std::fs::write(
        &file,
        "kind: NetworkConfig\nspec:\n  clusterCIDR: 10.244.0.0/16\n",
    )
    .unwrap();
    let r = twill_clean(&["--store-dir", d, "apply", "-f", f]);
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (0, "networkconfig configured\n"),
        "{}",
        r.stderr
    );
    let r = twill_clean(&["--store-dir", d, "get", "config", "-o", "json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["spec"]["clusterCIDR"], "10.244.0.0/16");
    // On the existing store a rejected file still writes nothing.
    let store = EmbeddedStore::open_existing(&dir).unwrap();
    let (kvs, rev) = store.list(PREFIX).unwrap();
    std::fs::write(
        &file,
        "kind: NetworkConfig\nspec:\n  clusterCIDR: 10.244.0.0/16\n  mtu: 1400\n---\nkind: Pod\n",
    )
    .unwrap();
    let r = twill_clean(&["--store-dir", d, "apply", "-f", f]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    let (kvs2, rev2) = store.list(PREFIX).unwrap();
    assert_eq!((kvs, rev), (kvs2, rev2));
}

#[test]
fn a_mistyped_subcommand_value_or_flag_gets_a_suggestion() {
    let cases: &[(&[&str], &str)] = &[
        (&["gte", "nodes"], "tip: a similar subcommand exists: 'get'"),
        (
            &["ipma", "show"],
            "tip: a similar subcommand exists: 'ipam'",
        ),
        (
            &["node", "statsu"],
            "tip: a similar subcommand exists: 'status'",
        ),
        (
            &["ipam", "chekc"],
            "tip: a similar subcommand exists: 'check'",
        ),
        (
            &["lab", "chek"],
            "tip: a similar subcommand exists: 'check'",
        ),
        (
            &["lab", "restart-agnet", "n1"],
            "tip: a similar subcommand exists: 'restart-agent'",
        ),
        (&["get", "nods"], "tip: a similar value exists: 'nodes'"),
        (
            &["get", "nodes", "--ouptut", "json"],
            "tip: a similar argument exists: '--output'",
        ),
        (
            &["--stor-dir", "/x", "get", "nodes"],
            "tip: a similar argument exists: '--store-dir'",
        ),
        (
            &["lab", "up", "--nodse", "2"],
            "tip: a similar argument exists: '--nodes'",
        ),
    ];
    for (args, tip) in cases {
        let r = twill_clean(args);
        assert_eq!(r.code, 2, "{args:?}: a usage error: {}", r.stderr);
        assert!(
            r.stderr.contains(tip),
            "{args:?}: {tip:?} missing in {}",
            r.stderr
        );
    }
    // Nothing close: no tip, only the usage.
    let r = twill_clean(&["frobnicate"]);
    assert_eq!(r.code, 2);
    assert!(
        !r.stderr.contains("tip:") && r.stderr.contains("Usage: twill"),
        "{}",
        r.stderr
    );
}
